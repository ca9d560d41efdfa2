"""mPLUG-Owl3's Hyper Attention: visual K/V inside a few LM self-attention layers, fused by an adaptive gate.

Ye et al., *mPLUG-Owl3: Towards Long Image-Sequence Understanding in Multi-Modal Large Language Models* (2024);
reference: the ``mPLUG/mPLUG-Owl3-7B-240728`` remote code (``modeling_hyper_qwen2.py``) and the 241101 release
(PaddleMIX port). Spec: BRIDGES.md section 6.

``encode``: patch tokens of one encoder layer -> projector -> memory ``(N_media, F*P, D_lm)``. The visual tokens never
enter the LM sequence. In each hyper layer (HATB) the decoder layer's own input norm, already applied to the text,
is applied to the memory too; the text query (with the text RoPE) is shared; new ``v_kv_proj`` gives visual K/V
with the LM's KV heads, whose keys get MI-RoPE (every patch of image ``n`` rotated to the position of its
``<image>`` token). Text at positions strictly after image ``n``'s token sees image ``n``. Self-attention context
``C_txt`` and cross-attention context ``C_img`` are fused per head, ``(1 - g) C_txt + g C_img`` with
``g = sigmoid(W_g C_txt + b_g)`` (about 0.5 at init, the reference), only where some image is visible, and the fused
context goes through the LM's own ``o_proj``. Other fusions: ``adaptive_zero`` (the adaptive gate times a
zero-initialised per-head tanh gate, so the LM is unchanged at init; a deviation, BRIDGES.md 6.6), ``static``
(per-channel ``sigmoid(gamma)``) and ``joint`` (241101: one softmax over ``[visual keys; text keys]``, no gate).
"""

from __future__ import annotations

import sys
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

import torch
import torch.nn.functional as F
from einops import rearrange, repeat
from torch import nn

from bridges.common.features import frames_to_media
from bridges.base import (
    BRIDGES,
    BridgeIO,
    BridgeNeeds,
    ContextSlot,
    EncoderInfo,
    InjectBridge,
    Injection,
    LMHost,
    LMInfo,
)
from bridges.common.gates import SigmoidGate, TanhGate, gate_parameters
from bridges.common.kv_cache import pop_cache
from bridges.common.media import MediaSlots
from bridges.common.projector import build_projector, projector_flops
from bridges.common.rotary import apply_rotary, rotate_at
from bridges.common.checks import at_least
from bridges.presets import BridgePreset, register_preset
from encoders.base import VisionFeatures, resolve_layers

SUPPORTED_FAMILIES = ("llama", "qwen2", "mistral")
_MI_ROPE = ("image_token", "after_image_token", "off")
_VISIBILITY = {"strict": "strictly_after", "inclusive": "all_previous"}
_FUSIONS = ("adaptive", "adaptive_zero", "static", "joint")


@dataclass
class HyperAttentionConfig:
    """Hyper Attention config. Defaults follow the paper and the 240728 code unless noted.

    Attributes:
        encoder_layer: encoder layer projected (reference: the penultimate, ``hidden_states[-2]``).
        projector: ``linear`` (240728: one Linear 1152 -> 3584) or ``mlp2x_gelu`` (241101).
        hyper_layers: 0-indexed LM layers with HATB; ``None`` = ``num_hyper_layers`` layers from layer 0 with stride
            ``L // n + 1``, shrunk until they fit (28 layers: 0, 8, 16, 24 as the reference's ``[1, 9, 17, 25]``).
        num_hyper_layers: how many layers the default placement uses (4).
        mi_rope: ``image_token`` (paper: the ``<image>`` token's RoPE position), ``after_image_token`` (240728 code:
            that position + 1), or ``off`` (no rotation of the visual keys).
        visibility: ``strict`` (240728: text strictly after the ``<image>`` token sees the image) or ``inclusive``
            (241101: the ``<image>`` token sees its own image).
        fusion: ``adaptive`` (240728 per-head gate), ``adaptive_zero``, ``static`` or ``joint`` (241101).
        init_std: std of the new Linear weights (Qwen2 ``initializer_range``; biases start at 0).
    """

    encoder_layer: int = -2
    projector: str = "linear"
    hyper_layers: list[int] | None = None
    num_hyper_layers: int = 4
    mi_rope: str = "image_token"
    visibility: str = "strict"
    fusion: str = "adaptive"
    init_std: float = 0.02

    def __post_init__(self) -> None:
        """Range checks: a bad value fails here, naming the key, the value and the allowed range."""
        if self.hyper_layers is None:
            at_least(self, 1, "num_hyper_layers")


