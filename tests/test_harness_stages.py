"""Stage policies: pattern matching over named groups, asserted freezing, per-group learning rates, LoRA, schedule."""

from __future__ import annotations

import math

import pytest
import torch
from torch import nn

from encoders.registry import ConfigError
from experiments.harness.config import StageConfig
from experiments.harness.module import BridgeLitModule, warmup_cosine
from experiments.harness.stages import FreezeError, apply_stage, assert_stage, match_groups, optimizer_groups, snapshot


class TwoGroupModel(nn.Module):
    """A stand-in with the MultimodalLM group contract: encoder, bridge, bridge.gates, lm (and an empty lm.lora)."""

    def __init__(self) -> None:
        super().__init__()
        self.encoder = nn.Linear(4, 4)
        self.bridge = nn.Linear(4, 4)
        self.gate = nn.Parameter(torch.zeros(1))
        self.lm = nn.Linear(4, 4)

    def param_groups(self) -> dict[str, list[nn.Parameter]]:
        return {
            "encoder": list(self.encoder.parameters()),
            "bridge": list(self.bridge.parameters()),
            "bridge.gates": [self.gate],
            "lm": list(self.lm.parameters()),
            "lm.lora": [],
        }

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.lm(self.bridge(self.encoder(x)) * (1 + self.gate))


def test_glob_patterns_select_groups() -> None:
    groups = ["encoder", "bridge", "bridge.gates", "lm", "lm.lora"]
    assert match_groups(["bridge*"], groups, "x") == ["bridge", "bridge.gates"]
    assert match_groups(["bridge", "lm"], groups, "x") == ["bridge", "lm"]
    assert match_groups(["lm.new_tokens"], groups, "x") == []  # a standard group this model lacks
    with pytest.raises(ConfigError, match=r"'stages.align.trainable': pattern 'brige' matches no parameter group.*"
                                          r"Groups of this model: encoder, bridge"):
        match_groups(["brige"], groups, "stages.align.trainable")


def test_apply_stage_freezes_everything_else_and_table_reports_it() -> None:
    model = TwoGroupModel()
    plan = apply_stage(model, "align", StageConfig(trainable=["bridge*"], lr=1e-3, group_lr={"bridge.gates": 1e-2}))
    assert plan.trainable_groups == ("bridge", "bridge.gates")
    assert all(p.requires_grad for p in [*model.bridge.parameters(), model.gate])
    assert not any(p.requires_grad for p in [*model.encoder.parameters(), *model.lm.parameters()])
    assert plan.group_lr == {"bridge": 1e-3, "bridge.gates": 1e-2}
    assert plan.trainable_params == 4 * 4 + 4 + 1
    table = plan.table()
    assert "21 of 61 parameters train" in table and "TRAIN" in table and "frozen" in table

    plan2 = apply_stage(model, "finetune", StageConfig(trainable=["bridge*", "lm"]))
    assert all(p.requires_grad for p in model.lm.parameters())
    assert plan2.trainable_params == 21 + 20


def test_assert_stage_catches_a_parameter_that_changed_state() -> None:
    model = TwoGroupModel()
    plan = apply_stage(model, "align", StageConfig(trainable=["bridge"]))
    model.lm.weight.requires_grad_(True)
    frozen = r"group 'lm' should be frozen but 1 tensors are trainable \(e.g. lm.weight\)"
    with pytest.raises(FreezeError, match=frozen):
        assert_stage(model, plan)
    model.lm.weight.requires_grad_(False)
    model.bridge.bias.requires_grad_(False)
    with pytest.raises(FreezeError, match="group 'bridge' should be trainable"):
        assert_stage(model, plan)


def test_only_empty_groups_or_uncovered_parameters_are_errors() -> None:
    model = TwoGroupModel()
    with pytest.raises(ConfigError, match="selects only empty groups.*lm.lora"):
        apply_stage(model, "lora", StageConfig(trainable=["lm.lora"]))
    model.extra = nn.Linear(2, 2)  # not in any group
    with pytest.raises(FreezeError, match="belong to no group"):
        apply_stage(model, "align", StageConfig(trainable=["bridge"]))


