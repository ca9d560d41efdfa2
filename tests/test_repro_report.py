"""The reporting side of the paper ablations: ``python -m experiments.analysis.repro collect|report``, the verdict
rule, the distractor curve and ``notebooks/04_reproductions.ipynb``.

Fast tests use hand-written sweep trees with the schema of a real finished run (runs/repro/llava15, 2026-12-01):
``run.json`` (status, config, tags.overrides, host, versions, stages[].perf), ``efficiency.json``,
``eval/<task>/scores.json``, ``metrics.jsonl`` and the sweep's ``multirun.yaml``. The slow ones train one tiny run.
"""

from __future__ import annotations

import json
import math
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pandas as pd
import pytest

from experiments.analysis.claims import CLAIMS, Claim, Variant
from experiments.analysis.figure_verdicts import curve_verdict, gate_verdict
from experiments.analysis.repro import main as repro
from experiments.analysis.repro_report import budget_line, build_report, judge_claim
from experiments.analysis.verdict import Arm, judge

REPO = Path(__file__).resolve().parents[1]
TASKS = ("attribute", "fine_detail")


def write_run(sweep: Path, overrides: dict[str, str], seed: int, scores: dict[str, float] | None,
              status: str = "finished", gates: dict[str, list[float]] | None = None) -> Path:
    """One member of a sweep, as the harness writes it (the fields the analysis reads)."""
    member = ",".join(f"{k}={v}" for k, v in sorted({**overrides, "seed": str(seed)}.items()))
    run = sweep / member
    run.mkdir(parents=True)
    bridge = {"name": overrides.get("bridge", "mlp"), "projector": overrides.get("bridge.projector", "mlp2x_gelu"),
              "select_layer": int(overrides.get("bridge.select_layer", -2))}
    record = {
        "name": sweep.name, "status": status, "error": None, "seed": seed,
        "config": {"name": sweep.name, "seed": seed, "bridge": bridge, "trainer": {"accelerator": "cpu"},
                   "tags": {"overrides": [*(f"{k}={v}" for k, v in overrides.items()), f"seed={seed}",
                                          f"experiment=repro/{sweep.name}"]}},
        "tags": {"overrides": [*(f"{k}={v}" for k, v in overrides.items()), f"seed={seed}"]},
        "git": {"sha": "0123456789abcdef", "dirty": False}, "versions": {"torch": "2.14.1"}, "host": "testhost",
        "started": f"2026-12-01T10:0{seed}:00+00:00",
        "stages": [{"name": "align", "max_steps": 200, "perf": {"train_time_s": 100.0, "samples_per_s": 128.0}}],
    }
    if status == "finished":
        record["finished"] = f"2026-12-01T11:0{seed}:00+00:00"
    (run / "run.json").write_text(json.dumps(record))
    (run / "efficiency.json").write_text(json.dumps({"visual_tokens_per_media": 16, "lm_tokens_per_media": 16,
                                                     "trainable_params": 33024, "flops_per_sample": 4.0e7,
                                                     "train_samples_per_s": 128.0}))
    for task, value in (scores or {}).items():
        (run / "eval" / task).mkdir(parents=True)
        (run / "eval" / task / "scores.json").write_text(json.dumps(
            {"task": task, "n": 300, "metric": "exact_match", "score": value, "exact_match": value,
             "chance": 0.1, "text_ceiling": 1.0}))
    lines = [{"stage": "align", "step": s, "global_step": s, "train/loss": 1.0 / (s + 1),
              **{k: v[i] for k, v in (gates or {}).items()}} for i, s in enumerate((19, 39, 59))]
    (run / "metrics.jsonl").write_text("\n".join(json.dumps(line) for line in lines) + "\n")
    return run


