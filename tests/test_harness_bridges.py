"""One LightningModule for every bridge: a training step per bridge and per stage changes exactly the declared
groups."""

from __future__ import annotations

import pytest
import torch

import harness_toy
from bridges.base import BRIDGES
from bridges.presets import PRESETS
from experiments.harness.build import collators
from experiments.harness.config import StageConfig
from experiments.harness.module import BridgeLitModule, generate_answers
from experiments.harness.stages import apply_stage, snapshot

ALL_BRIDGES = ("mlp", "qformer", "perceiver", "eagle", "mmfuser", "flamingo", "hyper_attention")
ALL_BRIDGES += ("avgpool", "pixel_shuffle", "c_abstractor")
# tiny_vit has no CLS token; the Q-Former's BLIP-2 default attends to it
TINY_ENCODER_FIXES = {"qformer": {"with_cls": False}}
STAGES = {
    "align": StageConfig(trainable=["bridge*", "lm.new_tokens"], lr=1e-2, max_steps=4, warmup_ratio=0.0),
    "finetune": StageConfig(trainable=["bridge*", "lm"], lr=1e-3, max_steps=4, warmup_ratio=0.0),
}


def tiny_model(bridge: str) -> torch.nn.Module:
    from llm_adapters import build_multimodal_lm

    encoder = {"tiny": "tiny_vit", "tiny_b": "tiny_convnet"} if bridge == "eagle" else "tiny_vit"
    spec = {"name": bridge, **PRESETS[(bridge, "tiny")].overrides, **TINY_ENCODER_FIXES.get(bridge, {})}
    return build_multimodal_lm(encoder, spec, "tiny_llama")


def test_every_registered_bridge_is_covered() -> None:
    assert set(BRIDGES.names()) == set(ALL_BRIDGES)


@pytest.mark.parametrize("bridge", ALL_BRIDGES)
def test_training_step_per_bridge_and_stage(bridge: str) -> None:
    torch.manual_seed(0)
    model = tiny_model(bridge)
    train_collate, eval_collate = collators(model)
    samples = harness_toy._samples(4, 0, 32, pair=True)
    batch = train_collate(samples)
    for name, stage in STAGES.items():
        plan = apply_stage(model, name, stage)
        module = BridgeLitModule(model, name, stage, plan, plan.trainable_groups, {})
        optimizer = module.configure_optimizers()["optimizer"]
        module.log = lambda *args, **kwargs: None  # no Trainer attached
        before = snapshot(model)
        loss = module.training_step(batch, 0)
        assert torch.isfinite(loss)
        loss.backward()
        optimizer.step()
        optimizer.zero_grad()
        changed = {n for n, p in model.named_parameters() if not torch.equal(p, before[n])}
        trainable = {n for n, p in model.named_parameters() if p.requires_grad}
        assert changed and changed <= trainable, f"{bridge}/{name}: changed outside the stage's groups"
        assert any(n.startswith("bridge.") for n in changed), f"{bridge}/{name}: the bridge did not move"
        if name == "finetune":
            assert any(n.startswith("lm.") for n in changed), f"{bridge}: the LM did not move in finetune"
    answers = generate_answers(model.eval(), eval_collate(samples[:2]), max_new_tokens=2)
    assert len(answers) == 2 and all(isinstance(a, str) for a in answers)


def test_lm_sequence_tokens_distinguish_prefix_from_inject() -> None:
    from types import SimpleNamespace

    from experiments.harness.efficiency import lm_sequence_tokens

    prefix = SimpleNamespace(kind="prefix", num_visual_tokens=lambda frames: 16 * frames)
    inject = SimpleNamespace(kind="inject", num_visual_tokens=lambda frames: 64 * frames)
    assert lm_sequence_tokens(SimpleNamespace(bridge=prefix)) == 16
    assert lm_sequence_tokens(SimpleNamespace(bridge=inject)) == 1  # only its <image> token enters the sequence
