"""Flamingo (``flamingo``): LM unchanged at init, media masking, IDEFICS parity, video, caching, sizes, learning."""

from __future__ import annotations

import pytest
import torch
from test_llm_fakes import decode_with_cache, train_losses

from bridges.base import BridgeIO, EncoderInfo, InjectionContext
from bridges.flamingo import FlamingoBridge, FlamingoConfig, GatedXAttnDenseBlock, xattn_layer_indices
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
SMALL = {
    "perceiver_depth": 1,
    "perceiver_heads": 2,
    "perceiver_dim_head": 8,
    "num_latents": 4,
    "xattn_heads": 2,
    "xattn_dim_head": 8,
    "max_num_frames": 4,
}
R = 4  # latents per media item


def _lm(layers: int = 2) -> LMAdapter:
    torch.manual_seed(0)
    return LMAdapter(LMConfig(model_type="llama", config={**TINY, "num_hidden_layers": layers})).eval()


def _bridge(lm: LMAdapter, attach: bool = True, **overrides) -> FlamingoBridge:
    torch.manual_seed(1)
    bridge = FlamingoBridge(FlamingoConfig(**{**SMALL, **overrides}), BridgeIO((ENC,), lm.info)).eval()
    if attach:
        lm.attach(bridge.injections(lm), bridge.slot)
    return bridge


def _open_gates(bridge: FlamingoBridge, value: float = 0.8) -> None:
    with torch.no_grad():
        for p in bridge.param_groups()["bridge.gates"]:
            p.fill_(value)


def _context(memory: torch.Tensor, media_to_sample: list[int], positions: list[int], length: int | None = None):
    pos = torch.tensor(positions)
    ctx = InjectionContext(memory, torch.tensor(media_to_sample), pos, pos.clone())
    if length is not None:
        ctx.query_positions = torch.arange(length).expand(2, length)
    return ctx


def _logits(lm: LMAdapter, bridge: FlamingoBridge, ids: torch.Tensor, ctx: InjectionContext) -> torch.Tensor:
    with torch.no_grad(), bridge.slot.use(ctx):
        return lm.model(input_ids=ids).logits


# ---- placement and sizes --------------------------------------------------------------------------------------------


def test_placement_rules() -> None:
    assert xattn_layer_indices(FlamingoConfig(cross_attn_every_n_layers=4), 8) == [3, 7]  # OpenFlamingo
    assert xattn_layer_indices(FlamingoConfig(cross_attn_every_n_layers=4, placement="idefics"), 8) == [0, 4]
    assert xattn_layer_indices(FlamingoConfig(xattn_layers=[3]), 8) == [3]
    with pytest.raises(ValueError, match="placement"):
        xattn_layer_indices(FlamingoConfig(placement="middle"), 8)


@pytest.mark.parametrize(
    "name", ["flamingo_3b", "flamingo_3b_perceiver", "openflamingo_3b", "openflamingo_3b_perceiver", "openflamingo_9b"]
)
def test_paper_sizes_within_one_percent(name: str) -> None:
    preset = PRESETS[("flamingo", name)]
    with torch.device("meta"):
        bridge = FlamingoBridge(FlamingoConfig(**preset.overrides), preset.io)
    groups = bridge.param_groups()
    counted = sum(p.numel() for p in groups[preset.count])
    assert abs(counted / preset.expected_params - 1) < 0.01, (counted, preset.expected_params)
    assert sorted(id(p) for ps in groups.values() for p in ps) == sorted(id(p) for p in bridge.parameters())
    assert all(p.numel() == 1 for p in groups["bridge.gates"]) and len(groups["bridge.gates"]) == 2 * len(bridge.xattn)


# ---- parity with IDEFICS --------------------------------------------------------------------------------------------


