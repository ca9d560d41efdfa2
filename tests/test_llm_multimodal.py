"""MultimodalLM with a linear prefix bridge: forward/loss, cached generation vs recompute, video, groups, summary."""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F
from test_llm_fakes import fake_encoders, make_batch

from llm_adapters.batch import MultimodalBatch
from llm_adapters.multimodal_lm import MultimodalLM, build_multimodal_lm

FAMILIES = ["tiny_llama", "tiny_qwen2", "tiny_mistral", "tiny_gpt2", "tiny_opt", "tiny_mpt"]
TEXTS = ["the cat <image> sat on the mat", "a red square", "<image> one <image> two <image> three"]


def build(preset: str = "tiny_llama", bridge: str | dict = "_test_linear", **encoders: int) -> MultimodalLM:
    model = build_multimodal_lm(fake_encoders(**encoders), bridge, preset)
    return model.eval()


def greedy_recompute(model: MultimodalLM, batch: MultimodalBatch, steps: int) -> torch.Tensor:
    """Greedy decoding by full forward passes (no KV cache), appending each argmax token."""
    ids, mask = batch.input_ids, batch.attention_mask
    out = []
    for _ in range(steps):
        step = MultimodalBatch(ids, mask, batch.pixel_values, batch.media_to_sample)
        with torch.no_grad():
            nxt = model(step).logits[:, -1].argmax(-1)
        out.append(nxt)
        ids = torch.cat([ids, nxt[:, None]], 1)
        mask = torch.cat([mask, torch.ones_like(mask[:, :1])], 1)
    return torch.stack(out, 1)


def assert_same_until_eos(cached: torch.Tensor, recomputed: torch.Tensor, eos: int) -> None:
    assert cached.shape[1] >= 1
    for row_c, row_r in zip(cached, recomputed, strict=True):
        n = len(row_c)
        hits = (row_c == eos).nonzero()
        if hits.numel():
            n = int(hits[0]) + 1
        assert torch.equal(row_c[:n], row_r[:n]), (row_c, row_r)


@pytest.mark.parametrize("preset", FAMILIES)
def test_prefix_forward_loss_and_grads(preset: str) -> None:
    model = build(preset)
    batch = make_batch(model.lm, TEXTS)
    out = model(batch)
    t = model.bridge.num_visual_tokens()
    assert out.logits.shape == (3, batch.input_ids.shape[1] + 3 * (t - 1), len(model.lm.tokenizer))
    assert out.labels.shape == out.logits.shape[:2]
    ref = F.cross_entropy(out.logits[:, :-1].flatten(0, 1), out.labels[:, 1:].flatten(), ignore_index=-100)
    torch.testing.assert_close(out.loss, ref)
    out.loss.backward()
    assert all(p.grad is not None and p.grad.abs().sum() > 0 for p in model.bridge.parameters())
    assert all(p.grad is None for p in model.encoders.parameters())
    old_vocab = [p for p in model.lm.parameters() if not any(p is q for q in model.lm.new_token_parameters())]
    assert all(p.grad is None for p in old_vocab)


@pytest.mark.parametrize("preset", FAMILIES)
def test_prefix_cached_generation_equals_recompute(preset: str) -> None:
    model = build(preset)
    batch = make_batch(model.lm, TEXTS, labels=False, padding_side="left")
    cached = model.generate(batch, max_new_tokens=5, do_sample=False)
    assert cached.shape[0] == 3 and cached.shape[1] <= 5
    assert_same_until_eos(cached, greedy_recompute(model, batch, cached.shape[1]), model.lm.tokenizer.eos_token_id)


def test_generate_moves_right_padding_left() -> None:
    model = build()
    right = model.generate(make_batch(model.lm, TEXTS, labels=False), max_new_tokens=4, do_sample=False)
    left = model.generate(
        make_batch(model.lm, TEXTS, labels=False, padding_side="left"), max_new_tokens=4, do_sample=False
    )
    assert torch.equal(right, left)


