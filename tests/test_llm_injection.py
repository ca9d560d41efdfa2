"""Layer injection: attach/detach restore everything, zero gates are the identity, cached generation, query
positions."""

from __future__ import annotations

import pytest
import torch
from test_llm_fakes import GatedBlock, fake_encoders, make_batch
from test_llm_multimodal import TEXTS, assert_same_until_eos, greedy_recompute

from bridges.base import BridgeIO, EncoderInfo, Injection
from llm_adapters import build_lm
from llm_adapters.injection import InjectedAttention, InjectedDecoderLayer
from llm_adapters.multimodal_lm import build_multimodal_lm
from llm_adapters.splice import positions_from_mask

FAMILIES = ["tiny_llama", "tiny_qwen2", "tiny_mistral", "tiny_gpt2", "tiny_opt", "tiny_mpt"]
LLAMA_STYLE = FAMILIES[:3]


def gated(preset: str, gate: float, **overrides):
    extend = preset in LLAMA_STYLE
    spec = {"name": "_test_gated", "gate": gate, "extend_attention": extend, **overrides}
    return build_multimodal_lm(fake_encoders(), spec, preset).eval()


@pytest.mark.parametrize("preset", FAMILIES)
def test_attach_then_detach_restores_modules_state_and_outputs(preset: str) -> None:
    lm = build_lm(preset).eval()
    lm.add_special_tokens(["<image>", "<|endofchunk|>"])  # what MultimodalLM adds for this bridge
    ids = torch.randint(3, 300, (2, 9))
    before = lm(input_ids=ids).logits
    keys = list(lm.state_dict())
    layers = list(lm.decoder_layers())
    attns = [lm.attention(i) for i in range(len(layers))]
    batch = make_batch(lm, TEXTS, labels=False)
    bare = lm(input_ids=batch.input_ids, attention_mask=batch.attention_mask).logits

    model = build_multimodal_lm(
        fake_encoders(), {"name": "_test_gated", "gate": 0.5, "extend_attention": preset in LLAMA_STYLE}, lm
    ).eval()
    container = lm._family.layers_container(lm.model)
    assert all(isinstance(layer, InjectedDecoderLayer) for layer in container)
    if preset in LLAMA_STYLE:
        assert all(isinstance(layer.self_attn, InjectedAttention) for layer in layers)
    assert list(lm.decoder_layers()) == layers  # the host API sees through the wrappers
    assert not torch.allclose(model(batch).logits, bare)  # the bridge acts

    lm.detach()
    assert list(container) == layers
    assert [lm.attention(i) for i in range(len(layers))] == attns
    assert list(lm.state_dict()) == keys
    assert torch.equal(lm(input_ids=ids).logits, before)
    assert not lm.model._forward_pre_hooks  # the query-position hook is gone


@pytest.mark.parametrize("preset", FAMILIES)
def test_zero_gate_leaves_logits_bit_identical(preset: str) -> None:
    model = gated(preset, gate=0.0)
    batch = make_batch(model.lm, TEXTS)
    out = model(batch)
    model.lm.detach()
    positions = positions_from_mask(batch.attention_mask)  # what MultimodalLM passes (padding at 0)
    bare = model.lm(input_ids=batch.input_ids, attention_mask=batch.attention_mask, position_ids=positions)
    assert torch.equal(out.logits, bare.logits)


@pytest.mark.parametrize("preset", FAMILIES)
@pytest.mark.parametrize("mode", ["immediate", "all_previous"])
def test_inject_cached_generation_equals_recompute(preset: str, mode: str) -> None:
    model = gated(preset, gate=2.0, mode=mode)
    batch = make_batch(model.lm, TEXTS, labels=False, padding_side="left")
    cached = model.generate(batch, max_new_tokens=5, do_sample=False)
    no_cache = model.generate(batch, max_new_tokens=5, do_sample=False, use_cache=False)
    assert torch.equal(cached, no_cache)
    assert_same_until_eos(cached, greedy_recompute(model, batch, cached.shape[1]), model.lm.tokenizer.eos_token_id)