@pytest.mark.parametrize("alpha_type, fused_kv", [("float", False), ("vector", True)])
def test_gated_block_matches_idefics(alpha_type: str, fused_kv: bool) -> None:
    from transformers import IdeficsConfig
    from transformers.models.idefics.modeling_idefics import IdeficsGatedCrossAttentionLayer

    config = IdeficsConfig(
        hidden_size=64,
        num_attention_heads=4,
        intermediate_size=96,
        hidden_act="silu",
        alpha_type=alpha_type,
        vision_config={"embed_dim": 32},
        rms_norm_eps=1e-6,
    )
    config._attn_implementation = "eager"
    ref = IdeficsGatedCrossAttentionLayer(config, layer_idx=0).eval()
    with torch.no_grad():
        for p in ref.parameters():
            p.copy_(torch.randn_like(p) * 0.2 + (0.5 if p.dim() == 1 else 0.0))
    ours = GatedXAttnDenseBlock(
        64,
        32,
        FlamingoConfig(
            xattn_heads=4,
            xattn_dim_head=16,
            ff_mult=1.5,
            ff_activation="swiglu",
            norm="rmsnorm",
            norm_eps=1e-6,
            fused_kv=fused_kv,
            gate="vector" if alpha_type == "vector" else "scalar",
        ),
    ).eval()
    ours.load_idefics_state_dict(ref.state_dict())
    y, media = torch.randn(2, 7, 64), torch.randn(2, 3 * 5, 32)
    mask = torch.zeros(2, 7, 15, dtype=torch.bool)
    mask[0, 2:5, :5], mask[0, 5:, 5:10], mask[1, 4:, 10:] = True, True, True  # rows 0-1 of both see nothing
    additive = torch.zeros(mask.shape).masked_fill(~mask, torch.finfo(torch.float32).min)[:, None]
    with torch.no_grad():
        expected = ref(
            y, image_hidden_states=media, image_attention_mask=additive, cross_attention_gate=mask.any(-1).float()
        )
        got = ours.gated(y, ours.attn.kv(media), mask)
    torch.testing.assert_close(got, expected, atol=1e-5, rtol=1e-5)


# ---- the LM with gated blocks ---------------------------------------------------------------------------------------


def _prompt() -> tuple[torch.Tensor, InjectionContext]:
    """Row 0: images at 2 and 6; row 1: one image at 4; 10 tokens each."""
    return torch.randint(0, 300, (2, 10)), _context(torch.randn(3, R, 32), [0, 0, 1], [2, 6, 4])


@pytest.mark.parametrize("gate", ["scalar", "vector"])
def test_lm_is_bit_identical_at_init(gate: str) -> None:
    lm = _lm()
    bridge = _bridge(lm, gate=gate, cross_attn_every_n_layers=1)
    ids, ctx = _prompt()
    got = _logits(lm, bridge, ids, ctx)
    text_only = _logits(lm, bridge, ids, _context(torch.randn(0, R, 32), [], []))
    lm.detach()
    with torch.no_grad():
        bare = lm.model(input_ids=ids).logits
    assert torch.equal(got, bare) and torch.equal(text_only, bare)


@pytest.mark.parametrize("mode", ["immediate", "all_previous"])
def test_block_masking(mode: str) -> None:
    lm = _lm()
    bridge = _bridge(lm, attach=False, media_attention=mode)
    _open_gates(bridge)
    block = bridge.xattn["0"]
    y = torch.randn(2, 10, 64)
    _, ctx = _prompt()
    with torch.no_grad(), bridge.slot.use(_context(ctx.memory, [0, 0, 1], [2, 6, 4], 10)):
        base = block(y)
    with torch.no_grad(), bridge.slot.use(_context(torch.zeros(0, R, 32), [], [], 10)):
        no_media = block(y)  # the FFW alone: what a token with no visible media must get
    assert torch.equal(base[0, :2], no_media[0, :2]) and torch.equal(base[1, :4], no_media[1, :4])
    memory = ctx.memory.clone()
    memory[0] = torch.randn(R, 32)
    with torch.no_grad(), bridge.slot.use(_context(memory, [0, 0, 1], [2, 6, 4], 10)):
        changed = (block(y) != base).any(-1)
    expected = torch.zeros(2, 10, dtype=torch.bool)
    expected[0, 2 : 6 if mode == "immediate" else 10] = True  # image 0 is the most recent media of tokens 2..5
    assert torch.equal(changed, expected)


