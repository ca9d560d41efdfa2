"""mPLUG-Owl3 Hyper Attention (``hyper_attention``): exactness, masking, MI-RoPE, caching, sizes and learning."""

from __future__ import annotations

import pytest
import torch
from test_llm_fakes import decode_with_cache, train_losses
from transformers.models.qwen2.modeling_qwen2 import Qwen2DecoderLayer, apply_rotary_pos_emb, repeat_kv

from bridges.base import BridgeIO, EncoderInfo, InjectionContext
from bridges.hyper_attention import HyperAttentionBridge, HyperAttentionConfig, default_hyper_layers, gqa_attention
from bridges.presets import PRESETS
from encoders.base import VisionFeatures
from llm_adapters import LMAdapter, LMConfig

TINY = {
    "hidden_size": 64,
    "intermediate_size": 96,
    "num_attention_heads": 4,
    "num_key_value_heads": 2,
    "max_position_embeddings": 128,
}
ENC = EncoderInfo("tiny", 32, (2, 3), 2)
P = 6  # visual tokens per image


def _lm(model_type: str = "qwen2", layers: int = 3) -> LMAdapter:
    torch.manual_seed(0)
    lm = LMAdapter(LMConfig(model_type=model_type, config={**TINY, "num_hidden_layers": layers}))
    return lm.eval()


def _bridge(lm: LMAdapter, **overrides) -> HyperAttentionBridge:
    torch.manual_seed(1)
    bridge = HyperAttentionBridge(HyperAttentionConfig(**overrides), BridgeIO((ENC,), lm.info)).eval()
    lm.attach(bridge.injections(lm), bridge.slot)
    return bridge


class CountingContext(InjectionContext):
    """Counts media-mask constructions (the mask must be built once per forward, not per layer)."""

    mask_calls = 0

    def media_mask(self, mode):  # type: ignore[override]
        CountingContext.mask_calls += 1
        return super().media_mask(mode)


def _context(memory: torch.Tensor, media_to_sample: list[int], positions: list[int]) -> InjectionContext:
    pos = torch.tensor(positions)
    return CountingContext(memory, torch.tensor(media_to_sample), pos, pos.clone())


def _logits(lm: LMAdapter, bridge: HyperAttentionBridge, ids: torch.Tensor, ctx: InjectionContext) -> torch.Tensor:
    with torch.no_grad(), bridge.slot.use(ctx):
        return lm.model(input_ids=ids).logits


def _bare(lm: LMAdapter, bridge: HyperAttentionBridge, ids: torch.Tensor) -> torch.Tensor:
    """Logits of the LM with the bridge detached (then attached again)."""
    assert lm.injected
    lm.detach()
    with torch.no_grad():
        out = lm.model(input_ids=ids).logits
    lm.attach(bridge.injections(lm), bridge.slot)
    return out


# ---- placement, sizes, errors -------------------------------------------------------------------------------------


def test_default_layers_follow_the_reference() -> None:
    assert default_hyper_layers(28, 4) == [0, 8, 16, 24]  # Qwen2-7B: the reference's 1-indexed [1, 9, 17, 25]
    assert default_hyper_layers(32, 4) == [0, 9, 18, 27]
    assert default_hyper_layers(8, 4) == [0, 2, 4, 6]
    assert default_hyper_layers(3, 4) == [0, 1, 2]
    assert default_hyper_layers(5, 1) == [0]


@pytest.mark.parametrize("name", ["mplug_owl3_240728", "mplug_owl3_240728_projector", "mplug_owl3_241101"])
def test_paper_sizes_within_one_percent(name: str) -> None:
    preset = PRESETS[("hyper_attention", name)]
    with torch.device("meta"):
        bridge = HyperAttentionBridge(HyperAttentionConfig(**preset.overrides), preset.io)
    groups = bridge.param_groups()
    counted = sum(p.numel() for p in groups[preset.count])
    assert abs(counted / preset.expected_params - 1) < 0.01, (counted, preset.expected_params)
    everything = sorted(id(p) for p in bridge.parameters())
    assert sorted(id(p) for ps in groups.values() for p in ps) == everything  # each parameter in exactly one group
    assert bridge.layer_indices == [0, 8, 16, 24]
    # GQA-aware: K and V for Qwen2-7B's 4 KV heads of 128, from the 3584-wide LM
    assert bridge.hyper["0"].v_kv_proj.weight.shape == (2 * 4 * 128, 3584)