def test_query_positions_follow_the_cache() -> None:
    model = gated("tiny_llama", gate=1.0)
    batch = make_batch(model.lm, TEXTS, labels=False, padding_side="left")
    block: GatedBlock = model.bridge.blocks[0]
    block.seen_query_positions.clear()
    new = model.generate(batch, max_new_tokens=4, do_sample=False, eos_token_id=None)
    length = batch.input_ids.shape[1]
    seen = block.seen_query_positions
    assert new.shape[1] == 4 and len(seen) == 4
    assert torch.equal(seen[0], torch.arange(length).expand(3, length))
    for step, q in enumerate(seen[1:], start=1):
        assert torch.equal(q, torch.full((3, 1), length + step - 1))


def test_context_positions_of_media() -> None:
    model = gated("tiny_llama", gate=1.0)
    batch = make_batch(model.lm, TEXTS, labels=False, padding_side="left")
    ctx = model.injection_context(batch)
    rows, cols = (batch.input_ids == model.image_token_id).nonzero(as_tuple=True)
    assert torch.equal(ctx.media_positions, cols) and torch.equal(ctx.media_to_sample, rows)
    pad = (batch.attention_mask == 0).sum(1)
    assert torch.equal(ctx.media_rope_positions, cols - pad[rows])
    assert ctx.memory.shape == (4, 4, 32)


def test_injected_module_outside_forward_raises() -> None:
    model = gated("tiny_llama", gate=1.0)
    with pytest.raises(RuntimeError, match="without an InjectionContext"):
        model.lm(input_ids=torch.randint(3, 300, (1, 4)))


def test_gpt2_rejects_attention_extension() -> None:
    lm = build_lm("tiny_gpt2")
    assert not lm.supports_attention_extension
    with pytest.raises(NotImplementedError, match="fused"):
        lm.qkvo(0)
    with pytest.raises(ValueError, match="llama, qwen2, mistral"):
        lm.attach([Injection(0, "replace_attention", torch.nn.Identity())])


def test_injection_layer_out_of_range() -> None:
    lm = build_lm("tiny_llama")
    with pytest.raises(ValueError, match="2 decoder layers"):
        lm.attach([Injection(5, "before_layer", torch.nn.Identity())])


def test_inject_param_groups_dedupe_shared_modules() -> None:
    model = gated("tiny_llama", gate=0.0)
    groups = model.param_groups()
    ids = [id(p) for ps in groups.values() for p in ps]
    assert len(ids) == len(set(ids)) == len({id(p) for p in model.parameters()})
    gates = {id(b.gate) for b in model.bridge.blocks} | {id(m.gate) for m in model.bridge.extensions}
    assert {id(p) for p in groups["bridge.gates"]} == gates
    assert not {id(p) for p in groups["lm"]} & {id(p) for p in model.bridge.parameters()}
    assert next(iter(dict(model.named_parameters()))).startswith("bridge.")
    assert "<|endofchunk|>" in model.lm.special_token_ids


def test_bridge_io_from_encoders() -> None:
    model = gated("tiny_qwen2", gate=0.0)
    assert model.bridge.io == BridgeIO(encoders=(EncoderInfo("vit", 32, (2, 2), 2),), lm=build_lm("tiny_qwen2").info)


def test_inject_batch_without_media() -> None:
    model = gated("tiny_llama", gate=1.0)
    batch = make_batch(model.lm, ["a red square", "two blue circles"], labels=False, padding_side="left")
    assert batch.num_media == 0
    ctx = model.injection_context(batch)
    assert ctx.memory.shape[0] == 0 and ctx.media_mask("immediate").shape == (2, batch.input_ids.shape[1], 0)
    cached = model.generate(batch, max_new_tokens=3, do_sample=False)
    assert_same_until_eos(cached, greedy_recompute(model, batch, cached.shape[1]), model.lm.tokenizer.eos_token_id)
