"""`bridgelab demo` end to end at tiny size: the quick ablation's sweep, then its table, per-run scores and plots."""

from __future__ import annotations

import pandas as pd
import pytest

from experiments.cli import DEMO_SCORE_COLUMNS, main
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
