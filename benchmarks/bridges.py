"""Benchmark cases of the prefix bridges, each beside the installed reference holding the same weights.

A :class:`~benchmarks.case.Case` is a ready-to-call pair of computations (ours and, where one is installed, the
reference's) on the same inputs, plus what is needed to check the bridge's declared FLOPs. All the cases (the inject
bridges' are in :mod:`benchmarks.inject`), in report order:

==========================  =======================================================  ==============================
case                        timed computation                                        reference (same weights)
==========================  =======================================================  ==============================
``mlp``                     LLaVA projector over N images                            ``LlavaMultiModalProjector``
``qformer``                 ln_vision -> Q-Former -> projection                      ``Blip2QFormerModel`` + queries
``qformer_instruct``        same, with an instruction per image                      ``InstructBlipQFormerModel``
``perceiver``               Perceiver resampler (IDEFICS layout) -> projection       ``IdeficsPerceiverResampler``
``eagle``                   3 experts -> common grid -> channel concat -> MLP        none installed
``mmfuser``                 deformable fuser (cross + self step) -> MLP              fuser composed from
                                                                                     ``DeformableDetrMultiscale...``
``flamingo``                one GATED XATTN-DENSE block (IDEFICS layout)             ``IdeficsGatedCrossAttentionLayer``
``hyper_attention``         projector + one Qwen2 layer with a HATB                  none installed
==========================  =======================================================  ==============================

Sizes (values in the ``size_table`` of each case): ``tiny`` (the test), ``small`` (widths 256-512, ~1-2 min for all
cases on one core), ``medium`` (widths 768-1024, a few layers, ~2.5-4 min).
"""

from __future__ import annotations

import warnings
from typing import Any

import torch
from torch import nn

from benchmarks.case import (
    Case,
    attn_impl,
    bundle,
    make_features,
    pick_size,
    prepare,
    register,
    size_table,
)
from bridges.base import BridgeIO, EncoderInfo, LMInfo

# ---- prefix bridges -------------------------------------------------------------------------------------------------

_MLP = size_table(
    "dv dlm grid n",
    tiny=(32, 64, 4, 2),
    small=(512, 1024, 16, 4),
    medium=(1024, 2048, 24, 1),
)


@register("mlp")
def mlp_case(size: str, device: torch.device) -> Case:
    from transformers import CLIPVisionConfig, LlamaConfig, LlavaConfig
    from transformers.models.llava.modeling_llava import LlavaMultiModalProjector

    from bridges.mlp import MLPBridge

    s = pick_size(_MLP, size)
    torch.manual_seed(0)
    config = LlavaConfig(
        vision_config=CLIPVisionConfig(hidden_size=s["dv"], num_attention_heads=4),
        text_config=LlamaConfig(hidden_size=s["dlm"], num_attention_heads=4),
    )
    ref = LlavaMultiModalProjector(config)
    io = BridgeIO((EncoderInfo("vision", s["dv"], (s["grid"],) * 2, 4),), LMInfo(s["dlm"]))
    bridge = MLPBridge.from_reference(ref, io=io)
    prepare(ref, bridge, device=device)
    feats = make_features(bridge, io, s["n"], device)
    x = feats["vision"].hidden[0]
    return Case(
        name="mlp",
        what=f"mlp2x_gelu over {s['grid'] ** 2} patches x {s['n']} image(s), {s['dv']} -> {s['dlm']}",
        ours=bridge,
        run_ours=lambda: bridge(feats),
        num_media=s["n"],
        declared_flops_per_media=bridge.flops_per_media(),
        reference=ref,
        run_reference=lambda: ref(x),
        reference_name="transformers LlavaMultiModalProjector",
    )


_QFORMER = size_table(
    "hidden layers heads ffn queries dv grid dlm n instr",
    tiny=(32, 2, 4, 64, 8, 48, 4, 64, 2, 5),
    small=(256, 4, 4, 1024, 32, 384, 16, 512, 4, 16),
    medium=(768, 4, 12, 3072, 32, 1024, 16, 2048, 2, 24),
)


