"""`bridgelab demo` end to end at tiny size: the quick ablation's sweep, then its table, per-run scores and plots."""

from __future__ import annotations

import pandas as pd
import pytest

from experiments.analysis.sweep_report import SCORE_COLUMNS as DEMO_SCORE_COLUMNS
from experiments.cli import main
from experiments.harness.config import compose


def test_demo_config_is_the_same_budget_for_every_bridge() -> None:
    cfg = compose(["experiment=quick_ablation"], with_hydra=True)
    assert list(cfg.data.tasks) == ["attribute", "fine_detail", "video_motion"]
    assert cfg.data.image_size == 64 and cfg.train.cache_features
    for fragment in cfg.by_bridge.values():  # per-bridge fragments size the bridge; none changes the budget
        assert set(fragment) <= {"bridge", "encoder"}
    lm = compose(["experiment=quick_ablation"]).world.lm
    assert set(cfg.data.tasks) <= set(lm.tasks) and set(cfg.data.tasks) <= set(lm.gate_tasks)  # the LM knows them


@pytest.mark.slow
def test_demo_writes_table_scores_and_plots(tmp_path, monkeypatch) -> None:
    monkeypatch.setenv("BRIDGELAB_CACHE", str(tmp_path / "cache"))  # the tiny world in its own cache
    runs = tmp_path / "demo"
    code = main(
        [
            "demo",
            "world=tiny",
            "bridge=mlp,eagle",
            "seed=0,1",
            f"run_dir={runs}",
            "data.train_size=16",
            "data.eval_size=6",
            "stages.align.max_steps=2",
            "train.effective_batch_size=4",
            "eval.batch_size=6",
            "trainer.progress_bar=false",
        ]
    )
    assert code == 0
    scores = pd.read_csv(runs / "scores.csv")
    assert list(scores.columns) == list(DEMO_SCORE_COLUMNS)
    assert len(scores) == 2 * 2 * 3  # one row per run and task
    assert set(scores["task"]) == {"attribute", "fine_detail", "video_motion"} and set(scores["seed"]) == {0, 1}
    assert scores["exact_match"].between(0, 1).all() and (scores["status"] == "finished").all()
    table = (runs / "table.md").read_text()
    assert "exact_match" in table and "text_ceiling" in table and "visual_tokens_per_media" in table
    assert "| task | best | worst | spread | largest std | separates |" in table  # the separation table
    assert list((runs / "plots").glob("*.png"))


@pytest.mark.slow
def test_report_writes_a_sweeps_table_scores_and_token_curves(tmp_path, monkeypatch) -> None:
    """``bridgelab report`` on a sweep over the token count (token_sweep's axis): the study's files, as printed."""
    monkeypatch.setenv("BRIDGELAB_CACHE", str(tmp_path / "cache"))
    runs, out = tmp_path / "sweep", tmp_path / "report"
    tiny = ["world=tiny", "data.train_size=16", "data.eval_size=6", "data.tasks=[attribute]",
            "stages.align.max_steps=2", "train.effective_batch_size=4", "eval.batch_size=6",
            "trainer.progress_bar=false", f"run_dir={runs}"]
    assert main(["sweep", "experiment=token_sweep", "bridge=avgpool", "tags.visual_tokens=4,1", "seed=0,1", *tiny]) == 0
    assert main(["report", str(runs), "--out", str(out)]) == 0
    scores = pd.read_csv(out / "scores.csv")
    assert sorted(set(scores["visual_tokens_per_media"])) == [1, 4]  # the swept count reached the bridge
    assert len(scores) == 2 * 2 and "trainable_params" in scores and "flops_per_sample" in scores
    table = (out / "table.md").read_text()
    assert "bridge.num_tokens" in table and "avgpool bridge.num_tokens=1" in table  # variants kept apart
    names = {p.name for p in (out / "plots").glob("*.png")}
    assert {"exact_match_vs_token_count.png", "exact_match_vs_flops_per_sample.png", "learning_curves.png"} <= names
    assert main(["report", str(tmp_path / "nothing")]) == 1  # no runs: a clear error, not a traceback
