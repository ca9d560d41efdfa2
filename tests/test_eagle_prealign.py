"""Eagle's pre-alignment stage through the harness: a stage's ``bridge_options`` select the expert that trains
alone with its own projector; the next stage uses the joint projector; unknown options fail before training."""

from __future__ import annotations

from pathlib import Path

import harness_toy
import pytest
import torch

from encoders.registry import ConfigError
from experiments.harness.config import compose, validate_config
from experiments.harness.rundir import RunDir
from experiments.harness.runner import run

EAGLE = {
    "encoder": {"tiny": "tiny_vit", "tiny_b": "tiny_convnet"},
    "bridge": {"name": "eagle", "variant": "pre_alignment"},
}
STAGES = {
    "pre_align": {"trainable": ["bridge.pre_alignment", "encoder"], "bridge_options": {"pre_align_expert": "tiny_b"},
                  "lr": 1e-2, "group_lr": {"encoder": 1e-3}, "max_steps": 3},
    "align": {"trainable": ["bridge*"], "lr": 1e-2, "max_steps": 3},
}


def _state(path: Path) -> dict[str, torch.Tensor]:
    return torch.load(path, map_location="cpu", weights_only=False)["state_dict"]


def _initial_state(cfg: dict) -> dict[str, torch.Tensor]:
    """The run's model before training, built as the runner builds it (seeded, then the data, then the model)."""
    import lightning as L

    from experiments.harness.build import build_data, build_model, build_world, import_plugins

    config = validate_config(cfg)
    import_plugins(config.plugins)
    L.seed_everything(config.seed, workers=True, verbose=False)
    world = build_world(config)
    build_data(config, world)
    L.seed_everything(config.seed, workers=True, verbose=False)
    return {f"model.{k}": v for k, v in build_model(config, world).state_dict().items()}


def _changed(a: dict[str, torch.Tensor], b: dict[str, torch.Tensor], prefix: str) -> bool:
    keys = [k for k in a if k.startswith(prefix) and k in b]
    assert keys, f"no weights under {prefix}"
    return any(not torch.equal(a[k], b[k]) for k in keys)


def test_the_pre_align_stage_trains_one_expert_and_its_projector_then_the_joint_projector_trains(
    tmp_path: Path,
) -> None:
    cfg = harness_toy.toy_config(**EAGLE, **{"stages": STAGES, "eval.enabled": False, "efficiency.flops": False,
                                             "train.checkpoint_every_n_steps": 0})
    result = run(cfg, run_dir=tmp_path / "r")
    rd = RunDir(result.run_dir)
    start = _initial_state(cfg)
    pre, joint = _state(rd.final_checkpoint("pre_align")), _state(rd.final_checkpoint("align"))
    # pre_align: the tiny_b expert and its projector moved; the ViT, the other projector and the joint one did not
    assert _changed(start, pre, "model.encoders.encoders.tiny_b.")
    assert not _changed(start, pre, "model.encoders.encoders.tiny.")
    assert _changed(start, pre, "model.bridge.expert_projectors.1.")
    assert not _changed(start, pre, "model.bridge.expert_projectors.0.")
    # (a stage's checkpoint holds the groups trained so far: the joint projector is not in pre_align's)
    assert not any(k.startswith("model.bridge.projector.") for k in pre)
    # align: the joint projector trains (it gets gradients only when no expert is selected: the stage without
    # bridge_options reset the bridge); the pre-aligned expert and the per-expert projectors are kept
    assert _changed(start, joint, "model.bridge.projector.")
    assert not _changed(pre, joint, "model.encoders.encoders.tiny_b.")
    assert not _changed(pre, joint, "model.bridge.expert_projectors.")


def test_stage_options_a_bridge_does_not_take_fail_before_training(tmp_path: Path) -> None:
    stages = {"align": {"trainable": ["bridge*"], "max_steps": 2, "bridge_options": {"pre_align_expert": "tiny"}}}
    with pytest.raises(ConfigError, match=r"stages.align.bridge_options has \['pre_align_expert'\].*'mlp'.*none"):
        run(harness_toy.toy_config(stages=stages), run_dir=tmp_path / "r")
    assert not (tmp_path / "r" / "metrics.jsonl").exists()


@pytest.mark.parametrize("stages, expected", [("align", ["align"]), ("eagle_prealign", ["pre_align", "align"])])
def test_the_repro_sweep_has_both_arms_at_both_joint_lengths(stages: str, expected: list[str]) -> None:
    cfg = compose(["experiment=repro/eagle_prealign"], with_hydra=True)
    assert cfg.hydra.sweeper.params["bridge"] == "eagle"  # not the quick ablation's seven bridges it inherits
    assert cfg.hydra.sweeper.params["stages"] == "align,eagle_prealign"
    assert cfg.hydra.sweeper.params["stages.align.max_steps"] == "200,300"
    run_cfg = validate_config(compose(["experiment=repro/eagle_prealign", f"stages={stages}"]))
    assert list(run_cfg.stages) == expected and run_cfg.bridge["variant"] == "pre_alignment"
    if stages == "eagle_prealign":
        pre = run_cfg.stages["pre_align"]
        assert pre.bridge_options == {"pre_align_expert": "expert"} and "expert" in run_cfg.encoder
        assert pre.trainable == ["bridge.pre_alignment", "encoder"] and pre.group_lr == {"encoder": 5e-5}


def test_unfrozen_experts_train_at_a_backbones_rate_and_the_bridge_at_its_own() -> None:
    from experiments.harness.stages import resolve_lr

    cfg = compose(["experiment=repro/eagle_unfrozen_slow"], with_hydra=True)
    assert cfg.hydra.sweeper.params["bridge"] == "eagle"
    unfrozen = '["bridge*","lm.new_tokens","encoder"]'
    stage = validate_config(compose(["experiment=repro/eagle_unfrozen_slow", f"stages.align.trainable={unfrozen}"]))
    align = stage.stages["align"]
    assert align.trainable == ["bridge*", "lm.new_tokens", "encoder"]
    assert resolve_lr("encoder", align) == 5e-5 and resolve_lr("bridge.projector", align) == 2e-3