def test_positions_before_the_first_image_never_change() -> None:
    lm = _lm()
    bridge = _bridge(lm)
    _open_gates(bridge)
    ids, ctx = _prompt()
    base = _logits(lm, bridge, ids, ctx)
    for k in range(3):
        memory = ctx.memory.clone()
        memory[k] = torch.randn(R, 32)
        got = _logits(lm, bridge, ids, _context(memory, [0, 0, 1], [2, 6, 4]))
        first = 2 if k < 2 else 4
        row = 0 if k < 2 else 1
        assert torch.equal(got[row, :first], base[row, :first]) and torch.equal(got[1 - row], base[1 - row])
        assert not torch.equal(got[row, first:], base[row, first:])


def test_encode_images_and_video_frames() -> None:
    lm = _lm()
    bridge = _bridge(lm, attach=False)
    frames = torch.randn(2 * 3, 6, 32)  # 2 videos x 3 frames, media-major
    memory = bridge.encode({"tiny": VisionFeatures((frames,), (1,), (2, 3), 32)}, num_frames=3)
    assert memory.shape == (2, R, 32) and bridge.num_visual_tokens(3) == R
    swapped = frames.view(2, 3, 6, 32)[:, [1, 0, 2]].reshape(6, 6, 32)
    other = bridge.encode({"tiny": VisionFeatures((swapped,), (1,), (2, 3), 32)}, num_frames=3)
    assert not torch.allclose(memory, other)  # frame embeddings make frame order matter
    alone = bridge.encode({"tiny": VisionFeatures((frames[:3],), (1,), (2, 3), 32)}, num_frames=3)
    torch.testing.assert_close(alone, memory[:1])  # media items are independent
    assert bridge.extra_special_tokens == ("<|endofchunk|>",)


def test_cached_decoding_equals_recompute_and_media_kv_is_projected_once() -> None:
    lm = _lm(layers=3)
    bridge = _bridge(lm, cross_attn_every_n_layers=2)  # blocks before layers 1 (OpenFlamingo rule)
    assert bridge.layer_indices == [1]
    _open_gates(bridge)
    calls = []
    bridge.xattn["1"].attn.to_kv.register_forward_hook(lambda *a: calls.append(1))
    ids, ctx = _prompt()
    full = _logits(lm, bridge, ids, _context(ctx.memory, [0, 0, 1], [2, 6, 4]))
    with torch.no_grad(), bridge.slot.use(ctx):
        cached = decode_with_cache(lm.model, ids[:, :10], prompt_length=7)
    torch.testing.assert_close(cached, full, atol=1e-5, rtol=1e-4)
    assert len(calls) == 2  # once for the full forward, once for the whole cached generation


def test_a_few_steps_lower_the_loss_with_the_lm_frozen() -> None:
    lm = _lm()
    bridge = _bridge(lm)
    bridge.train()
    feats = VisionFeatures((torch.randn(3, 6, 32),), (1,), (2, 3), 32)
    ids, _ = _prompt()
    targets = torch.randint(0, 300, (2, 10))
    ours = {id(p) for p in bridge.parameters()}
    assert not any(p.requires_grad for p in lm.parameters() if id(p) not in ours)
    opt = torch.optim.Adam(bridge.parameters(), lr=3e-2)
    losses = []
    for _ in range(8):
        with bridge.slot.use(_context(bridge.encode({"tiny": feats}), [0, 0, 1], [2, 6, 4])):
            logits = lm.model(input_ids=ids).logits
        loss = torch.nn.functional.cross_entropy(logits.flatten(0, 1), targets.flatten())
        opt.zero_grad()
        loss.backward()
        opt.step()
        losses.append(loss.item())
    assert losses[-1] < losses[0] - 0.05, losses
    assert all(abs(v) > 0 for v in bridge.gate_values().values())  # the gates opened


# ---- through MultimodalLM -------------------------------------------------------------------------------------


def _model(**overrides):
    from llm_adapters import build_multimodal_lm

    torch.manual_seed(0)
    return build_multimodal_lm({"preset": "tiny_clip"}, {"name": "flamingo", **SMALL, **overrides}, "tiny_llama").eval()


def _batch(model, texts: list[str], media_to_sample: list[int], frames: int = 1, labels: bool = False):
    from llm_adapters import MultimodalBatch

    tok = model.lm.tokenizer(texts, return_tensors="pt", padding=True)
    ids, mask = tok["input_ids"], tok["attention_mask"]
    pixels = torch.rand(len(media_to_sample), frames, 3, 32, 32, generator=torch.Generator().manual_seed(0))
    target = torch.where((mask == 1) & (ids != model.image_token_id), ids, -100) if labels else None
    return MultimodalBatch(ids, mask, pixels, torch.tensor(media_to_sample, dtype=torch.long), labels=target)