def llava_sweep(root: Path, seeds_mlp: int = 3) -> tuple[Path, dict[tuple[str, str], list[float]]]:
    """A llava15-shaped sweep: linear (3 seeds) and mlp2x_gelu (``seeds_mlp`` seeds) at layer -2, one run running."""
    sweep = root / "llava15"
    sweep.mkdir(parents=True)
    (sweep / "multirun.yaml").write_text(
        "hydra:\n  sweeper:\n    params:\n      bridge: mlp\n      seed: 0,1,2\n"
        "      bridge.projector: linear,mlp2x_gelu\n      bridge.select_layer: '-2'\n")
    values = {("linear", "fine_detail"): [0.20, 0.22, 0.21], ("linear", "attribute"): [0.90, 0.91, 0.92],
              ("mlp2x_gelu", "fine_detail"): [0.40, 0.42, 0.41][:seeds_mlp],
              ("mlp2x_gelu", "attribute"): [0.91, 0.90, 0.92][:seeds_mlp]}
    for projector in ("linear", "mlp2x_gelu"):
        for seed in range(len(values[(projector, "attribute")])):
            write_run(sweep, {"bridge.projector": projector, "bridge.select_layer": "-2", "bridge": "mlp"}, seed,
                      {t: values[(projector, t)][seed] for t in TASKS})
    write_run(sweep, {"bridge.projector": "mlp2x_gelu", "bridge.select_layer": "-1", "bridge": "mlp"}, 0, None,
              status="running")
    return sweep, values


def test_collect_writes_scores_and_summary(tmp_path: Path) -> None:
    sweep, values = llava_sweep(tmp_path / "runs")
    assert repro(["collect", str(sweep), "--out", str(tmp_path / "results")]) == 0
    scores = pd.read_csv(tmp_path / "results" / "llava15" / "scores.csv")
    assert list(scores.columns[:3]) == ["bridge", "bridge.projector", "bridge.select_layer"]  # the swept keys first
    for column in ("seed", "exact_match", "n", "chance", "text_ceiling", "trainable_params", "flops_per_sample",
                   "train_samples_per_s", "train_step_s", "host", "started", "finished"):
        assert column in scores, column
    assert len(scores) == 6 * 2 + 1  # 6 finished runs x 2 tasks, and the running one (no task) kept
    running = scores[scores["status"] == "running"]
    assert len(running) == 1 and running["bridge.select_layer"].item() == -1 and pd.isna(running["task"].item())
    assert (scores.loc[scores["status"] == "finished", "train_step_s"] == 0.5).all()  # 100 s / 200 steps
    assert set(scores["host"]) == {"testhost"}
    assert set(scores["stage_steps"]) == {"align 200"} and scores["lm_layers"].isna().all()  # not a world LM

    summary = pd.read_csv(tmp_path / "results" / "llava15" / "summary.csv")
    assert len(summary) == 4  # 2 finished variants x 2 tasks; the running member is not averaged in
    for (projector, task), v in values.items():
        row = summary[(summary["bridge.projector"] == projector) & (summary["task"] == task)].iloc[0]
        assert row["seeds"] == 3
        assert math.isclose(row["exact_match_mean"], np.mean(v)) and math.isclose(row["exact_match_std"],
                                                                                   np.std(v, ddof=1))
    meta = json.loads((tmp_path / "results" / "llava15" / "collect.json").read_text())
    assert meta["runs"] == 7 and meta["finished"] == 6 and meta["status"] == {"finished": 6, "running": 1}
    assert not (tmp_path / "results" / "llava15" / "gates.csv").exists()


def test_collect_copies_gate_series(tmp_path: Path) -> None:
    sweep = tmp_path / "flamingo_gate"
    for seed in range(2):
        write_run(sweep, {"bridge": "flamingo", "bridge.gate": "scalar"}, seed, {"interleaved": 0.5},
                  gates={"gate/xattn/layer0": [0.0, 0.1, 0.2], "gate/xattn/layer1": [0.0, 0.2, 0.4 + seed]})
    assert repro(["collect", str(sweep), "--out", str(tmp_path / "results")]) == 0
    gates = pd.read_csv(tmp_path / "results" / "flamingo_gate" / "gates.csv")
    assert len(gates) == 2 * 2 * 3 and set(gates["layer"]) == {0, 1}
    assert {"bridge", "seed", "run", "key", "layer", "global_step", "value"} <= set(gates.columns)
    verdict, status, detail = gate_verdict(tmp_path / "results" / "flamingo_gate" / "gates.csv")
    assert (verdict, status) == ("holds", "partial")  # every gate grows; two seeds only
    assert "gate/xattn/layer1: 0.000 -> 0.900" in detail


