"""``experiment=full_ablation`` is the study the README promises: every registered bridge (the papers' and the
token-matched baselines) x every task of the world x three seeds, align then finetune, one budget for all, and the
prefix bridges at one token count."""

from __future__ import annotations

import pytest

import bridges  # noqa: F401  (registers the built-in bridges)
from bridges.base import BRIDGES, BridgeIO, EncoderInfo, LMInfo, list_bridges
from experiments.harness.config import compose, validate_config
from experiments.world.tasks import TASKS

WORLD_IO = BridgeIO((EncoderInfo("vit", 128, (4, 4), 4),), LMInfo(128, 2, 4, 4, 32, 512, "llama"))
PREFIX_AT_16 = ["mlp", "avgpool", "pixel_shuffle", "c_abstractor", "qformer", "perceiver", "mmfuser"]


def test_the_grid_is_every_bridge_every_task_three_seeds_two_stages() -> None:
    cfg = compose(["experiment=full_ablation"], with_hydra=True)
    params = cfg.hydra.sweeper.params
    assert sorted(params["bridge"].split(",")) == sorted(list_bridges())
    assert params["seed"].split(",") == ["0", "1", "2"]
    assert list(cfg.data.tasks) == list(TASKS)
    assert list(cfg.stages) == ["align", "finetune"]
    assert sorted(cfg.world.lm.tasks) == sorted(TASKS)  # world=full: the LM was pretrained on every format
    assert str(cfg.run_dir) == "runs/full_ablation"


@pytest.mark.parametrize("bridge", PREFIX_AT_16)
def test_every_prefix_bridge_gives_the_lm_16_tokens_per_image(bridge: str) -> None:
    run = validate_config(compose(["experiment=full_ablation", f"bridge={bridge}"]))
    assert BRIDGES.build(run.bridge, WORLD_IO).num_visual_tokens() == 16


def test_one_budget_for_every_bridge() -> None:
    budgets = set()
    for bridge in list_bridges():
        run = validate_config(compose(["experiment=full_ablation", f"bridge={bridge}"]))
        budgets.add((tuple((name, s.max_steps, s.lr, tuple(s.trainable)) for name, s in run.stages.items()),
                     run.train.effective_batch_size, run.data["train_size"]))
    assert len(budgets) == 1, budgets
