"""Benchmark cases of the inject bridges: Flamingo's gated xattn-dense block and a Hyper Attention layer.

The timed unit is the module inserted into the LM (its cost scales with the text); the per-media FLOPs checked are the
bridge's own (``encode`` plus every inserted module's K/V projection of the visual memory).
"""

from __future__ import annotations

import torch

from benchmarks.case import Case, attn_impl, make_features, pick_size, prepare, register, size_table
from bridges.base import BridgeIO, EncoderInfo, InjectionContext, LMInfo


def _interleaved_mask(batch: int, length: int, media: int, tokens: int, device: torch.device) -> torch.Tensor:
    """``(B, L, M * tokens)`` bool: each text position sees only the most recent of ``M`` evenly placed media; the
    first positions precede every media and see nothing (Flamingo's immediate-media masking)."""
    first = min(4, length - 1)
    starts = first + torch.arange(media) * max(1, (length - first) // media)
    ends = torch.cat([starts[1:], torch.tensor([length])])
    t = torch.arange(length)[:, None]
    per_media = (t >= starts[None]) & (t < ends[None])  # (L, M)
    return per_media.repeat_interleave(tokens, dim=1)[None].expand(batch, -1, -1).contiguous().to(device)


# perceiver: (depth, heads, dim_head) of the resampler whose FLOPs the bridge declares (not timed)
_FLAMINGO = size_table(
    "dim heads ffn dv latents batch text media perceiver grid",
    tiny=(64, 4, 96, 32, 8, 2, 16, 2, (1, 2, 16), 4),
    small=(512, 8, 1408, 384, 32, 2, 256, 2, (2, 6, 64), 16),
    medium=(1024, 16, 2816, 1024, 64, 2, 256, 2, (2, 8, 64), 16),
)


@register("flamingo")
def flamingo_case(size: str, device: torch.device) -> Case:
    from transformers import IdeficsConfig
    from transformers.models.idefics.modeling_idefics import IdeficsGatedCrossAttentionLayer

    from bridges.flamingo import FlamingoBridge, FlamingoConfig

    s = pick_size(_FLAMINGO, size)
    torch.manual_seed(0)
    dim, heads = s["dim"], s["heads"]
    config = IdeficsConfig(
        hidden_size=dim,
        num_attention_heads=heads,
        intermediate_size=s["ffn"],
        hidden_act="silu",
        alpha_type="float",
        vision_config={"embed_dim": s["dv"]},
        rms_norm_eps=1e-6,
    )
    config._attn_implementation = "sdpa"  # what IdeficsModel picks by default; a bare layer would get None (eager)
    ref = IdeficsGatedCrossAttentionLayer(config, layer_idx=0)
    with torch.no_grad():  # the gates start at 0; open them so both branches reach the output
        ref.alpha_cross_attn.fill_(0.7)
        ref.alpha_dense.fill_(-0.4)
    depth, p_heads, p_dim_head = s["perceiver"]
    ours_config = FlamingoConfig(
        perceiver_depth=depth,
        perceiver_heads=p_heads,
        perceiver_dim_head=p_dim_head,
        num_latents=s["latents"],
        xattn_layers=[0],
        xattn_heads=heads,
        xattn_dim_head=dim // heads,
        ff_mult=s["ffn"] / dim,
        ff_activation="swiglu",
        norm="rmsnorm",
        norm_eps=1e-6,
        fused_kv=True,
    )
    io = BridgeIO((EncoderInfo("vision", s["dv"], (s["grid"],) * 2, 4),), LMInfo(dim, 1, heads, heads, dim // heads))
    bridge = FlamingoBridge(ours_config, io)
    block = bridge.xattn["0"]
    block.load_idefics_state_dict(ref.state_dict())
    prepare(ref, bridge, device=device)
    b, length, m, r = s["batch"], s["text"], s["media"], s["latents"]
    g = torch.Generator().manual_seed(1)
    y = torch.randn(b, length, dim, generator=g).to(device)
    media = torch.randn(b, m * r, s["dv"], generator=g).to(device)
    mask = _interleaved_mask(b, length, m, r, device)
    additive = torch.zeros(mask.shape, device=device).masked_fill(~mask, torch.finfo(torch.float32).min)[:, None]
    gate = mask.any(-1).float()
    feats = make_features(bridge, io, b * m, device)

    def run_flops() -> list[torch.Tensor]:
        memory = bridge.encode(feats)
        return [blk.attn.kv(memory)[0] for blk in bridge.xattn.values()]

    return Case(
        name="flamingo",
        what=f"gated xattn-dense block d={dim}, text {b}x{length} attending to {m} media x {r} latents "
        f"(immediate-media mask), SwiGLU {s['ffn']}",
        ours=block,
        run_ours=lambda: block.gated(y, block.attn.kv(media), mask),
        num_media=b * m,
        declared_flops_per_media=bridge.flops_per_media(),
        run_flops=run_flops,
        reference=ref,
        run_reference=lambda: ref(
            y, image_hidden_states=media, image_attention_mask=additive, cross_attention_gate=gate
        ),
        reference_name="transformers IdeficsGatedCrossAttentionLayer",
        notes=[
            (
                f"flamingo: FLOPs per media are the bridge's (a {depth}-layer perceiver + the block's K/V of the "
                "latents); the timed unit is the block alone (ours with fused K/V, the reference with separate K/V)"
            ),
            f"flamingo reference attention implementation: {attn_impl(ref)}",
        ],
    )


_HYPER = size_table(
    "dim heads kv_heads ffn dv grid batch text media",
    tiny=(64, 4, 2, 96, 32, 4, 2, 16, 2),
    small=(512, 8, 2, 1408, 384, 12, 2, 256, 2),
    medium=(1024, 16, 4, 2816, 1024, 16, 2, 256, 2),
)


@register("hyper_attention")
def hyper_attention_case(size: str, device: torch.device) -> Case:
    from bridges.hyper_attention import HyperAttentionBridge, HyperAttentionConfig
    from llm_adapters import LMAdapter, LMConfig

    s = pick_size(_HYPER, size)
    lm_fields = {
        "hidden_size": s["dim"],
        "intermediate_size": s["ffn"],
        "num_attention_heads": s["heads"],
        "num_key_value_heads": s["kv_heads"],
        "num_hidden_layers": 1,
        "max_position_embeddings": 4096,
    }
    adapters = []
    for _ in range(2):  # the same weights twice: one LM gets the HATB, the other stays bare (the baseline)
        torch.manual_seed(0)
        adapters.append(LMAdapter(LMConfig(model_type="qwen2", config=lm_fields)))
    lm, bare = adapters
    torch.manual_seed(1)
    io = BridgeIO((EncoderInfo("vision", s["dv"], (s["grid"],) * 2, 4),), lm.info)
    bridge = HyperAttentionBridge(HyperAttentionConfig(hyper_layers=[0]), io)
    lm.attach(bridge.injections(lm), bridge.slot)
    prepare(lm, bare, bridge, device=device)
    b, length, m = s["batch"], s["text"], s["media"]
    g = torch.Generator().manual_seed(2)
    ids = torch.randint(0, lm.info.vocab_size or 100, (b, length), generator=g).to(device)
    feats = make_features(bridge, io, b * m, device)
    # media m of every sample at evenly spaced positions, after a few text-only tokens
    positions = (min(4, length - 1) + torch.arange(m) * max(1, (length - 4) // m)).repeat(b).to(device)
    media_to_sample = torch.arange(b).repeat_interleave(m).to(device)
    query_positions = torch.arange(length, device=device).expand(b, length)

    def context(memory: torch.Tensor) -> InjectionContext:
        return InjectionContext(memory, media_to_sample, positions, positions, query_positions=query_positions)

    def run_ours() -> torch.Tensor:
        with bridge.slot.use(context(bridge.encode(feats))):
            return lm.model.model(input_ids=ids, use_cache=False).last_hidden_state

    def run_flops() -> list[torch.Tensor]:
        memory = bridge.encode(feats)
        return [layer.visual_kv(memory, positions)[0] for layer in bridge.hyper.values()]

    return Case(
        name="hyper_attention",
        what=f"projector + 1 Qwen2 layer d={s['dim']} ({s['heads']}/{s['kv_heads']} heads) with HATB, text "
        f"{b}x{length}, {m} images x {s['grid'] ** 2} patches per sample",
        ours=bridge,
        run_ours=run_ours,
        num_media=b * m,
        declared_flops_per_media=bridge.flops_per_media(),
        run_flops=run_flops,
        no_reference="mPLUG-Owl3 has no installed implementation (no transformers model, no PyPI package)",
        baseline=(
            "bare Qwen2 layer (no images)",
            lambda: bare.model.model(input_ids=ids, use_cache=False).last_hidden_state,
        ),
        notes=[
            (
                f"hyper_attention: LM attention implementation {attn_impl(lm.model)}; the LM is frozen, so fwd+bwd "
                "computes gradients for the projector and the HATB only"
            )
        ],
    )