def test_video_frames_give_f_times_t_tokens() -> None:
    model = build()
    batch = make_batch(model.lm, TEXTS, frames=2)
    out = model(batch)
    per_media = model.bridge.num_visual_tokens(2)
    assert per_media == 8
    assert out.logits.shape[1] == batch.input_ids.shape[1] + 3 * (per_media - 1)
    assert int((out.labels == -100).sum()) >= 4 * per_media


def test_batch_without_media_equals_bare_lm() -> None:
    model = build()
    batch = make_batch(model.lm, ["a red square", "two blue circles and a star"])
    batch.pixel_values = torch.zeros(0, 1, 3, 1, 1)  # a collator cannot know the image size without images
    out = model(batch)
    bare = model.lm(input_ids=batch.input_ids, attention_mask=batch.attention_mask)
    mask = batch.attention_mask.bool()
    assert torch.equal(out.logits[mask], bare.logits[mask])


def test_instruction_reaches_bridge_per_media() -> None:
    model = build()
    batch = make_batch(model.lm, TEXTS)
    batch.instruction_ids = torch.tensor([[5, 6], [7, 8], [9, 10]])
    batch.instruction_mask = torch.ones(3, 2, dtype=torch.long)
    model(batch)
    ids, mask = model.bridge.last_instruction
    assert ids.tolist() == [[5, 6], [9, 10], [9, 10], [9, 10]] and mask.shape == (4, 2)


def test_two_encoders_take_pixel_dict() -> None:
    model = build(bridge={"name": "_test_linear", "all_encoders": True}, a=32, b=16)
    batch = make_batch(model.lm, TEXTS)
    batch.pixel_values = {"a": batch.pixel_values, "b": batch.pixel_values.flip(-1)}
    out = model(batch)
    assert out.loss.isfinite()
    with pytest.raises(ValueError, match=r"needs 1 encoder\(s\) but got 2"):
        build_multimodal_lm(fake_encoders(a=32, b=16), "_test_linear", "tiny_llama")


def test_param_groups_partition_every_parameter_once() -> None:
    model = build_multimodal_lm(fake_encoders(last_k=1), "_test_linear", "tiny_llama")
    groups = model.param_groups()
    ids = [id(p) for ps in groups.values() for p in ps]
    assert len(ids) == len(set(ids))
    assert set(ids) == {id(p) for p in model.parameters()}
    assert {id(p) for p in groups["bridge"]} == {id(p) for p in model.bridge.parameters()}
    last_block = list(model.encoders["vit"].blocks())[-1]
    assert {id(p) for p in groups["encoder.last_k"]} == {id(p) for p in last_block.parameters()}
    assert len(groups["lm.new_tokens"]) == 2  # untied embedding rows + output-head rows
    assert groups["lm.lora"] == []
    summary = model.summary()
    assert summary["visual_tokens_per_media"] == 4 and summary["bridge"] == "_test_linear"
    bridge_params = sum(p.numel() for p in model.bridge.parameters())
    assert summary["groups"]["bridge"] == {"params": bridge_params, "trainable": bridge_params}
    assert summary["groups"]["lm"]["trainable"] == 0
    assert summary["groups"]["lm.new_tokens"]["trainable"] == 2 * 64
    assert summary["groups"]["encoder.last_k"]["trainable"] == sum(p.numel() for p in last_block.parameters())
    assert summary["groups"]["encoder"]["trainable"] == 0


def test_lora_group_through_multimodal_lm() -> None:
    model = build_multimodal_lm(fake_encoders(), "_test_linear", {"name": "tiny_qwen2", "lora_rank": 2})
    groups = model.param_groups()
    assert {id(p) for p in groups["lm.lora"]} == {id(p) for p in model.lm.lora_parameters()} != set()
    assert not {id(p) for p in groups["lm"]} & {id(p) for p in groups["lm.lora"]}
    rank, q_o, k_v = 2, 64 + 64, 64 + 32  # rank x (in + out) per adapted projection, 2 layers
    assert model.summary()["groups"]["lm.lora"]["trainable"] == 2 * rank * (2 * q_o + 2 * k_v)