def _qformer_case(size: str, device: torch.device, instruct: bool) -> Case:
    from transformers import Blip2QFormerConfig, Blip2QFormerModel, InstructBlipQFormerConfig, InstructBlipQFormerModel

    from bridges.qformer import QFormerBridge

    s = pick_size(_QFORMER, size)
    torch.manual_seed(0)
    config_cls, model_cls = (
        (InstructBlipQFormerConfig, InstructBlipQFormerModel) if instruct else (Blip2QFormerConfig, Blip2QFormerModel)
    )
    vocab = 1000
    ref = model_cls(
        config_cls(
            hidden_size=s["hidden"],
            num_hidden_layers=s["layers"],
            num_attention_heads=s["heads"],
            intermediate_size=s["ffn"],
            encoder_hidden_size=s["dv"],
            cross_attention_frequency=2,
            vocab_size=vocab,
            max_position_embeddings=64,
        )
    )
    query_tokens = nn.Parameter(torch.randn(1, s["queries"], s["hidden"]) * 0.02)  # Blip2Model's query_tokens
    ln_vision, projection = nn.LayerNorm(s["dv"], eps=1e-6), nn.Linear(s["hidden"], s["dlm"])
    io = BridgeIO((EncoderInfo("vision", s["dv"], (s["grid"],) * 2, 4),), LMInfo(s["dlm"]))
    bridge = QFormerBridge.from_reference(ref, query_tokens, projection, ln_vision=ln_vision, io=io)
    modules = {"qformer": ref, "ln_vision": ln_vision, "projection": projection}
    reference = bundle(modules, {"query_tokens": query_tokens})
    prepare(reference, bridge, device=device)
    n, q = s["n"], s["queries"]
    feats = make_features(bridge, io, n, device)  # CLS + patches, as BLIP-2
    image = feats["vision"].hidden[0]
    g = torch.Generator().manual_seed(1)
    ids = torch.randint(1, vocab, (n, s["instr"]), generator=g).to(device)
    mask = torch.ones_like(ids)
    full_mask = torch.cat([torch.ones(n, q, dtype=mask.dtype, device=device), mask], dim=1)
    instruction = (ids, mask) if instruct else None

    def run_reference() -> torch.Tensor:
        kwargs = {"input_ids": ids, "attention_mask": full_mask} if instruct else {}
        # Blip2Model expands the queries; a copy here, since a view of a parameter made under no_grad trips the
        # module tracker of FlopCounterMode
        queries = query_tokens.repeat(n, 1, 1)
        out = ref(query_embeds=queries, encoder_hidden_states=ln_vision(image), **kwargs)
        return projection(out.last_hidden_state[:, :q])

    name = "qformer_instruct" if instruct else "qformer"
    extra = f", instruction {s['instr']} tokens" if instruct else ""
    return Case(
        name=name,
        what=f"{s['layers']}-layer Q-Former d={s['hidden']}, {q} queries x {n} image(s) of "
        f"{s['grid'] ** 2 + 1} tokens{extra}",
        ours=bridge,
        run_ours=lambda: bridge(feats, instruction=instruction),
        num_media=n,
        declared_flops_per_media=bridge.flops_per_media(instruction_len=s["instr"] if instruct else 0),
        reference=reference,
        run_reference=run_reference,
        reference_name=f"transformers {model_cls.__name__} + query tokens (+ ln_vision, projection)",
        notes=[f"{name} reference attention implementation: {attn_impl(ref)}"],
    )


@register("qformer")
def qformer_case(size: str, device: torch.device) -> Case:
    return _qformer_case(size, device, instruct=False)


@register("qformer_instruct")
def qformer_instruct_case(size: str, device: torch.device) -> Case:
    return _qformer_case(size, device, instruct=True)


_PERCEIVER = size_table(
    "dim depth heads dim_head latents grid dlm n",
    tiny=(32, 1, 2, 16, 8, 4, 64, 2),
    small=(384, 2, 6, 64, 32, 16, 512, 4),
    medium=(1024, 2, 8, 64, 64, 16, 2048, 2),
)