def test_gate_verdict_reads_the_every_layer_runs_of_a_placement_sweep(tmp_path: Path) -> None:
    """repro/flamingo_layers_deep sweeps bridge.xattn_layers: the gate figure is the paper's design (a block before
    every layer), not a pool of placements whose layer keys overlap."""
    sweep = tmp_path / "flamingo_layers_deep"
    for seed in range(3):
        write_run(sweep, {"bridge": "flamingo", "bridge.xattn_layers": "[0,1]"}, seed, {"distractor": 0.5},
                  gates={"gate/attn/layer0": [0.0, 0.1, 0.2], "gate/attn/layer1": [0.0, 0.2, 0.3]})
        write_run(sweep, {"bridge": "flamingo", "bridge.xattn_layers": "[1]"}, seed, {"distractor": 0.4},
                  gates={"gate/attn/layer1": [0.5, 0.2, 0.0]})  # shrinks: would make a pooled verdict mixed
    assert repro(["collect", str(sweep), "--out", str(tmp_path / "results")]) == 0
    verdict, status, detail = gate_verdict(tmp_path / "results" / "flamingo_layers_deep" / "gates.csv")
    assert (verdict, status) == ("holds", "done")
    assert "gate/attn/layer1: 0.000 -> 0.300" in detail


@pytest.mark.parametrize(
    "expected, baseline, direction, verdict",
    [
        (Arm(0.40, 0.01, 3, 300), Arm(0.20, 0.01, 3, 300), "better", "holds"),
        (Arm(0.20, 0.01, 3, 300), Arm(0.40, 0.01, 3, 300), "better", "contradicted"),
        (Arm(0.42, 0.05, 3, 300), Arm(0.40, 0.05, 3, 300), "better", "within noise"),
        (Arm(0.405, 0.0, 3, 300), Arm(0.40, 0.0, 3, 300), "better", "within noise"),  # binomial floor: se 0.028
        (Arm(0.38, 0.02, 3, 300), Arm(0.40, 0.02, 3, 300), "no_worse", "holds"),
        (Arm(0.20, 0.02, 3, 300), Arm(0.40, 0.02, 3, 300), "no_worse", "contradicted"),
    ],
)
def test_verdict_rule(expected: Arm, baseline: Arm, direction: str, verdict: str) -> None:
    v = judge(expected, baseline, direction)
    assert v.verdict == verdict and v.status == "done"
    assert math.isclose(v.diff, expected.mean - baseline.mean)


def test_verdict_partial_and_bad_direction() -> None:
    v = judge(Arm(0.9, math.nan, 1, 300), Arm(0.2, 0.01, 3, 300))
    assert (v.verdict, v.status, v.welch_p) == ("holds", "partial", None)
    with pytest.raises(ValueError, match="direction must be 'better' or 'no_worse'"):
        judge(Arm(0.9, 0.0, 3, 300), Arm(0.2, 0.0, 3, 300), "higher")


def test_report_verdicts_partial_and_not_run(tmp_path: Path) -> None:
    sweep, _ = llava_sweep(tmp_path / "runs", seeds_mlp=2)
    results = tmp_path / "results"
    assert repro(["collect", str(sweep), "--out", str(results)]) == 0
    out = tmp_path / "REPRODUCTIONS.md"
    assert repro(["report", "--results", str(results), "--out", str(out)]) == 0
    text = out.read_text()
    assert "## Verdict rule" in text and "2·noise" in text
    assert "`bridgelab sweep experiment=repro/llava15`" in text
    assert "`python -m experiments.analysis.repro collect runs/repro/llava15`" in text
    assert "host testhost (cpu, torch 2.14.1); runs 2026-12-01T10:00:00+00:00 – 2026-12-01T11:02:00+00:00" in text
    assert "Budget (run.json): align 200 steps." in text
    assert "| llava15.mlp_connector | LLaVA-1.5 (Liu et al., 2023) |" in text
    connector = [line for line in text.splitlines() if line.startswith("| llava15.mlp_connector")]
    assert [line.split(" | ")[3:6] for line in connector] == [["attribute", "within noise", "partial |"],
                                                              ["fine_detail", "holds", "partial |"]]
    assert "- fine_detail: **holds** (provisional: fewer than 3 seeds). mlp2x_gelu 0.410 ± 0.014 (n=2) vs linear " \
           "0.210 ± 0.010 (n=3): d = +0.200" in text
    assert "| llava15.penultimate | LLaVA-1.5 (Liu et al., 2023) |" in text and "no finished run of layer -1" in text
    others = [c for c in CLAIMS if c.experiment != "llava15"]
    for claim in others:
        assert f"| {claim.key} |" in text
    not_run = [line for line in text.splitlines() if line.startswith("| ") and line.endswith("| not run | not run |")]
    assert len(not_run) == sum(len(c.tasks) if c.kind == "compare" else 1 for c in others) + 2  # + penultimate x2