def default_hyper_layers(num_layers: int, count: int) -> list[int]:
    """``count`` layers from layer 0, stride ``num_layers // count + 1`` shrunk until the last one fits."""
    count = max(1, min(count, num_layers))
    if count == 1:
        return [0]
    stride = min(num_layers // count + 1, (num_layers - 1) // (count - 1))
    return [i * stride for i in range(count)]


def gqa_attention(
    q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, mask: torch.Tensor, scale: float, dropout: float = 0.0
) -> torch.Tensor:
    """SDPA with fewer K/V heads than query heads and a bool mask; query rows with nothing visible get zeros.

    Args:
        q: ``(B, H, Lq, Dh)``; k, v: ``(B, H_kv, S, Dh)`` with query head ``j`` reading K/V head ``j // (H / H_kv)``
            (``transformers``' ``repeat_kv`` order); mask: ``(B, Lq, S)`` bool, True = may attend.

    Returns:
        ``(B, Lq, H, Dh)``.
    """
    group = q.shape[1] // k.shape[1]
    empty = ~mask.any(-1, keepdim=True)  # (B, Lq, 1)
    mask = mask | empty
    # fold the query heads of a group into the query axis: SDPA's fused kernels take masks but not GQA + mask
    qf = rearrange(q, "b (h g) l d -> b h (g l) d", g=group)
    mf = repeat(mask, "b l s -> b 1 (g l) s", g=group)
    out = F.scaled_dot_product_attention(qf, k, v, attn_mask=mf, dropout_p=dropout, scale=scale)
    out = rearrange(out, "b h (g l) d -> b l (h g) d", g=group)
    return out.masked_fill(empty[..., None], 0.0)


class HyperAttentionLayer(nn.Module):
    """The new parameters of one HATB and the ``replace_attention`` forward that uses the LM's own attention.

    Parameter names follow the reference: ``v_kv_proj`` (output channels laid out ``(kv_head, {K, V}, Dh)``) and
    ``gate_proj.0`` (``Linear(Dh, Dh)`` shared by all heads, then a sigmoid).
    """

    def __init__(self, io: BridgeIO, config: HyperAttentionConfig, slot: ContextSlot, layer: int) -> None:
        super().__init__()
        lm = io.lm
        self.slot, self.layer, self.config = slot, layer, config
        self.heads = lm.num_heads
        self.kv_heads = lm.num_kv_heads or lm.num_heads
        self.head_dim = lm.head_dim or lm.hidden_size // lm.num_heads
        self.v_kv_proj = nn.Linear(lm.hidden_size, 2 * self.kv_heads * self.head_dim)
        if config.fusion in ("adaptive", "adaptive_zero"):
            self.gate_proj = nn.Sequential(nn.Linear(self.head_dim, self.head_dim), nn.Sigmoid())
        if config.fusion == "adaptive_zero":
            self.gate_scale = TanhGate(self.heads, "vector")
        if config.fusion == "static":
            self.gate = SigmoidGate(self.heads * self.head_dim)
        for module in self.modules():
            if isinstance(module, nn.Linear):
                nn.init.normal_(module.weight, std=config.init_std)
                nn.init.zeros_(module.bias)
        self._lm: dict[str, Any] = {}  # the LM's modules we use but do not own (not submodules)

    def bind(self, host: LMHost) -> None:
        """Keep references to the host's input norm, q/k/v/o projections and rotary embedding for this layer."""
        rotary = host.rotary_embedding()
        if rotary is None and self.config.mi_rope != "off":
            raise ValueError(f"The {host.family} LM has no rotary embedding; use mi_rope='off'.")
        self._lm = {"norm": host.input_norm(self.layer), "qkvo": host.qkvo(self.layer), "rotary": rotary}

    def visual_kv(self, memory: torch.Tensor, rope_positions: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """``memory (N, P, D)`` -> shared norm -> ``k, v (N, H_kv, P, Dh)``, keys rotated by MI-RoPE."""
        kv = self.v_kv_proj(self._lm["norm"](memory))
        k, v = rearrange(kv, "n p (h s d) -> s n h p d", s=2, d=self.head_dim).unbind(0)
        if self.config.mi_rope != "off":
            offset = 1 if self.config.mi_rope == "after_image_token" else 0
            k = rotate_at(self._lm["rotary"], k, rope_positions + offset)
        return k, v

    def _padded_visual(self, ctx: Any, batch_size: int) -> tuple[torch.Tensor, ...]:
        """Visual K/V ``(B, H_kv, M*P, Dh)`` (once per prompt), mask ``(B, Lq, M*P)`` and ``has_image (B, Lq)``."""
        slots = ctx.extras.get("hyper.slots")
        if slots is None or slots[0] is not ctx.memory:
            slots = (ctx.memory, MediaSlots.build(ctx.media_to_sample, batch_size, ctx.memory.shape[0]))
            ctx.extras["hyper.slots"] = slots
        slots = slots[1]
        key = f"hyper.kv.{self.layer}"
        cached = ctx.extras.get(key)
        if cached is None or cached[0] is not ctx.memory:
            k, v = self.visual_kv(ctx.memory, ctx.media_rope_positions)
            cached = (ctx.memory, *(rearrange(slots.pad(t), "b m h p d -> b h (m p) d") for t in (k, v)))
            ctx.extras[key] = cached
        mode = _VISIBILITY[self.config.visibility]
        masked = ctx.extras.get(f"hyper.mask.{mode}")
        if masked is None or masked[0] is not ctx.query_positions:
            per_media = slots.pad_mask(ctx.media_mask(mode))  # (B, Lq, M)
            mask = repeat(per_media, "b l m -> b l (m p)", p=ctx.memory.shape[1])
            masked = (ctx.query_positions, mask, per_media.any(-1))
            ctx.extras[f"hyper.mask.{mode}"] = masked
        return cached[1], cached[2], masked[1], masked[2]

    def forward(self, attn: nn.Module, hidden_states: torch.Tensor, **kwargs: Any) -> tuple[torch.Tensor, None]:
        """Replaces ``attn(hidden_states, **kwargs)`` of a Llama-style layer; ``hidden_states`` are already normed."""
        ctx = self.slot.get()
        if ctx.memory.shape[0] == 0:
            return attn(hidden_states, **kwargs)
        cos, sin = kwargs.pop("position_embeddings")
        mask_txt = kwargs.pop("attention_mask", None)
        past = pop_cache(kwargs)
        b, length = hidden_states.shape[:2]
        q, k, v = (rearrange(p(hidden_states), "b l (h d) -> b h l d", d=self.head_dim) for p in self._lm["qkvo"][:3])
        q, k = apply_rotary(q, cos[:, None], sin[:, None]), apply_rotary(k, cos[:, None], sin[:, None])
        if past is not None:
            k, v = past.update(k, v, attn.layer_idx)
        k_img, v_img, mask_img, has_image = self._padded_visual(ctx, b)
        k_img, v_img = k_img.to(q.dtype), v_img.to(q.dtype)  # e.g. a bf16 LM with a float32 bridge
        dropout = getattr(attn, "attention_dropout", 0.0) if self.training else 0.0
        if self.config.fusion == "joint":
            mask = torch.cat((mask_img, _text_mask(mask_txt, ctx.query_positions, k.shape[2])), dim=-1)
            context = gqa_attention(q, torch.cat((k_img, k), 2), torch.cat((v_img, v), 2), mask, attn.scaling, dropout)
        else:
            # the LM's own attention code path, so rows that see no image stay bit-identical to the bare LM
            c_txt, _ = _attention_interface(attn)(
                attn,
                q,
                k,
                v,
                mask_txt,
                dropout=dropout,
                scaling=attn.scaling,
                sliding_window=getattr(attn, "sliding_window", None),
                **kwargs,
            )
            c_img = gqa_attention(q, k_img, v_img, mask_img, attn.scaling, dropout)
            g = self._gate_value(c_txt)
            context = torch.where(has_image[:, :, None, None], (1 - g) * c_txt + g * c_img, c_txt)
        return self._lm["qkvo"][3](context.reshape(b, length, -1)), None

    def _gate_value(self, c_txt: torch.Tensor) -> torch.Tensor:
        """``g`` broadcastable to ``(B, L, H, Dh)``."""
        if self.config.fusion == "static":
            return self.gate.value().view(self.heads, self.head_dim).to(c_txt.dtype)
        g = self.gate_proj(c_txt.to(self.gate_proj[0].weight.dtype))
        if self.config.fusion == "adaptive_zero":
            g = g * self.gate_scale.value()[:, None]
        return g.to(c_txt.dtype)


def _attention_interface(attn: nn.Module) -> Any:
    """The attention function the LM itself would call (``sdpa``, ``eager``, ...), so the text path is identical."""
    from transformers.modeling_utils import ALL_ATTENTION_FUNCTIONS

    eager = sys.modules[type(attn).__module__].eager_attention_forward
    return ALL_ATTENTION_FUNCTIONS.get_interface(attn.config._attn_implementation, eager)


def _text_mask(mask: torch.Tensor | None, query_positions: torch.Tensor, kv_len: int) -> torch.Tensor:
    """The LM's text mask as bool ``(B, Lq, Lk)``: HF's bool or additive 4-D mask, or causal when it passed None."""
    if mask is None:
        keys = torch.arange(kv_len, device=query_positions.device)
        return keys[None, None, :] <= query_positions[:, :, None]
    mask = mask[:, 0, :, :kv_len]
    return mask if mask.dtype == torch.bool else mask == 0


@BRIDGES.register("hyper_attention", HyperAttentionConfig)
class HyperAttentionBridge(InjectBridge):
    """Projector + HATB layers (see the module docstring).

    Parameter groups: ``bridge.projector``, ``bridge.hatb`` (``v_kv_proj`` and adaptive gates) and, for the
    ``adaptive_zero``/``static`` fusions, ``bridge.gates``.
    """

    def __init__(self, config: HyperAttentionConfig, io: BridgeIO) -> None:
        super().__init__(config, io)
        self.check_io()
        for field, value, allowed in (
            ("mi_rope", config.mi_rope, _MI_ROPE),
            ("visibility", config.visibility, tuple(_VISIBILITY)),
            ("fusion", config.fusion, _FUSIONS),
        ):
            if value not in allowed:
                raise ValueError(f"Unknown {field} '{value}'. Use one of {allowed}.")
        lm = io.lm
        if lm.num_layers < 1 or lm.num_heads < 1:
            raise ValueError("Hyper Attention needs LMInfo.num_layers and num_heads (and num_kv_heads, head_dim).")
        if lm.num_heads % (lm.num_kv_heads or lm.num_heads):
            raise ValueError(f"num_heads {lm.num_heads} is not a multiple of num_kv_heads {lm.num_kv_heads}.")
        layers = config.hyper_layers
        if layers is None:
            layers = default_hyper_layers(lm.num_layers, config.num_hyper_layers)
        if not layers or any(not 0 <= i < lm.num_layers for i in layers):
            raise ValueError(f"hyper_layers {layers} must be non-empty indices in [0, {lm.num_layers}).")
        self.layer_indices = sorted(set(layers))
        self.encoder_layer = resolve_layers(config.encoder_layer, io.encoder.num_layers)[0]
        self.projector = build_projector(config.projector, io.encoder.width, lm.hidden_size)
        self.hyper = nn.ModuleDict({str(i): HyperAttentionLayer(io, config, self.slot, i) for i in self.layer_indices})

    @property
    def needs(self) -> BridgeNeeds:
        return BridgeNeeds(num_encoders=1, layers=(self.config.encoder_layer,))

    def num_visual_tokens(self, num_frames: int = 1) -> int:
        h, w = self.io.encoder.grid
        return num_frames * h * w

    def flops_per_media(self, num_frames: int = 1) -> int:
        """Projector plus each hyper layer's visual K/V projection (the text-side attention scales with text)."""
        tokens, lm = self.num_visual_tokens(num_frames), self.io.lm
        kv_width = 2 * (lm.num_kv_heads or lm.num_heads) * (lm.head_dim or lm.hidden_size // lm.num_heads)
        proj = projector_flops(self.config.projector, self.io.encoder.width, lm.hidden_size, tokens)
        return proj + len(self.layer_indices) * 2 * tokens * lm.hidden_size * kv_width

    def param_groups(self) -> dict[str, list[nn.Parameter]]:
        gates = list(gate_parameters(self))
        ids = {id(p) for p in gates}
        groups = {
            "bridge.projector": list(self.projector.parameters()),
            "bridge.hatb": [p for p in self.hyper.parameters() if id(p) not in ids],
        }
        if gates:
            groups["bridge.gates"] = gates
        return groups

    def tanh_gates(self) -> dict[str, TanhGate]:
        """The zero-initialised per-head tanh gates by ``"attn/layer<i>"`` (``fusion=adaptive_zero`` only, where
        each scales its layer's sigmoid gate; empty for the other fusions, which have no tanh gate)."""
        return {f"attn/layer{i}": layer.gate_scale for i, layer in self.hyper.items() if hasattr(layer, "gate_scale")}

    def encode(self, features: Mapping[str, VisionFeatures], num_frames: int = 1) -> torch.Tensor:
        """``(N_media * F, P, Dv)`` patch tokens -> memory ``(N_media, F * P, D_lm)`` (frames laid end to end).

        The reference gives each video frame its own ``<image>`` token (time order then comes from MI-RoPE); with
        ``F > 1`` here all frames of a media item share its one position.
        """
        name = self.io.encoder.name
        if name not in features:
            raise KeyError(f"No features for encoder '{name}'; got {sorted(features)}.")
        feats = features[name]
        x = feats.layer(self.encoder_layer)[:, feats.num_prefix :].to(self.projector[0].weight.dtype)
        return frames_to_media(self.projector(x), num_frames)

    def injections(self, host: LMHost) -> list[Injection]:
        if not host.supports_attention_extension:
            raise ValueError(
                f"Hyper Attention extends the self-attention of Llama-style LMs ({', '.join(SUPPORTED_FAMILIES)}); "
                f"the '{host.family}' LM is not supported. Pick one of those families or another bridge."
            )
        info = host.info
        if (info.hidden_size, info.num_layers, info.num_kv_heads or info.num_heads) != (
            self.io.lm.hidden_size,
            self.io.lm.num_layers,
            self.io.lm.num_kv_heads or self.io.lm.num_heads,
        ):
            raise ValueError(f"Hyper Attention was built for LM {self.io.lm} but the host is {info}; rebuild it.")
        out = []
        for i in self.layer_indices:
            self.hyper[str(i)].bind(host)
            out.append(Injection(i, "replace_attention", self.hyper[str(i)]))
        return out


# ---- presets (BRIDGES.md 6.6-6.8) --------------------------------------------------------------------------------

_SIGLIP = EncoderInfo("siglip_so400m_384", 1152, (27, 27), 27)
_QWEN2_7B = BridgeIO((_SIGLIP,), LMInfo(3584, 28, 28, 4, 128, 151851, "qwen2"))
for _name, _over, _count, _expected, _source in (
    ("mplug_owl3_240728", {}, "bridge.hatb", 14_750_000, "BRIDGES.md 6.6 (4 x (v_kv_proj + gate_proj))"),
    ("mplug_owl3_240728_projector", {}, "bridge.projector", 4_130_000, "BRIDGES.md 6.1 (Linear 1152 -> 3584)"),
    (
        "mplug_owl3_241101",
        {"fusion": "joint", "visibility": "inclusive", "projector": "mlp2x_gelu"},
        "bridge.hatb",
        14_684_000,
        "BRIDGES.md 6.6-6.7 (4 x v_kv_proj 3.671M, no gate)",
    ),
):
    register_preset(BridgePreset("hyper_attention", _name, dict(_over), _QWEN2_7B, _expected, _source, _count))
register_preset(
    BridgePreset(
        "hyper_attention",
        "tiny",
        {"num_hyper_layers": 2},
        BridgeIO((EncoderInfo("tiny", 32, (4, 4), 2),), LMInfo(64, 2, 4, 2, 16, 128, "llama")),
    )
)