@register("perceiver")
def perceiver_case(size: str, device: torch.device) -> Case:
    from transformers import IdeficsConfig
    from transformers.models.idefics.perceiver import IdeficsPerceiverResampler

    from bridges.perceiver import PerceiverBridge

    s = pick_size(_PERCEIVER, size)
    torch.manual_seed(0)
    config = IdeficsConfig(vision_config={"embed_dim": s["dim"]}, perceiver_config={"qk_layer_norms_perceiver": False})
    ref = IdeficsPerceiverResampler(config, s["dim"], s["depth"], s["heads"], s["dim_head"], s["latents"])
    io = BridgeIO((EncoderInfo("vision", s["dim"], (s["grid"],) * 2, 4),), LMInfo(s["dlm"]))
    bridge = PerceiverBridge.from_reference(ref, io)
    prepare(ref, bridge, device=device)
    feats = make_features(bridge, io, s["n"], device)
    x = feats["vision"].hidden[0]
    return Case(
        name="perceiver",
        what=f"{s['depth']}-layer resampler d={s['dim']}, {s['latents']} latents x {s['n']} image(s) of "
        f"{s['grid'] ** 2} patches, linear -> {s['dlm']}",
        ours=bridge,
        run_ours=lambda: bridge(feats),
        num_media=s["n"],
        declared_flops_per_media=bridge.flops_per_media(),
        reference=bundle({"resampler": ref, "projector": bridge.projector}),
        run_reference=lambda: bridge.projector(ref(x)),
        reference_name="transformers IdeficsPerceiverResampler (+ our projector, shared)",
    )


# experts: (name, width, grid side, pixel_unshuffle factor); the first expert's grid is the common grid
_EAGLE = size_table(
    "experts dlm n",
    tiny=([("a", 32, 4, 1), ("b", 8, 8, 2), ("c", 16, 2, 1)], 64, 2),
    small=([("clip", 384, 16, 1), ("sam", 64, 32, 2), ("conv", 512, 12, 1)], 1024, 2),
    medium=([("clip", 1024, 16, 1), ("sam", 256, 32, 2), ("conv", 1536, 12, 1)], 2048, 2),
)


@register("eagle")
def eagle_case(size: str, device: torch.device) -> Case:
    from bridges.eagle import EagleBridge, EagleBridgeConfig

    s = pick_size(_EAGLE, size)
    torch.manual_seed(0)
    encoders = tuple(EncoderInfo(name, width, (side, side), 4) for name, width, side, _ in s["experts"])
    io = BridgeIO(encoders, LMInfo(s["dlm"]))
    unshuffle = {name: u for name, _, _, u in s["experts"] if u > 1}
    bridge = EagleBridge(EagleBridgeConfig(pixel_unshuffle=unshuffle), io)
    prepare(bridge, device=device)
    feats = make_features(bridge, io, s["n"], device)
    experts = ", ".join(
        f"{name} {width}ch {side}^2" + (f" unshuffle {u}" if u > 1 else "") for name, width, side, u in s["experts"]
    )
    return Case(
        name="eagle",
        what=f"{experts} -> {bridge.grid[0]}^2 grid, concat {sum(bridge.widths)}ch -> mlp2x_gelu -> {s['dlm']}, "
        f"x {s['n']} image(s)",
        ours=bridge,
        run_ours=lambda: bridge(feats),
        num_media=s["n"],
        declared_flops_per_media=bridge.flops_per_media(),
        no_reference="Eagle (NVlabs/EAGLE) has no installable package and no transformers model",
    )


_MMFUSER = size_table(
    "width layers heads points grid dlm n",
    tiny=(32, 8, 4, 2, 4, 64, 2),
    small=(384, 8, 8, 4, 16, 1024, 2),
    medium=(1024, 12, 16, 4, 16, 2048, 1),
)


def _deformable_reference(width: int, levels: int, heads: int, points: int) -> nn.Module:
    from transformers import DeformableDetrConfig
    from transformers.models.deformable_detr.modeling_deformable_detr import (
        DeformableDetrMultiscaleDeformableAttention,
    )

    config = DeformableDetrConfig(
        d_model=width, num_feature_levels=levels, disable_custom_kernels=True, use_pretrained_backbone=False
    )
    with warnings.catch_warnings():  # its advice on head widths concerns the authors' CUDA kernel, unused here
        warnings.filterwarnings("ignore", message=".*power of 2.*")
        ref = DeformableDetrMultiscaleDeformableAttention(config, num_heads=heads, n_points=points)
    with torch.no_grad():  # the reference init zeroes these weights: make offsets and weights depend on the query
        ref.sampling_offsets.weight.normal_(0.0, 0.02)
        ref.attention_weights.weight.normal_(0.0, 0.02)
    return ref


