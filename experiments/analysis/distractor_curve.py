"""The distractor-resistance curve (mPLUG-Owl3): accuracy against the number of images N, for every finished run.

    python -m experiments.analysis.distractor_curve runs/repro/mplug_distractor \
        --n 1,2,4,8,16,32,64,128,256,400 [--out results/repro/mplug_distractor/curve.csv] [--eval-size 100]

For each run and each N (ascending) the run is scored with ``bridgelab eval`` (in process, through
:func:`experiments.cli.main`) on the distractor task with ``data.eval_options.distractor_n=N``. Before each N two
checks decide whether it fits; a bridge's curve stops at the first N that does not, and ``curve.csv`` says why:

* context: the LM sequence a sample needs (its text with the N ``<image>`` placeholders, plus N·(T-1) for a prefix
  bridge putting T tokens per image into the sequence, plus the answer tokens) must not exceed the LM's
  ``max_position_embeddings`` (512 for the world LM; RoPE would run past it silently, so the limit is ours);
* memory: the peak tensor memory of one sample's forward pass at N (``torch.profiler`` allocations minus frees on
  CPU, ``max_memory_allocated`` on CUDA, as ``benchmarks/measure.py`` measures) must stay within ``--memory-gib``
  (default 8 GiB). The evaluation batch is then cut to fit the budget (``eval.batch_size`` at most
  budget / per-sample peak).

Each N's evaluation is kept under ``--work-dir`` (default ``runs/curves/<sweep name>/<run>/n<N>``) with its curve
row, so a call interrupted part-way continues where it stopped.

The text-only ceiling (true captions in the image slots, read by the world LM) is computed only up to
``--text-ceiling-up-to`` images (default 8): beyond that the captions alone exceed the LM's context.
The plot (``--plot``, default beside the CSV) is accuracy against N on a log axis, one line per bridge (mean ± std
over seeds), the last N each bridge reached marked.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import matplotlib

matplotlib.use(os.environ.get("MPLBACKEND", "Agg"))
import matplotlib.pyplot as plt  # noqa: E402
import pandas as pd  # noqa: E402
import torch  # noqa: E402

from experiments.analysis.figure_verdicts import DEFAULT_NS  # noqa: E402
from experiments.analysis.load import find_run_dirs  # noqa: E402
from experiments.analysis.tensor_memory import peak_tensor_bytes  # noqa: E402

ROW_FILE = "curve_row.json"  # beside each N's evaluation: a rerun after an interruption reuses finished Ns
COLUMNS = ("run", "bridge", "seed", "n_images", "status", "reason", "exact_match", "n", "chance", "random_image",
           "text_ceiling", "lm_tokens_per_image", "seq_len", "max_positions", "peak_tensor_mib", "memory_budget_gib",
           "eval_batch_size")


@dataclass(frozen=True)
class CurveConfig:
    """What the curve evaluates: the image counts, the pool size per N, the memory budget, where evals go."""

    ns: tuple[int, ...] = DEFAULT_NS
    eval_size: int = 100
    memory_gib: float = 8.0
    text_ceiling_up_to: int = 8
    task: str = "distractor"
    work_dir: Path = Path("runs/curves")
    device: str = "cpu"


def eval_overrides(cfg: CurveConfig, n: int) -> list[str]:
    """The ``bridgelab eval`` overrides scoring ``cfg.task`` at ``n`` images (train pools kept to one sample)."""
    return [f"data.tasks=[{cfg.task}]", f"eval.tasks=[{cfg.task}]", f"data.eval_options.distractor_n={n}",
            f"data.eval_size={cfg.eval_size}", "data.train_size=1",
            f"data.text_ceiling={str(n <= cfg.text_ceiling_up_to).lower()}"]


def _probe(loaded: Any, overrides: list[str]) -> Any:
    """The evaluation pool at these overrides (built the way ``bridgelab eval`` builds it, memoised for it)."""
    from experiments.evaluation.command import eval_config
    from experiments.harness.build import build_data, build_world
    from experiments.harness.config import config_dict, validate_config

    config = validate_config(eval_config(config_dict(loaded.config), overrides))
    return build_data(config, build_world(config)).eval[config.eval.tasks[0]]


def _finished_row(out: Path, overrides: list[str], cfg: CurveConfig) -> dict[str, Any] | None:
    """The row an earlier call wrote for this N (same overrides and budget), or ``None``."""
    path = out / ROW_FILE
    if not path.exists():
        return None
    record = json.loads(path.read_text(encoding="utf-8"))
    same = record.get("overrides") == overrides and record.get("memory_gib") == cfg.memory_gib
    return record["row"] if same else None


def run_curve(run_dir: Path, cfg: CurveConfig, work: Path) -> list[dict[str, Any]]:
    """The curve rows of one run: one ``evaluated`` row per N that fits, then one ``stopped`` row (or none).

    Each N's evaluation (``bridgelab eval --out``) is kept in ``work/n<N>``.
    """
    from experiments.cli import main as bridgelab
    from experiments.harness.build import clear_memo
    from experiments.harness.efficiency import lm_sequence_tokens
    from experiments.harness.loading import load_run

    loaded = load_run(run_dir, device=cfg.device)
    model, device = loaded.model.eval(), torch.device(cfg.device)
    tokens = int(lm_sequence_tokens(model) or 1)
    max_positions = int(getattr(model.lm.model.config, "max_position_embeddings", 0) or 0) or None
    new_tokens = int(loaded.config.eval.max_new_tokens)
    budget = cfg.memory_gib * 2**30
    base = {"run": run_dir.name, "bridge": loaded.record["config"]["bridge"]["name"], "seed": loaded.record["seed"],
            "lm_tokens_per_image": tokens, "max_positions": max_positions, "memory_budget_gib": cfg.memory_gib}
    rows: list[dict[str, Any]] = []
    try:
        for n in sorted(cfg.ns):
            overrides = eval_overrides(cfg, n)
            out = work / f"n{n}"
            done = _finished_row(out, overrides, cfg)
            if done is not None:  # evaluated by an earlier, interrupted call with the same settings
                rows.append(done)
                continue
            pool = _probe(loaded, overrides)
            probe = [pool[i] for i in range(min(8, len(pool)))]
            text_len = int(loaded.collate(probe).input_ids.shape[1])
            seq_len = text_len + n * (tokens - 1) + new_tokens
            row = {**base, "n_images": n, "seq_len": seq_len}
            if max_positions is not None and seq_len > max_positions:
                reason = (f"context: {text_len} text tokens (with the {n} <image> placeholders) + {n} x {tokens - 1} "
                          f"more per image + {new_tokens} answer tokens = {seq_len} > the LM's "
                          f"max_position_embeddings {max_positions}")
                rows.append({**row, "status": "stopped", "reason": reason})
                break
            batch = loaded.collate(probe[:1]).to(device)
            with torch.no_grad():
                peak = peak_tensor_bytes(lambda: model(batch), device) or 0
            row["peak_tensor_mib"] = peak / 2**20
            if peak > budget:
                reason = (f"memory: one sample's forward needs {peak / 2**30:.2f} GiB > the {cfg.memory_gib:g} GiB "
                          "budget")
                rows.append({**row, "status": "stopped", "reason": reason})
                break
            batch_size = int(min(loaded.config.eval.batch_size, max(1, budget // max(peak, 1))))
            try:
                code = bridgelab(["eval", str(run_dir), *overrides, f"eval.batch_size={batch_size}", "--out",
                                  str(out), "--device", cfg.device])
            except (RuntimeError, MemoryError) as err:  # e.g. out of memory beyond the measured sample: say so
                code, row["reason"] = 1, f"error: {type(err).__name__}: {err}"[:300]
            if code != 0:
                rows.append({**row, "status": "error", "reason": row.get("reason") or f"bridgelab eval exited {code}"})
                print(f"distractor_curve: {run_dir} at N={n}: {rows[-1]['reason']}", file=sys.stderr)
                break
            scores = json.loads((out / "eval" / cfg.task / "scores.json").read_text(encoding="utf-8"))
            rows.append({**row, "status": "evaluated", "reason": "", "eval_batch_size": batch_size,
                         **{k: scores.get(k) for k in ("exact_match", "n", "chance", "random_image", "text_ceiling")}})
            record = {"overrides": overrides, "memory_gib": cfg.memory_gib, "row": rows[-1]}
            (out / ROW_FILE).write_text(json.dumps(record, indent=1), encoding="utf-8")
    finally:
        clear_memo()  # the pools of every N stay memoised otherwise (hundreds of MB at N=400)
    return rows


def curve(sweep_dir: str | Path, cfg: CurveConfig) -> pd.DataFrame:
    """The curve of every finished run under ``sweep_dir`` (unfinished runs are skipped, with a note on stderr)."""
    sweep_dir = Path(sweep_dir)
    rows: list[dict[str, Any]] = []
    for run_dir in find_run_dirs(sweep_dir):
        status = json.loads((run_dir / "run.json").read_text(encoding="utf-8")).get("status")
        if status != "finished":
            print(f"distractor_curve: skipping {run_dir} (status {status})", file=sys.stderr)
            continue
        rows += run_curve(run_dir, cfg, cfg.work_dir / sweep_dir.name / run_dir.relative_to(sweep_dir))
    if not rows:
        raise ValueError(f"no finished run under {sweep_dir}: nothing to evaluate")
    return pd.DataFrame(rows, columns=list(COLUMNS))


def plot_curve(table: pd.DataFrame, path: str | Path) -> Path:
    """Accuracy against N (log x), one line per bridge (mean ± std over seeds); 'x' where a curve stopped."""
    done = table[table["status"] == "evaluated"].astype({"exact_match": float})
    points = done.groupby(["bridge", "n_images"])["exact_match"].agg(["mean", "std"]).reset_index()
    fig, ax = plt.subplots(figsize=(6.4, 4.0))
    for i, (bridge, rows) in enumerate(points.groupby("bridge")):
        ax.errorbar(rows["n_images"], rows["mean"], yerr=rows["std"].fillna(0), marker="o", capsize=3,
                    color=f"C{i % 10}", label=str(bridge))
        stopped = table[(table["bridge"] == bridge) & (table["status"] == "stopped")]
        if len(stopped):
            ax.plot(rows["n_images"].iloc[-1], rows["mean"].iloc[-1], "x", color="black", markersize=9)
    if "chance" in done and done["chance"].notna().any():
        ax.axhline(float(done["chance"].astype(float).mean()), color="grey", linestyle=":", label="chance")
    ax.set_xscale("log")
    ax.set_xlabel("images per sample N (log)")
    ax.set_ylabel("exact match")
    ax.set_ylim(0, 1.05)
    ax.grid(alpha=0.3)
    ax.set_title("distractor resistance (x: the curve's last N; the next did not fit)", fontsize=9)
    ax.legend(fontsize=8, frameon=False)
    fig.tight_layout()
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=120)
    plt.close(fig)
    return path


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m experiments.analysis.distractor_curve",
                                     description="Accuracy against the number of images, per finished run")
    parser.add_argument("sweep_dir")
    parser.add_argument("--n", default=",".join(map(str, DEFAULT_NS)), help="image counts, comma-separated")
    parser.add_argument("--out", default=None, help="the curve CSV (default results/repro/<sweep name>/curve.csv)")
    parser.add_argument("--plot", default=None, help="the figure (default: curve.png beside --out)")
    parser.add_argument("--eval-size", type=int, default=CurveConfig.eval_size, help="samples per N (default 100)")
    parser.add_argument("--memory-gib", type=float, default=CurveConfig.memory_gib, help="tensor memory budget")
    parser.add_argument("--text-ceiling-up-to", type=int, default=CurveConfig.text_ceiling_up_to)
    parser.add_argument("--work-dir", default=str(CurveConfig.work_dir), help="where each N's evaluation is kept")
    parser.add_argument("--device", default="cpu")
    args = parser.parse_args(list(sys.argv[1:] if argv is None else argv))
    try:
        ns = tuple(int(x) for x in args.n.split(",") if x.strip())
    except ValueError:
        print(f"distractor_curve: --n must be comma-separated integers, got '{args.n}'", file=sys.stderr)
        return 2
    if not ns or min(ns) < 1:
        print(f"distractor_curve: --n needs image counts >= 1, got '{args.n}'", file=sys.stderr)
        return 2
    cfg = CurveConfig(ns, args.eval_size, args.memory_gib, args.text_ceiling_up_to, work_dir=Path(args.work_dir),
                      device=args.device)
    try:
        table = curve(args.sweep_dir, cfg)
    except (FileNotFoundError, ValueError) as err:
        print(f"distractor_curve: {err}", file=sys.stderr)
        return 1
    out = Path(args.out or Path("results/repro") / Path(args.sweep_dir).name / "curve.csv")
    out.parent.mkdir(parents=True, exist_ok=True)
    table.to_csv(out, index=False)
    figure = plot_curve(table, args.plot or out.with_suffix(".png"))
    print(f"wrote {out} ({len(table)} rows) and {figure}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