def test_unsupported_family_names_the_supported_ones() -> None:
    lm = LMAdapter(LMConfig(model_type="gpt2", config={"n_embd": 64, "n_layer": 2, "n_head": 4, "n_positions": 64}))
    bridge = HyperAttentionBridge(HyperAttentionConfig(), BridgeIO((ENC,), lm.info))
    with pytest.raises(ValueError, match="llama, qwen2, mistral"):
        bridge.injections(lm)


def test_bad_config_values_raise() -> None:
    info = _lm(layers=2).info
    for field, value in (("mi_rope", "on"), ("visibility", "causal"), ("fusion", "gated")):
        with pytest.raises(ValueError, match=field):
            HyperAttentionBridge(HyperAttentionConfig(**{field: value}), BridgeIO((ENC,), info))
    with pytest.raises(ValueError, match="hyper_layers"):
        HyperAttentionBridge(HyperAttentionConfig(hyper_layers=[5]), BridgeIO((ENC,), info))


# ---- attention math --------------------------------------------------------------------------------------------------


def test_gqa_attention_matches_repeat_kv_reference() -> None:
    b, h, hkv, lq, s, d = 2, 6, 2, 5, 7, 8
    q, k, v = torch.randn(b, h, lq, d), torch.randn(b, hkv, s, d), torch.randn(b, hkv, s, d)
    mask = torch.rand(b, lq, s) > 0.4
    mask[0, 1] = False  # a row that sees nothing
    got = gqa_attention(q, k, v, mask, scale=d**-0.5)
    scores = q @ repeat_kv(k, h // hkv).transpose(-1, -2) * d**-0.5
    weights = scores.masked_fill(~mask[:, None], float("-inf")).softmax(-1).nan_to_num(0.0)
    expected = (weights @ repeat_kv(v, h // hkv)).transpose(1, 2)
    torch.testing.assert_close(got, expected, atol=1e-5, rtol=1e-5)
    assert torch.equal(got[0, 1], torch.zeros(h, d))


@pytest.mark.parametrize("mi_rope, offset", [("image_token", 0), ("after_image_token", 1)])
def test_visual_keys_rotate_like_a_text_key_at_the_image_position(mi_rope: str, offset: int) -> None:
    lm = _lm(layers=2)
    bridge = _bridge(lm, mi_rope=mi_rope)
    layer = bridge.hyper["0"]
    memory, positions = torch.randn(3, P, 64), torch.tensor([2, 9, 30])
    with torch.no_grad():
        k, v = layer.visual_kv(memory, positions)
        layer.config.mi_rope = "off"
        k_plain, v_plain = layer.visual_kv(memory, positions)
        layer.config.mi_rope = mi_rope
    assert torch.equal(v, v_plain)  # values are never rotated
    for n, p in enumerate(positions.tolist()):
        cos, sin = lm.model.model.rotary_emb(k_plain, torch.tensor([[p + offset]]))  # the LM's text RoPE
        text_rotated, _ = apply_rotary_pos_emb(k_plain[n : n + 1], k_plain[n : n + 1], cos, sin)
        assert torch.equal(k[n : n + 1], text_rotated)


# ---- the LM with HATB -------------------------------------------------------------------------------------------


def _two_image_prompt() -> tuple[torch.Tensor, InjectionContext]:
    """Row 0: images at 3 and 8; row 1: one image at 5; 14 tokens each."""
    ids = torch.randint(0, 300, (2, 14))
    return ids, _context(torch.randn(3, P, 64), [0, 0, 1], [3, 8, 5])


@pytest.mark.parametrize("model_type", ["qwen2", "llama"])
def test_non_hyper_layers_are_the_bare_layers(model_type: str) -> None:
    lm = _lm(model_type, layers=3)
    originals = list(lm.model.model.layers)
    bridge = _bridge(lm, hyper_layers=[1])
    assert [type(m).__name__ for m in lm.model.model.layers] == [type(m).__name__ for m in originals]
    assert lm.model.model.layers[0] is originals[0] and lm.model.model.layers[2] is originals[2]
    assert type(originals[1].self_attn).__name__ == "InjectedAttention"
    ids, ctx = _two_image_prompt()
    captured = {}
    hook = originals[2].register_forward_hook(
        lambda m, args, kwargs, out: captured.update(args=args, kwargs=kwargs, out=out), with_kwargs=True
    )
    with torch.no_grad(), bridge.slot.use(ctx):
        hidden = lm.model(input_ids=ids, output_hidden_states=True).hidden_states
    hook.remove()
    lm.detach()
    with torch.no_grad():
        bare_hidden = lm.model.model(input_ids=ids, output_hidden_states=True).hidden_states
    assert torch.equal(hidden[1], bare_hidden[1])  # layer 0 (not hyper) is untouched
    if model_type == "qwen2":  # layer 2 against a transformers Qwen2DecoderLayer with the same weights
        reference = Qwen2DecoderLayer(lm.model.config, 2).eval()
        reference.load_state_dict(originals[2].state_dict())
        with torch.no_grad():
            expected = reference(*captured["args"], **captured["kwargs"])
        assert torch.equal(captured["out"], expected)


@pytest.mark.parametrize("model_type", ["qwen2", "llama"])
def test_positions_before_the_first_image_equal_the_bare_lm(model_type: str) -> None:
    lm = _lm(model_type, layers=2)
    bridge = _bridge(lm)  # both layers hyper
    ids, ctx = _two_image_prompt()
    ctx = _context(ctx.memory[:2], [0, 0], [3, 8])  # row 1 is text-only
    got, bare = _logits(lm, bridge, ids, ctx), _bare(lm, bridge, ids)
    assert torch.equal(got[0, :4], bare[0, :4])  # up to and including the <image> token (strict visibility)
    assert torch.equal(got[1], bare[1])  # a text-only sample
    assert not torch.allclose(got[0, 4:], bare[0, 4:])  # the gate is ~0.5 at init: images change later tokens


def test_changing_image_k_changes_nothing_at_or_before_its_token() -> None:
    lm = _lm(layers=2)
    bridge = _bridge(lm)
    ids, ctx = _two_image_prompt()
    base = _logits(lm, bridge, ids, ctx)
    for k, (row, pos) in enumerate([(0, 3), (0, 8), (1, 5)]):
        memory = ctx.memory.clone()
        memory[k] = torch.randn(P, 64)
        got = _logits(lm, bridge, ids, _context(memory, [0, 0, 1], [3, 8, 5]))
        assert torch.equal(got[row, : pos + 1], base[row, : pos + 1])
        assert (got[row, pos + 1 :] - base[row, pos + 1 :]).abs().amax(-1).gt(0).all()
        assert torch.equal(got[1 - row], base[1 - row])  # other samples never see it


def test_permuting_the_patches_of_an_image_changes_nothing() -> None:
    lm = _lm(layers=2)
    bridge = _bridge(lm)
    ids, ctx = _two_image_prompt()
    base = _logits(lm, bridge, ids, ctx)
    memory = ctx.memory.clone()
    memory[1] = memory[1, torch.randperm(P)]
    got = _logits(lm, bridge, ids, _context(memory, [0, 0, 1], [3, 8, 5]))
    torch.testing.assert_close(got, base, atol=1e-6, rtol=1e-5)


def test_inclusive_visibility_lets_the_image_token_see_its_image() -> None:
    lm = _lm(layers=2)
    bridge = _bridge(lm, visibility="inclusive")
    ids, ctx = _two_image_prompt()
    base = _logits(lm, bridge, ids, ctx)
    memory = ctx.memory.clone()
    memory[1] = torch.randn(P, 64)
    got = _logits(lm, bridge, ids, _context(memory, [0, 0, 1], [3, 8, 5]))
    assert torch.equal(got[0, :8], base[0, :8]) and not torch.equal(got[0, 8], base[0, 8])


def test_zero_init_fusion_leaves_the_lm_unchanged_and_static_gate_is_half() -> None:
    lm = _lm(layers=2)
    bridge = _bridge(lm, fusion="adaptive_zero")
    ids, ctx = _two_image_prompt()
    assert torch.equal(_logits(lm, bridge, ids, ctx), _bare(lm, bridge, ids))
    assert set(bridge.param_groups()) == {"bridge.projector", "bridge.hatb", "bridge.gates"}
    static = HyperAttentionBridge(HyperAttentionConfig(fusion="static"), BridgeIO((ENC,), lm.info))
    assert torch.equal(static.hyper["0"].gate.value(), torch.full((64,), 0.5))


def test_joint_fusion_is_causal_over_images_and_text() -> None:
    lm = _lm(layers=2)
    bridge = _bridge(lm, fusion="joint", visibility="inclusive")
    assert {n for n, _ in bridge.hyper["0"].named_parameters()} == {"v_kv_proj.weight", "v_kv_proj.bias"}
    ids, ctx = _two_image_prompt()
    base, bare = _logits(lm, bridge, ids, ctx), _bare(lm, bridge, ids)
    torch.testing.assert_close(base[0, :3], bare[0, :3], atol=1e-6, rtol=1e-5)
    memory = ctx.memory.clone()
    memory[1] = torch.randn(P, 64)
    got = _logits(lm, bridge, ids, _context(memory, [0, 0, 1], [3, 8, 5]))
    assert torch.equal(got[0, :8], base[0, :8]) and not torch.allclose(got[0, 8:], base[0, 8:])


@pytest.mark.parametrize("fusion", ["adaptive", "joint"])
def test_cached_decoding_equals_recompute_and_visual_kv_is_computed_once(fusion: str) -> None:
    lm = _lm(layers=3)
    bridge = _bridge(lm, hyper_layers=[0, 2], fusion=fusion)
    ids, ctx = _two_image_prompt()
    calls = {i: 0 for i in range(3)}
    for i, layer in bridge.hyper.items():
        layer.v_kv_proj.register_forward_hook(lambda *a, i=int(i): calls.__setitem__(i, calls[i] + 1))
    full = _logits(lm, bridge, ids, _context(ctx.memory, [0, 0, 1], [3, 8, 5]))
    assert calls == {0: 1, 1: 0, 2: 1}  # once per forward, never for the non-hyper layer
    CountingContext.mask_calls = 0
    with torch.no_grad(), bridge.slot.use(ctx):
        cached = decode_with_cache(lm.model, ids[:, :14], prompt_length=10)
    assert CountingContext.mask_calls == 5  # one mask per forward (prompt + 4 steps), shared by both hyper layers
    torch.testing.assert_close(cached, full, atol=1e-5, rtol=1e-4)
    assert calls == {0: 2, 1: 0, 2: 2}  # the prompt's visual K/V are reused by every decoding step


def test_encode_and_a_few_steps_lower_the_loss_with_the_lm_frozen() -> None:
    lm = _lm(layers=2)
    bridge = _bridge(lm)
    bridge.train()
    feats = VisionFeatures((torch.randn(2, P, 32),), (0,), (2, 3), 32)
    ids = torch.randint(0, 300, (2, 12))
    targets = torch.randint(0, 300, (2, 12))
    opt = torch.optim.Adam(bridge.parameters(), lr=1e-2)
    ours = {id(p) for p in bridge.parameters()}
    assert not any(p.requires_grad for p in lm.parameters() if id(p) not in ours)
    losses = []
    for _ in range(6):
        memory = bridge.encode({"tiny": feats})
        assert memory.shape == (2, P, 64)
        with bridge.slot.use(_context(memory, [0, 1], [1, 2])):
            logits = lm.model(input_ids=ids).logits
        loss = torch.nn.functional.cross_entropy(logits[:, 4:].flatten(0, 1), targets[:, 4:].flatten())
        opt.zero_grad()
        loss.backward()
        opt.step()
        losses.append(loss.item())
    assert losses[-1] < losses[0] - 0.05, losses


# ---- through MultimodalLM -------------------------------------------------------------------------------------


def _model(lm: str | dict = "tiny_qwen2", **overrides):
    from llm_adapters import build_multimodal_lm

    torch.manual_seed(0)
    return build_multimodal_lm({"preset": "tiny_clip"}, {"name": "hyper_attention", **overrides}, lm).eval()


def _batch(model, texts: list[str], media_to_sample: list[int], frames: int = 1, labels: bool = False):
    from llm_adapters import MultimodalBatch

    tok = model.lm.tokenizer(texts, return_tensors="pt", padding=True)
    ids, mask = tok["input_ids"], tok["attention_mask"]
    pixels = torch.rand(len(media_to_sample), frames, 3, 32, 32, generator=torch.Generator().manual_seed(0))
    target = torch.where((mask == 1) & (ids != model.image_token_id), ids, -100) if labels else None
    return MultimodalBatch(ids, mask, pixels, torch.tensor(media_to_sample, dtype=torch.long), labels=target)


INTERLEAVED = (["a red square <image> and a blue <image> circle", "two <image> green"], [0, 0, 1])
VIDEO_FRAMES = (["frames <image><image><image><image> move", "one <image> still"], [0, 0, 0, 0, 1])


def test_multimodal_lm_text_before_images_equals_the_bare_lm() -> None:
    model = _model()
    assert model.bridge.layer_indices == [0, 1]
    batch = _batch(model, ["words before any image then <image> and after", "text only, no media"], [0])
    got = model(batch).logits
    model.lm.detach()
    with torch.no_grad():
        bare = model.lm.model(input_ids=batch.input_ids, attention_mask=batch.attention_mask).logits
    first = int((batch.input_ids[0] == model.image_token_id).nonzero()[0])
    assert torch.equal(got[0, : first + 1], bare[0, : first + 1])
    real = batch.attention_mask[1].bool()
    assert torch.equal(got[1, real], bare[1, real])
    assert not torch.allclose(got[0, first + 1 :], bare[0, first + 1 :])


@pytest.mark.parametrize("lm", ["tiny_qwen2", "tiny_llama"])
@pytest.mark.parametrize("prompt", [INTERLEAVED, VIDEO_FRAMES], ids=["interleaved", "video_frames"])
def test_generate_with_cache_equals_recompute(lm: str, prompt: tuple) -> None:
    model = _model(lm)
    batch = _batch(model, *prompt)
    calls = []
    model.bridge.hyper["0"].v_kv_proj.register_forward_hook(lambda *a: calls.append(1))
    cached = model.generate(batch, max_new_tokens=5, do_sample=False)
    assert len(calls) == 1  # the visual K/V of the prompt are computed once for the whole generation
    recomputed = model.generate(batch, max_new_tokens=5, do_sample=False, use_cache=False)
    assert cached.shape == (2, 5) and torch.equal(cached, recomputed)


@pytest.mark.parametrize("fusion", ["joint", "adaptive"])
def test_generate_video_as_one_media_item(fusion: str) -> None:
    model = _model(fusion=fusion)
    batch = _batch(model, ["a clip <image> shows", "<image> then"], [0, 1], frames=3)
    assert model.bridge.encode(model.encode_media(batch), num_frames=3).shape == (2, 3 * 16, 64)
    cached = model.generate(batch, max_new_tokens=4, do_sample=False)
    assert torch.equal(cached, model.generate(batch, max_new_tokens=4, do_sample=False, use_cache=False))


def test_learns_through_multimodal_lm_with_the_lm_frozen() -> None:
    model = _model().train()
    groups = model.param_groups()
    assert {"bridge.projector", "bridge.hatb"} <= set(groups) and not groups["bridge"]
    assert not any(p.requires_grad for p in groups["lm"])
    batch = _batch(model, *INTERLEAVED, labels=True)
    losses = train_losses(model, batch, steps=6)
    assert losses[-1] < losses[0] - 0.05, losses


def test_bf16_lm_with_float32_bridge_and_text_only_batches() -> None:
    model = _model({"name": "tiny_qwen2", "dtype": "bfloat16"})
    batch = _batch(model, *INTERLEAVED)
    assert model(batch).logits.dtype == torch.bfloat16 and model.generate(batch, max_new_tokens=2).shape == (2, 2)
    text = _batch(model, ["no image here", "none"], [])
    got = model(text).logits
    model.lm.detach()
    with torch.no_grad():
        bare = model.lm.model(input_ids=text.input_ids, attention_mask=text.attention_mask).logits
    real = text.attention_mask.bool()
    assert torch.equal(got[real], bare[real])


@pytest.mark.parametrize("projector", ["linear", "mlp2x_gelu"])
def test_flops_per_media_match_the_flop_counter(projector: str) -> None:
    from torch.utils.flop_counter import FlopCounterMode

    lm = _lm(layers=2)
    bridge = _bridge(lm, projector=projector)
    feats = VisionFeatures((torch.randn(2, P, 32),), (0,), (2, 3), 32)
    with FlopCounterMode(display=False) as counter, torch.no_grad():
        memory = bridge.encode({"tiny": feats}, num_frames=2)
        for layer in bridge.hyper.values():
            layer.v_kv_proj(memory)
    assert counter.get_total_flops() == bridge.flops_per_media(2)