@register("mmfuser")
def mmfuser_case(size: str, device: torch.device) -> Case:
    from bridges.common.deformable import grid_sample_flop_mapping, reference_points_grid
    from bridges.mmfuser import MMFuserBridge, MMFuserConfig

    s = pick_size(_MMFUSER, size)
    torch.manual_seed(0)
    grid = (s["grid"],) * 2
    io = BridgeIO((EncoderInfo("vision", s["width"], grid, s["layers"]),), LMInfo(s["dlm"]))
    bridge = MMFuserBridge(MMFuserConfig(num_heads=s["heads"], num_points=s["points"]), io)
    fuser, levels = bridge.fuser, len(bridge.layers) - 1
    cross_ref = _deformable_reference(s["width"], levels, s["heads"], s["points"])
    self_ref = _deformable_reference(s["width"], 1, s["heads"], s["points"])
    fuser.cross_attn.load_state_dict(cross_ref.state_dict())
    fuser.self_attn.load_state_dict(self_ref.state_dict())
    with torch.no_grad():  # gammas start at 0 (identity fuser): open them so the parity check sees the attention
        fuser.gamma1.normal_(0.5, 0.1)
        fuser.gamma2.normal_(0.5, 0.1)
    prepare(bridge, cross_ref, self_ref, device=device)
    n = s["n"]
    feats = make_features(bridge, io, n, device)
    vf = feats["vision"]
    points = reference_points_grid(*grid, device=device)  # (1, h*w, 1, 2)
    cross_kw = _deformable_kwargs([grid] * levels, points.expand(n, -1, levels, -1), device)
    self_kw = _deformable_kwargs([grid], points.expand(n, -1, 1, -1), device)

    def run_reference() -> torch.Tensor:
        """MMFuser's ``MSCrossAttnBlock`` + projector, with transformers' deformable attention in both steps."""
        tokens = [vf.layer(i)[:, vf.num_prefix :] for i in bridge.layers]
        query, kv = fuser.query_norm(tokens[-1]), fuser.feat_norm(torch.cat(tokens[:-1], dim=1))
        attn, _ = cross_ref(hidden_states=query, encoder_hidden_states=kv, **cross_kw)
        a1 = fuser.norm1(attn)
        refined, _ = self_ref(hidden_states=a1, encoder_hidden_states=a1, **self_kw)
        return bridge.projector(tokens[-1] + fuser.gamma1 * (attn + fuser.gamma2 * refined))

    return Case(
        name="mmfuser",
        what=f"fuser d={s['width']} ({levels} levels + self step, {s['heads']} heads x {s['points']} points) on "
        f"{s['grid'] ** 2} patches -> mlp2x_gelu -> {s['dlm']}, x {n} image(s)",
        ours=bridge,
        run_ours=lambda: bridge(feats),
        num_media=n,
        declared_flops_per_media=bridge.flops_per_media(),
        reference=bundle(
            {
                "cross": cross_ref,
                "self": self_ref,
                "query_norm": fuser.query_norm,
                "feat_norm": fuser.feat_norm,
                "norm1": fuser.norm1,
                "projector": bridge.projector,
            },
            {"gamma1": fuser.gamma1, "gamma2": fuser.gamma2},
        ),
        run_reference=run_reference,
        reference_name="MSCrossAttnBlock composed from transformers DeformableDetrMultiscaleDeformableAttention "
        "(norms, gammas and projector shared with ours)",
        flop_mapping=grid_sample_flop_mapping(),
        notes=[
            (
                "mmfuser: MMFuser's own code is not installable; its deformable attention is Deformable-DETR's, which "
                "transformers ships (pure PyTorch on CPU, no custom kernel)"
            )
        ],
    )


def _deformable_kwargs(shapes: list[tuple[int, int]], points: torch.Tensor, device: torch.device) -> dict[str, Any]:
    sizes = torch.tensor([h * w for h, w in shapes], device=device)
    return {
        "reference_points": points,
        "spatial_shapes": torch.tensor(shapes, device=device),
        "spatial_shapes_list": shapes,
        "level_start_index": torch.cat([sizes.new_zeros(1), sizes.cumsum(0)[:-1]]),
    }