def test_budget_line_counts_runs_per_budget() -> None:
    """A sweep whose variants train different steps (repro/eagle_prealign) says how many runs had each."""
    scores = pd.DataFrame({"run": ["a", "a", "b", "c"], "stage_steps": ["align 200", "align 200", "align 200",
                                                                       "eagle_prealign 100 + align 200"],
                           "lm_layers": [4.0, 4.0, 4.0, 4.0]})
    assert budget_line(scores) == ("align 200 steps (2 runs), eagle_prealign 100 + align 200 steps (1 run); "
                                   "world LM 4 layers")
    assert budget_line(scores.drop(columns=["stage_steps", "lm_layers"])) == "–"  # collected before the columns
    hf_lm = scores.assign(lm_layers=float("nan"))  # an LM that is not the world's: no depth recorded
    assert budget_line(hf_lm) == "align 200 steps (2 runs), eagle_prealign 100 + align 200 steps (1 run)"


def test_report_names_a_variant_filter_that_matches_no_column(tmp_path: Path) -> None:
    summary = pd.DataFrame({"bridge": ["mlp"], "task": ["fine_detail"], "exact_match_mean": [0.5],
                            "exact_match_std": [0.1], "seeds": [3], "n": [300]}).astype(str)
    claim = Claim("x.y", "P", "Table 1", "c", "x", ("fine_detail",), Variant("a", {"bridge.layers": "[0]"}),
                  Variant("b", {"bridge.layers": "[1]"}))
    [outcome] = judge_claim(claim, summary)
    assert outcome.verdict == "not run" and "no column bridge.layers in summary.csv (swept: bridge)" in outcome.detail


def test_curve_verdict_on_a_constructed_curve(tmp_path: Path) -> None:
    rows = []
    for bridge, accs, stop in (("hyper_attention", [0.9, 0.85, 0.8], None), ("mlp", [0.9, 0.5, None], 32)):
        for seed in range(3):
            for n, acc in zip((1, 4, 16), accs):
                if acc is not None:
                    rows.append({"bridge": bridge, "seed": seed, "n_images": n, "status": "evaluated", "reason": "",
                                 "exact_match": acc + 0.01 * seed, "n": 100})
            if stop:
                rows.append({"bridge": bridge, "seed": seed, "n_images": stop, "status": "stopped",
                             "reason": "context: ... > 512", "exact_match": None, "n": None})
    path = tmp_path / "mplug_distractor" / "curve.csv"
    path.parent.mkdir()
    pd.DataFrame(rows).to_csv(path, index=False)
    verdict, status, detail = curve_verdict(path)
    assert (verdict, status) == ("holds", "done")
    assert "at N=4 " in detail and "mlp: up to N=4 (stopped at N=32: context: ... > 512)" in detail
    assert curve_verdict(tmp_path / "missing" / "curve.csv")[0] == "not run"


@pytest.mark.slow  # a fresh interpreter importing pandas, scipy and matplotlib: ~15 s on the loaded 2-core machine
def test_report_entry_point_runs_as_a_module(tmp_path: Path) -> None:
    """``python -m experiments.analysis.repro report`` as REPRODUCTIONS.md prints it (no results: all not run)."""
    done = subprocess.run([sys.executable, "-m", "experiments.analysis.repro", "report", "--results",
                           str(tmp_path / "none"), "--out", str(tmp_path / "R.md")], capture_output=True, text=True,
                          cwd=REPO)
    assert done.returncode == 0, done.stderr
    assert build_report(tmp_path / "none").count("| not run | not run |") == sum(
        len(c.tasks) if c.kind == "compare" else 1 for c in CLAIMS)


