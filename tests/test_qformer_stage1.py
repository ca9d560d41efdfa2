"""BLIP-2 stage 1 as a stage of a run: ``stages=qformer_stage1`` (ITC/ITM/ITG on world captions, then align)."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch

from encoders.registry import ConfigError
from experiments.cli import main
from experiments.harness import runner
from experiments.harness.config import StageConfig, load_config
from experiments.harness.module import read_checkpoint
from experiments.harness.objectives import QFormerPretrainModule, caption_batch, lit_module_class
from experiments.harness.stages import apply_stage

STAGE1 = ["experiment=smoke", "bridge=qformer", "stages=qformer_stage1", "bridge.text_layers=true",
          "bridge.vocab_size=80"]
FAST = ["world=tiny", "stages.pretrain.max_steps=12", "stages.align.max_steps=3", "train.log_every_n_steps=2",
        "train.checkpoint_every_n_steps=0", "eval.limit=2", "efficiency.flops=false", "trainer.progress_bar=false"]


@pytest.mark.parametrize("overrides, message", [
    (["stages=qformer_stage1", "bridge=mlp"], "trains a Q-Former, but the bridge is 'mlp'"),
    (["stages=qformer_stage1", "bridge=qformer"], "bridge.text_layers is false. Fix: set bridge.text_layers=true"),
    (["bridge=qformer", "+stages.align.objective=itc"],
     r"'stages.align.objective' = 'itc' is out of range: allowed lm \| qformer_pretrain"),
])
def test_config_errors_name_the_problem_and_the_fix(overrides: list[str], message: str) -> None:
    with pytest.raises(ConfigError, match=message):
        load_config(["experiment=smoke", *overrides])


def test_objective_picks_the_module_and_captions_are_right_padded_with_cls_first() -> None:
    run = load_config([*STAGE1, "world=tiny"])
    assert [s.objective for s in run.stages.values()] == ["qformer_pretrain", "lm"]
    assert lit_module_class(run.stages["pretrain"]) is QFormerPretrainModule
    assert lit_module_class(run.stages["align"]).__name__ == "BridgeLitModule"
    from experiments.world.vocab import build_tokenizer

    tokenizer = build_tokenizer()
    ids, mask = caption_batch(["a red square", "two blue circles at the top"], tokenizer)
    assert (ids[:, 0] == tokenizer.bos_token_id).all() and mask[0].tolist() == [1, 1, 1, 1, 0, 0, 0]
    assert ids[0, 4:].eq(tokenizer.pad_token_id).all() and mask[1].all()


def test_a_vocabulary_smaller_than_the_tokenizer_is_refused_with_the_size_to_use() -> None:
    from test_bridge_qformer import TINY
    from test_llm_fakes import fake_encoders

    from llm_adapters.multimodal_lm import build_multimodal_lm

    spec = {"name": "qformer", **TINY, "with_cls": False, "text_layers": True, "vocab_size": 40}
    model = build_multimodal_lm(fake_encoders(), spec, "tiny_llama")
    size = len(model.lm.tokenizer)
    stage = StageConfig(trainable=["bridge*"], objective="qformer_pretrain")
    plan = apply_stage(model, "pretrain", stage)
    with pytest.raises(ConfigError, match=rf"'bridge.vocab_size' = 40 is too small.*{size} ids.*"
                                          rf"Fix: bridge.vocab_size={size + 1} or more"):
        QFormerPretrainModule(model, "pretrain", stage, plan, ["bridge"], {})


def _qformer(model: torch.nn.Module) -> dict[str, torch.Tensor]:
    return {f"model.bridge.qformer.{n}": p.detach().clone() for n, p in model.bridge.qformer.named_parameters()}


@pytest.mark.slow
def test_stage1_loss_falls_and_stage2_starts_from_its_weights(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    starts: dict[str, dict[str, torch.Tensor]] = {}
    fit = runner._fit_stage

    def spy(run, rd, module, *args, **kwargs):
        starts[module.stage_name] = _qformer(module.model)
        return fit(run, rd, module, *args, **kwargs)

    monkeypatch.setattr(runner, "_fit_stage", spy)
    run_dir = tmp_path / "stage1"
    assert main(["train", *STAGE1, *FAST, f"run_dir={run_dir}"]) == 0

    records = [json.loads(line) for line in (run_dir / "metrics.jsonl").read_text().splitlines()]
    stage1 = [r for r in records if r["stage"] == "pretrain" and "train/loss" in r]
    assert len(stage1) == 6 and all({"train/itc", "train/itm", "train/itg"} <= set(r) for r in stage1)
    assert stage1[-1]["train/itg"] < stage1[0]["train/itg"] - 0.3
    assert sum(r["train/loss"] for r in stage1[-2:]) < sum(r["train/loss"] for r in stage1[:2])
    assert any(r["stage"] == "align" and "train/loss" in r for r in records)

    handover = read_checkpoint(run_dir / "checkpoints" / "pretrain" / "final.ckpt")["state_dict"]
    assert any(k.startswith("objective.itm_head") for k in handover)  # the heads resume with their stage
    for name, tensor in starts["align"].items():
        assert torch.equal(tensor, handover[name]), name  # stage 2 starts exactly where stage 1 ended
    assert any(not torch.equal(starts["pretrain"][n], t) for n, t in starts["align"].items())  # stage 1 trained
    final = read_checkpoint(run_dir / "checkpoints" / "align" / "final.ckpt")["state_dict"]
    assert not any(k.startswith("objective.") for k in final)  # BLIP-2 drops the stage-1 heads for stage 2
    record = json.loads((run_dir / "run.json").read_text())
    assert record["status"] == "finished" and [s["name"] for s in record["stages"]] == ["pretrain", "align"]


def test_runs_made_before_objective_existed_keep_their_config_hash() -> None:
    from experiments.harness.config import config_dict, config_hash

    run = config_dict(load_config(["experiment=smoke", "world=tiny"]))
    before = {**run, "stages": {n: {k: v for k, v in s.items() if not k.startswith("objective")}
                                for n, s in run["stages"].items()}}
    assert config_hash(run) == config_hash(before)
    changed = {**run, "stages": {"align": {**run["stages"]["align"], "objective": "qformer_pretrain"}}}
    assert config_hash(changed) != config_hash(run)
