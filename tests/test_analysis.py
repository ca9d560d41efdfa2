"""load_runs / summarize / tables / plots on run directories written with the harness's own RunDir writer."""

from pathlib import Path

import pandas as pd
import pytest

from experiments.analysis import load_metrics, load_runs, plot_learning_curves, plot_tradeoffs, summarize
from experiments.analysis import to_latex, to_markdown
from experiments.harness.rundir import RunDir


def _fake_run(root: Path, bridge: str, seed: int, scores: dict[str, float], status: str = "finished") -> Path:
    rd = RunDir(root / f"{bridge}-s{seed}")
    rd.update(name=f"{bridge}-s{seed}", status=status, seed=seed, config={"bridge": {"name": bridge}, "seed": seed})
    for task, em in scores.items():
        rd.write_scores(task, {"task": task, "n": 100, "exact_match": em, "chance": 0.5})
    rd.write_efficiency({"visual_tokens_per_media": 16 if bridge == "mlp" else 8, "trainable_params": 1000,
                         "train_samples_per_s": 50.0 + seed})
    rd.write_metrics([{"stage": "align", "step": s, "train/loss": 2.0 / (s + 1)} for s in range(5)])
    return rd.path


@pytest.fixture()
def runs(tmp_path: Path) -> Path:
    _fake_run(tmp_path, "mlp", 0, {"compare": 0.9, "attribute": 0.8})
    _fake_run(tmp_path, "mlp", 1, {"compare": 0.7, "attribute": 0.6})
    _fake_run(tmp_path, "perceiver", 0, {"compare": 0.6, "attribute": 0.95})
    _fake_run(tmp_path, "qformer", 0, {}, status="failed")
    return tmp_path


def test_load_runs_one_row_per_run_and_task(runs: Path) -> None:
    df = load_runs(runs)
    assert len(df) == 2 + 2 + 2 + 1  # the failed run keeps one row with no task
    assert set(df["bridge"]) == {"mlp", "perceiver", "qformer"}
    failed = df[df["bridge"] == "qformer"].iloc[0]
    assert failed["status"] == "failed" and pd.isna(failed["task"])
    assert (df.loc[df["bridge"] == "mlp", "visual_tokens_per_media"] == 16).all()
    assert "cfg.bridge.name" in df.columns and (df["chance"].dropna() == 0.5).all()


def test_summarize_mean_std_over_seeds(runs: Path) -> None:
    table = summarize(load_runs(runs))
    row = table[(table["bridge"] == "mlp") & (table["task"] == "compare")].iloc[0]
    assert row["exact_match_mean"] == pytest.approx(0.8)
    assert row["exact_match_std"] == pytest.approx(pd.Series([0.9, 0.7]).std())
    assert row["seeds"] == 2
    assert "qformer" not in set(table["bridge"])  # failed runs are not averaged in
    assert row["train_samples_per_s"] == pytest.approx(50.5)


def test_markdown_and_latex(runs: Path) -> None:
    table = summarize(load_runs(runs))
    md = to_markdown(table)
    assert md.splitlines()[0].startswith("| bridge | task | exact_match")
    assert "0.800 ± 0.141" in md
    tex = to_latex(table)
    assert r"\toprule" in tex and r"0.800 $\pm$ 0.141" in tex


def test_plots_written(runs: Path, tmp_path: Path) -> None:
    df = load_runs(runs)
    paths = plot_tradeoffs(df, tmp_path / "plots")
    assert {p.name for p in paths} == {"exact_match_vs_visual_tokens_per_media.png",
                                       "exact_match_vs_train_samples_per_s.png"}
    assert all(p.stat().st_size > 1000 for p in paths)
    curve = plot_learning_curves(df, tmp_path / "plots" / "loss.png")
    assert curve.stat().st_size > 1000
    assert list(load_metrics(df["run_dir"].iloc[0])["step"]) == [0, 1, 2, 3, 4]


def test_errors_are_clear(tmp_path: Path) -> None:
    with pytest.raises(FileNotFoundError, match="No such runs directory"):
        load_runs(tmp_path / "missing")
    with pytest.raises(ValueError, match="empty"):
        summarize(pd.DataFrame())


def _latents_sweep(root: Path) -> Path:
    """num_latents=4,8 x seeds 0,1: the sweep the issue found pooled into one row of 6.0 visual tokens."""
    for latents, scores in ((4, (0.5, 0.7)), (8, (0.8, 0.9))):
        for seed, em in enumerate(scores):
            rd = RunDir(root / f"perceiver-l{latents}-s{seed}")
            rd.update(name="p", status="finished", seed=seed,
                      config={"bridge": {"name": "perceiver", "num_latents": latents}, "seed": seed,
                              "run_dir": str(rd.path), "tags": {"overrides": [f"seed={seed}"]}})
            rd.write_scores("attribute", {"task": "attribute", "n": 10, "exact_match": em})
            rd.write_efficiency({"visual_tokens_per_media": latents})
    return root


def test_summarize_keeps_differing_configs_apart(tmp_path: Path) -> None:
    table = summarize(load_runs(_latents_sweep(tmp_path)))
    assert list(table.columns[:3]) == ["bridge", "task", "bridge.num_latents"]
    assert table["bridge.num_latents"].tolist() == [4, 8] and table["seeds"].tolist() == [2, 2]
    assert table["visual_tokens_per_media"].tolist() == [4, 8]  # never a 6.0 no run had
    assert table["exact_match_mean"].tolist() == pytest.approx([0.6, 0.85])
    assert to_markdown(table).splitlines()[0].startswith("| bridge | task | bridge.num_latents | exact_match |")


def test_summarize_refuses_to_pool_different_configs(tmp_path: Path) -> None:
    df = load_runs(_latents_sweep(tmp_path))
    with pytest.raises(ValueError, match=r"would average runs with different configs .*bridge.num_latents.*pool=True"):
        summarize(df, by=("bridge", "task"))
    with pytest.warns(UserWarning, match="pooling runs that differ at bridge.num_latents"):
        assert summarize(df, by=("bridge", "task"), pool=True)["seeds"].tolist() == [4]
    assert summarize(df, by=("bridge", "task", "cfg.bridge.num_latents"))["seeds"].tolist() == [2, 2]


def test_tables_ignore_every_key_the_config_hash_ignores() -> None:
    from experiments.analysis.tables import IGNORED_CONFIG_PREFIXES
    from experiments.harness.config import NON_SEMANTIC_KEYS

    assert set(NON_SEMANTIC_KEYS) <= set(IGNORED_CONFIG_PREFIXES)