def test_committed_report_is_current(monkeypatch: pytest.MonkeyPatch) -> None:
    """REPRODUCTIONS.md at the root is what `report` writes from the committed results/repro (its date line aside)."""
    monkeypatch.chdir(REPO)
    strip = lambda text: [line for line in text.splitlines() if not line.startswith("Generated ")]  # noqa: E731
    assert strip((REPO / "REPRODUCTIONS.md").read_text()) == strip(build_report("results/repro")), (
        "REPRODUCTIONS.md is stale: run `python -m experiments.analysis.repro report` after collecting results"
    )


@pytest.fixture(scope="module")
def tiny_sweep(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """One real run through ``bridgelab sweep`` on the tiny world (the default cache, as tests/test_gate_log.py),
    trained 2 steps on the distractor task (a one-member sweep writes its run at run_dir itself)."""
    from experiments.cli import main as bridgelab

    root = tmp_path_factory.mktemp("tiny")
    sweep = root / "mplug_distractor"
    assert bridgelab(["sweep", "experiment=smoke", "world=tiny", "bridge=mlp", "seed=0", "stages.align.max_steps=2",
                      "efficiency.flops=false", "data.tasks=[distractor]", "data.train_size=8",
                      "data.eval_size=2", f"run_dir={sweep}", "trainer.progress_bar=false"]) == 0
    return sweep


@pytest.mark.slow
def test_collect_and_curve_on_a_real_tiny_run(tiny_sweep: Path, tmp_path: Path) -> None:
    from experiments.analysis.distractor_curve import main as distractor_curve

    assert repro(["collect", str(tiny_sweep), "--out", str(tmp_path / "results")]) == 0
    scores = pd.read_csv(tmp_path / "results" / "mplug_distractor" / "scores.csv")
    record = json.loads((tiny_sweep / "run.json").read_text())
    assert scores[["bridge", "seed", "status", "task"]].values.tolist() == [["mlp", 0, "finished", "distractor"]]
    assert scores["host"].item() == record["host"] and scores["trainable_params"].item() > 0
    assert scores["n"].item() == 2 and 0 <= scores["exact_match"].item() <= 1
    assert scores["stage_steps"].item() == "align 2"  # the command line's stages.align.max_steps=2
    assert scores["lm_layers"].item() == 2  # world=tiny's LM at LMPretrainConfig's default depth

    out = tmp_path / "results" / "mplug_distractor" / "curve.csv"
    assert distractor_curve([str(tiny_sweep), "--n", "1,32,64", "--eval-size", "2", "--out", str(out),
                             "--work-dir", str(tmp_path / "evals")]) == 0
    curve = pd.read_csv(out)
    assert curve["n_images"].tolist() == [1, 32]  # stopped at the first N that does not fit; 64 never tried
    first, stop = curve.iloc[0], curve.iloc[1]
    assert first["status"] == "evaluated" and first["n"] == 2 and 0 <= first["exact_match"] <= 1
    assert first["lm_tokens_per_image"] == 16 and first["peak_tensor_mib"] > 0
    assert stop["status"] == "stopped" and stop["reason"].startswith("context: ")
    assert stop["seq_len"] > stop["max_positions"] == 512 and "max_position_embeddings 512" in stop["reason"]
    assert (tmp_path / "evals" / "mplug_distractor").is_dir() and out.with_suffix(".png").stat().st_size > 1000

    # a rerun reuses each evaluated N's row (marked here to tell reuse from recomputation)
    [row_file] = (tmp_path / "evals" / "mplug_distractor").rglob("n1/curve_row.json")
    record = json.loads(row_file.read_text())
    record["row"]["exact_match"] = 0.123
    row_file.write_text(json.dumps(record))
    assert distractor_curve([str(tiny_sweep), "--n", "1,32,64", "--eval-size", "2", "--out", str(out),
                             "--work-dir", str(tmp_path / "evals")]) == 0
    again = pd.read_csv(out)
    assert again["exact_match"].iloc[0] == 0.123 and again["status"].tolist() == ["evaluated", "stopped"]


@pytest.mark.slow  # a kernel start and the notebook's imports: ~55 s on the loaded 2-core machine
def test_reproductions_notebook_renders_results_and_not_run(tmp_path: Path) -> None:
    """``python -m experiments.analysis.repro notebook``: 04_reproductions.ipynb executed on results with two
    sweeps, a curve and gates (their tables and figures, saved in the notebook); the rest "not run yet"."""
    import nbformat
    from test_notebooks import stdout

    sweep, _ = llava_sweep(tmp_path / "runs")
    results = tmp_path / "results"
    assert repro(["collect", str(sweep), "--out", str(results)]) == 0
    gate_sweep = tmp_path / "runs" / "flamingo_gate"
    write_run(gate_sweep, {"bridge": "flamingo", "bridge.gate": "scalar"}, 0, {"distractor": 0.5},
              gates={"gate/attn/layer0": [0.0, 0.1, 0.2], "gate/ff/layer1": [0.0, 0.2, 0.3]})
    assert repro(["collect", str(gate_sweep), "--out", str(results)]) == 0
    (results / "mplug_distractor").mkdir()
    pd.DataFrame([{"bridge": b, "seed": 0, "n_images": n, "status": "evaluated", "reason": "", "exact_match": 0.5,
                   "n": 10, "chance": 0.17} for b in ("mlp", "hyper_attention") for n in (1, 4)]
                 + [{"bridge": "mlp", "seed": 0, "n_images": 32, "status": "stopped", "reason": "context: 591 > 512"}]
                 ).to_csv(results / "mplug_distractor" / "curve.csv", index=False)

    executed = tmp_path / "04.ipynb"
    assert repro(["notebook", "--results", str(results), "--out", str(executed), "--figures",
                  str(tmp_path / "figures")]) == 0
    nb = nbformat.read(executed, as_version=4)
    assert f'RESULTS = "{os.path.relpath(results, REPO / "notebooks")}"' in nb.cells[1].source
    text = stdout(nb)
    assert any(out.output_type == "display_data" and "image/png" in out.data for cell in nb.cells
               if cell.cell_type == "code" for out in cell.outputs)  # the figures are in the saved notebook
    assert "verdict rule: d = mean(expected)" in text
    assert "llava15: not run yet" not in text and "blip2_queries: not run yet" in text
    assert "mlp: stopped at N=32: context: 591 > 512" in text
    assert "mplug_distractor/curve.csv missing" not in text and "gates of flamingo_gate: not run yet" not in text
    assert "mplug_distractor_long/curve.csv missing" in text  # the longer sweep's curve: not among these results
    for figure in ("llava15.png", "flamingo_gate.png", "mplug_distractor_curve.png", "flamingo_gates.png"):
        assert (tmp_path / "figures" / figure).stat().st_size > 1000, figure
    assert not (tmp_path / "figures" / "blip2_queries.png").exists()


def test_bad_inputs_name_the_problem(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    from experiments.analysis.distractor_curve import main as distractor_curve

    assert repro(["collect", str(tmp_path / "nowhere")]) == 1
    assert f"No such runs directory: {tmp_path / 'nowhere'}" in capsys.readouterr().err
    (tmp_path / "empty").mkdir()
    assert repro(["collect", str(tmp_path / "empty")]) == 1
    assert "holds no run (no run.json below it)" in capsys.readouterr().err
    assert distractor_curve([str(tmp_path), "--n", "1,x"]) == 2
    assert "--n must be comma-separated integers, got '1,x'" in capsys.readouterr().err
    assert distractor_curve([str(tmp_path / "empty"), "--out", str(tmp_path / "c.csv")]) == 1
    assert "no finished run under" in capsys.readouterr().err


def test_override_values_compare_as_hydra_and_yaml_write_them(tmp_path: Path) -> None:
    """Hydra records ``bridge.instruction_aware=False``, the claims say ``false``; numbers sort by value."""
    from experiments.analysis.repro import normalise

    assert normalise("False") == "false" and normalise('["bridge*", "lm"]') == "[bridge*,lm]"
    assert normalise(-2.0) == "-2"
    sweep = tmp_path / "instructblip"
    for flag in ("False", "True"):
        for seed in range(3):
            write_run(sweep, {"bridge": "qformer", "bridge.instruction_aware": flag, "bridge.num_query_tokens": "4"},
                      seed, {"fine_detail": 0.5 if flag == "False" else 0.9})
    assert repro(["collect", str(sweep), "--out", str(tmp_path / "results")]) == 0
    summary = pd.read_csv(tmp_path / "results" / "instructblip" / "summary.csv", dtype=str)
    assert summary["bridge.instruction_aware"].tolist() == ["false", "true"]
    claim = next(c for c in CLAIMS if c.key == "instructblip.instruction_aware")
    outcome = next(o for o in judge_claim(claim, summary) if o.task == "fine_detail")
    assert outcome.verdict == "holds" and outcome.status == "done"

    queries = tmp_path / "blip2_queries"
    for q in ("16", "8", "64"):
        write_run(queries, {"bridge": "qformer", "bridge.num_query_tokens": q}, 0, {"fine_detail": 0.3})
    assert repro(["collect", str(queries), "--out", str(tmp_path / "results")]) == 0
    order = pd.read_csv(tmp_path / "results" / "blip2_queries" / "summary.csv")["bridge.num_query_tokens"].tolist()
    assert order == [8, 16, 64]


def test_committed_notebook_is_the_generated_one_executed() -> None:
    """notebooks/04_reproductions.ipynb holds the cells of nb_reproductions.py (rebuilt, then executed in place)."""
    import nbformat

    sys.path.insert(0, str(REPO / "notebooks"))
    try:
        import build_notebooks
        import nb_reproductions
    finally:
        sys.path.remove(str(REPO / "notebooks"))
    built = nb_reproductions.cells(build_notebooks.md, build_notebooks.code, build_notebooks.params)
    committed = nbformat.read(REPO / "notebooks" / "04_reproductions.ipynb", as_version=4)
    assert [c.source for c in committed.cells] == [c.source for c in built], (
        "notebooks/04_reproductions.ipynb is stale: run `.venv/bin/python notebooks/build_notebooks.py` and then "
        "`python -m experiments.analysis.repro notebook`"
    )


def test_a_swept_null_variant_is_read_back_and_judged(tmp_path):
    """summary.csv holds `null` for bridge.max_num_frames=null; pandas would read it as NaN and lose the arm."""
    from experiments.analysis.claims import CLAIMS
    from experiments.analysis.repro_report import judge_claim, read_experiment

    folder = tmp_path / "flamingo_video"
    folder.mkdir()
    (folder / "summary.csv").write_text(
        "bridge,bridge.max_num_frames,task,exact_match_mean,exact_match_std,seeds,n\n"
        "flamingo,4,video_motion,1.0,0.0,3,300\n"
        "flamingo,null,video_motion,0.45,0.03,3,300\n"
    )
    summary, _ = read_experiment(tmp_path, "flamingo_video")
    claim = next(c for c in CLAIMS if c.key == "flamingo_video.frame_embeddings")
    (outcome,) = judge_claim(claim, summary)
    assert outcome.verdict == "holds", outcome.detail


def test_a_launcher_given_to_part_of_a_sweep_is_not_a_swept_key(tmp_path: Path) -> None:
    """Half of a sweep launched with ``launcher=joblib`` on the command line, half without: the runs differ in that
    override, but the launcher does not change a result, so it must not split the tables (as it did for
    repro/mplug_distractor_long before ``NOT_SWEPT`` named it)."""
    import shutil

    from experiments.analysis.repro import score_table

    committed = REPO / "results" / "study" / "full_ablation_long"
    for bridge in ("mlp", "eagle"):
        shutil.copytree(committed / f"{bridge}_seed0", tmp_path / f"bridge={bridge},seed=0")
    record_path = tmp_path / "bridge=mlp,seed=0" / "run.json"
    record = json.loads(record_path.read_text())
    record["tags"]["overrides"].append("launcher=joblib")
    record_path.write_text(json.dumps(record))
    scores, keys = score_table(tmp_path)
    assert keys == ["bridge"] and "launcher" not in scores
    assert sorted(set(scores["bridge"])) == ["eagle", "mlp"]