def test_one_optimiser_step_changes_only_the_declared_groups() -> None:
    model = TwoGroupModel()
    stage = StageConfig(trainable=["bridge*"], lr=1e-2, max_steps=10, warmup_ratio=0.0, weight_decay=0.1)
    plan = apply_stage(model, "align", stage)
    module = BridgeLitModule(model, "align", stage, plan, ["bridge", "bridge.gates"], {})
    optimizer = module.configure_optimizers()["optimizer"]
    decays = {g["name"]: g["weight_decay"] for g in optimizer.param_groups}
    assert decays == {"bridge": 0.1, "bridge.no_decay": 0.0, "bridge.gates.no_decay": 0.0}
    before = snapshot(model)
    model(torch.randn(3, 4)).pow(2).sum().backward()
    optimizer.step()
    changed = {n for n, p in model.named_parameters() if not torch.equal(p, before[n])}
    assert changed == {"bridge.weight", "bridge.bias", "gate"}


def test_trainable_only_checkpoint_round_trip() -> None:
    model = TwoGroupModel()
    stage = StageConfig(trainable=["bridge"])
    plan = apply_stage(model, "align", stage)
    module = BridgeLitModule(model, "align", stage, plan, ["bridge"], {"seed": 3})
    checkpoint = {"state_dict": module.state_dict()}
    module.on_save_checkpoint(checkpoint)
    assert set(checkpoint["state_dict"]) == {"model.bridge.weight", "model.bridge.bias"}
    assert checkpoint["bridgelab"]["config"] == {"seed": 3}
    fresh = TwoGroupModel()
    fresh_module = BridgeLitModule(fresh, "align", stage, apply_stage(fresh, "align", stage), ["bridge"], {})
    fresh_module.on_load_checkpoint(checkpoint)
    fresh_module.load_state_dict(checkpoint["state_dict"], strict=False)
    assert torch.equal(fresh.bridge.weight, model.bridge.weight)
    del checkpoint["state_dict"]["model.bridge.bias"]
    with pytest.raises(RuntimeError, match="lacks 1 trainable tensors"):
        fresh_module.on_load_checkpoint(checkpoint)


def test_warmup_then_cosine() -> None:
    values = [warmup_cosine(s, total=10, warmup=2, min_ratio=0.1) for s in range(11)]
    assert values[0] == pytest.approx(0.5) and values[1] == pytest.approx(1.0)
    assert values[2] == pytest.approx(1.0)
    assert values[10] == pytest.approx(0.1)
    assert all(a >= b for a, b in zip(values[1:], values[2:]))
    assert values[6] == pytest.approx(0.1 + 0.9 * 0.5 * (1 + math.cos(math.pi * 0.5)))


def test_lora_group_trains_alone_on_a_real_lm() -> None:
    from llm_adapters import build_multimodal_lm

    model = build_multimodal_lm("tiny_vit", {"name": "mlp"}, {"name": "tiny_llama", "lora_rank": 2})
    plan = apply_stage(model, "finetune", StageConfig(trainable=["bridge*", "lm.lora"]))
    lora = model.param_groups()["lm.lora"]
    assert lora and all(p.requires_grad for p in lora)
    assert "lm.lora" in plan.trainable_groups
    assert not any(p.requires_grad for p in model.param_groups()["lm"])
    assert "lm.lora" in {g["name"] for g in optimizer_groups(model, plan, 0.0)}
    without = build_multimodal_lm("tiny_vit", {"name": "mlp"}, "tiny_llama")
    with pytest.raises(ConfigError, match="only empty groups.*llm.lora_rank"):
        apply_stage(without, "finetune", StageConfig(trainable=["lm.lora"]))


def test_fsdp_units_are_the_transformer_blocks() -> None:
    from llm_adapters import build_multimodal_lm

    from experiments.harness.trainer import fsdp_wrap_classes

    model = build_multimodal_lm("tiny_vit", {"name": "mlp"}, "tiny_llama")
    names = {cls.__name__ for cls in fsdp_wrap_classes(model)}
    assert names == {"LlamaDecoderLayer", "Block"}