INTERLEAVED = (["<image> a red square <|endofchunk|> <image> a blue", "two <image> green circles"], [0, 0, 1])


def test_multimodal_lm_at_init_equals_the_bare_lm() -> None:
    model = _model()
    assert model.lm.token_id("<|endofchunk|>") != model.image_token_id
    batch = _batch(model, *INTERLEAVED)
    got = model(batch).logits
    model.lm.detach()
    with torch.no_grad():
        bare = model.lm.model(input_ids=batch.input_ids, attention_mask=batch.attention_mask).logits
    real = batch.attention_mask.bool()
    assert torch.equal(got[real], bare[real])


VIDEO = (["a clip <image> shows", "<image> then"], [0, 1])


@pytest.mark.parametrize("frames, texts, media", [(1, *INTERLEAVED), (3, *VIDEO)], ids=["interleaved", "video"])
def test_generate_with_cache_equals_recompute(frames: int, texts: list[str], media: list[int]) -> None:
    model = _model(max_num_frames=4)
    _open_gates(model.bridge)
    batch = _batch(model, texts, media, frames)
    cached = model.generate(batch, max_new_tokens=5, do_sample=False)
    recomputed = model.generate(batch, max_new_tokens=5, do_sample=False, use_cache=False)
    assert cached.shape == (2, 5) and torch.equal(cached, recomputed)
    # the images matter: other pixels give other continuations (or at least other logits)
    other = _batch(model, texts, media, frames)
    other.pixel_values = torch.rand_like(other.pixel_values)
    assert not torch.equal(model(batch).logits, model(other).logits)


def test_learns_through_multimodal_lm_with_the_lm_frozen() -> None:
    model = _model().train()
    groups = model.param_groups()
    assert {"bridge.perceiver", "bridge.xattn", "bridge.gates"} <= set(groups)
    assert groups["lm.new_tokens"] and all(p.requires_grad for p in groups["lm.new_tokens"])  # <image>, <|endofchunk|>
    assert not any(p.requires_grad for p in groups["lm"]) and not any(p.requires_grad for p in groups["encoder"])
    batch = _batch(model, *INTERLEAVED, labels=True)
    losses = train_losses(model, batch, steps=6)
    assert losses[-1] < losses[0] - 0.05, losses


def test_bf16_lm_with_float32_bridge_and_text_only_batches() -> None:
    from llm_adapters import build_multimodal_lm

    model = build_multimodal_lm(
        {"preset": "tiny_clip"}, {"name": "flamingo", **SMALL}, {"name": "tiny_llama", "dtype": "bfloat16"}
    ).eval()
    _open_gates(model.bridge)
    batch = _batch(model, *INTERLEAVED)
    assert model(batch).logits.dtype == torch.bfloat16 and model.generate(batch, max_new_tokens=2).shape == (2, 2)
    text = _batch(model, ["no image here", "none"], [])
    got = model(text).logits
    model.lm.detach()
    with torch.no_grad():
        bare = model.lm.model(input_ids=text.input_ids, attention_mask=text.attention_mask).logits
    real = text.attention_mask.bool()
    assert torch.isfinite(got).all() and not torch.equal(got[real], bare[real])  # open gates: the FFW still acts


def test_flops_per_media_match_the_flop_counter() -> None:
    from torch.nn.attention import SDPBackend, sdpa_kernel
    from torch.utils.flop_counter import FlopCounterMode

    lm = _lm(layers=2)
    bridge = _bridge(lm, attach=False)
    feats = VisionFeatures((torch.randn(3, 6, 32),), (1,), (2, 3), 32)  # one media item of 3 frames
    # the math backend: the counter does not see the matmuls of the fused CPU kernel
    with FlopCounterMode(display=False) as counter, torch.no_grad(), sdpa_kernel(SDPBackend.MATH):
        memory = bridge.encode({"tiny": feats}, num_frames=3)
        for block in bridge.xattn.values():
            block.attn.kv(memory)
    assert counter.get_total_flops() == bridge.flops_per_media(3)
