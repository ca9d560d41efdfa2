"""Flamingo: a Perceiver Resampler per media item and GATED XATTN-DENSE blocks inserted before frozen LM layers.

Alayrac et al., *Flamingo: a Visual Language Model for Few-Shot Learning* (2022); reference code OpenFlamingo
(``open_flamingo/src/helpers.py``, ``flamingo_lm.py``) and transformers' IDEFICS. Spec: BRIDGES.md section 1.

* :meth:`FlamingoBridge.encode`: ``(N_media * F, P, Dv)`` features -> resampler (frame embeddings for video) ->
  memory ``(N_media, R, Dv)``.
* :meth:`FlamingoBridge.injections`: one :class:`GatedXAttnDenseBlock` before every chosen LM layer:
  ``y += tanh(a_x) * XAttn(LN(y), memory)`` then ``y += tanh(a_d) * FFW(y)``, both gates 0 at init, so the LM is
  bit-identical at init (with ``gate='none'``, the ablation "no tanh gating", both residuals are added ungated and
  the LM changes at once). A token attends only to the most recent media at or before it (default) or to all of
  them; a token with no media before it gets exactly zero cross-attention output (in both modes: OpenFlamingo's
  all-previous mode instead spreads such a token's attention over every media; IDEFICS zeroes it as here).
* ``resampler``: ``perceiver`` (the paper) or the two alternatives of its ablation, ``mlp`` and ``transformer``
  (:mod:`bridges.flamingo_resamplers`), which keep all ``F * P`` visual tokens as the memory.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass

import torch
from torch import nn

from bridges.base import (
    BRIDGES,
    BridgeIO,
    BridgeNeeds,
    ContextSlot,
    InjectBridge,
    Injection,
    LMHost,
)
from bridges.common.gates import TanhGate, gate_parameters
from bridges.common.resampler import PerceiverResampler, make_activation
from bridges.common.checks import at_least
from bridges.flamingo_attention import GatedMLP, MaskedCrossAttention, _norm, media_and_mask
from bridges.flamingo_resamplers import MLPResampler, TransformerResampler
from bridges.common.features import check_frames
from encoders.registry import ConfigError
from encoders.base import VisionFeatures, resolve_layers

_PLACEMENTS = ("openflamingo", "idefics")
_MEDIA_ATTENTION = ("immediate", "all_previous")
_FF_ACTIVATIONS = ("gelu", "squared_relu", "relu", "swiglu")
_GATES = ("scalar", "vector", "none")
_RESAMPLERS = ("perceiver", "mlp", "transformer")


@dataclass
class FlamingoConfig:
    """Flamingo bridge config. Defaults follow OpenFlamingo (OF); the paper's values are given where they differ.

    Attributes:
        encoder_layer: encoder layer fed to the resampler (OF: the last block's patch tokens).
        perceiver_depth / perceiver_heads / perceiver_dim_head: resampler layers and attention (OF 6 / 8 / 64;
            paper 6 / 16 / 128).
        num_latents: latents ``R`` per media item (64 in both).
        perceiver_ff_mult / perceiver_activation: resampler FFW (OF 4 / ``gelu``; paper ``squared_relu``).
        resampler: ``perceiver`` (paper, OF), or the paper's ablation alternatives ``mlp`` (per-token residual FFWs)
            and ``transformer`` (plain self-attention layers over the visual tokens), both with the ``perceiver_*``
            depth/heads/FFW sizes and no token reduction (:mod:`bridges.flamingo_resamplers`).
        max_num_frames: if set, learned per-frame embeddings for video (paper); OF has none (images only).
        cross_attn_every_n_layers: one gated block every n LM layers (OF-3B 1, OF-9B 4; paper 3B 1).
        placement: ``openflamingo`` puts blocks before layers ``i`` with ``(i + 1) % n == 0`` (3, 7, ... for n=4);
            ``idefics`` before layers with ``i % n == 0`` (0, 4, ...).
        xattn_layers: explicit LM layer indices (overrides the two fields above; e.g. one block in the middle).
        xattn_heads / xattn_dim_head: cross-attention heads (OF 8 x 64; paper H x 128 with H the LM's heads).
        ff_mult: width multiplier of the block's FFW (4 in both).
        ff_activation: ``gelu`` (OF), ``squared_relu`` (paper), ``relu``, or ``swiglu`` (IDEFICS' gated SiLU MLP).
        norm / norm_eps: ``layernorm`` (OF, with bias) or ``rmsnorm`` (IDEFICS) before the xattn and the FFW.
        fused_kv: one ``to_kv`` projection split K-then-V (OF) or separate ``to_k``/``to_v`` (IDEFICS).
        gate: ``scalar`` tanh gates (OF, IDEFICS ``float``), ``vector`` (one per channel, IDEFICS ``vector``) or
            ``none`` (paper Table 3 "no tanh gating": both residuals added ungated, no gate parameters).
        media_attention: ``immediate`` (paper and OF default) or ``all_previous``.
    """

    encoder_layer: int = -1
    perceiver_depth: int = 6
    perceiver_heads: int = 8
    perceiver_dim_head: int = 64
    num_latents: int = 64
    perceiver_ff_mult: float = 4.0
    perceiver_activation: str = "gelu"
    resampler: str = "perceiver"
    max_num_frames: int | None = None
    cross_attn_every_n_layers: int = 1
    placement: str = "openflamingo"
    xattn_layers: list[int] | None = None
    xattn_heads: int = 8
    xattn_dim_head: int = 64
    ff_mult: float = 4.0
    ff_activation: str = "gelu"
    norm: str = "layernorm"
    norm_eps: float = 1e-5
    fused_kv: bool = True
    gate: str = "scalar"
    media_attention: str = "immediate"

    def __post_init__(self) -> None:
        """Range checks: a bad value fails here, naming the key, the value and the allowed range."""
        at_least(self, 1, "perceiver_depth", "perceiver_heads", "perceiver_dim_head", "num_latents",
                 "cross_attn_every_n_layers", "xattn_heads", "xattn_dim_head")
        at_least(self, 1, "max_num_frames", optional=True)
        for key, allowed in (("gate", _GATES), ("resampler", _RESAMPLERS)):
            value = getattr(self, key)
            if value not in allowed:
                raise ConfigError(
                    f"'bridge.{key}' = {value!r} is not an option of FlamingoConfig: allowed {', '.join(allowed)}. "
                    f"Fix: set bridge.{key} to one of them (default {getattr(FlamingoConfig, key)!r})."
                )


def xattn_layer_indices(config: FlamingoConfig, num_layers: int) -> list[int]:
    """The LM layers that get a gated block in front of them."""
    if config.xattn_layers is not None:
        bad = [i for i in config.xattn_layers if not 0 <= i < num_layers]
        if bad or not config.xattn_layers:
            raise ValueError(f"xattn_layers {config.xattn_layers} must be non-empty indices in [0, {num_layers})")
        return sorted(set(config.xattn_layers))
    n = config.cross_attn_every_n_layers
    if n < 1:
        raise ValueError(f"cross_attn_every_n_layers must be >= 1, got {n}")
    if config.placement == "openflamingo":
        layers = [i for i in range(num_layers) if (i + 1) % n == 0]
    elif config.placement == "idefics":
        layers = [i for i in range(num_layers) if i % n == 0]
    else:
        raise ValueError(f"Unknown placement '{config.placement}'. Use one of {_PLACEMENTS}.")
    if not layers:
        raise ConfigError(
            f"'bridge.cross_attn_every_n_layers' = {n} is out of range for an LM of {num_layers} layer(s): no "
            f"cross-attention block would be inserted. Allowed: 1 to {num_layers}. "
            f"Fix: set bridge.cross_attn_every_n_layers to {num_layers} or less."
        )
    return layers


def _gate(dim: int, kind: str) -> nn.Module:
    """A :class:`TanhGate`, or ``nn.Identity`` for ``kind='none'`` (the residual branch added ungated)."""
    return nn.Identity() if kind == "none" else TanhGate(dim, kind)  # type: ignore[arg-type]


def build_resampler(config: FlamingoConfig, width: int) -> nn.Module:
    """The configured resampler, ``(B, M, F, P, width) -> (B, M, T, width)``."""
    c = config
    if c.resampler == "mlp":
        return MLPResampler(width, c.perceiver_depth, c.perceiver_ff_mult, c.perceiver_activation, c.max_num_frames)
    if c.resampler == "transformer":
        return TransformerResampler(width, c.perceiver_depth, c.perceiver_heads, c.perceiver_dim_head,
                                    c.perceiver_ff_mult, c.perceiver_activation, c.max_num_frames)
    return PerceiverResampler(
        dim=width,
        depth=c.perceiver_depth,
        heads=c.perceiver_heads,
        dim_head=c.perceiver_dim_head,
        num_latents=c.num_latents,
        ff_mult=c.perceiver_ff_mult,
        activation=c.perceiver_activation,
        max_num_frames=c.max_num_frames,
    )


class GatedXAttnDenseBlock(nn.Module):
    """``y += tanh(a_x) * XAttn(y)``; ``y += tanh(a_d) * FFW(y)`` (OF ``GatedCrossAttentionBlock``).

    Called as an injected module (``forward(hidden_states)``) it reads the memory and the media positions from
    ``slot``; :meth:`gated` is the same computation on explicit inputs.
    """

    def __init__(
        self, dim: int, dim_visual: int, config: FlamingoConfig, slot: ContextSlot | None = None, layer: int = -1
    ) -> None:
        super().__init__()
        c = config
        self.slot, self.layer, self.media_attention = slot, layer, c.media_attention
        self.attn = MaskedCrossAttention(
            dim, dim_visual, c.xattn_heads, c.xattn_dim_head, c.norm, c.norm_eps, c.fused_kv
        )
        self.attn_gate = _gate(dim, c.gate)
        hidden = int(dim * c.ff_mult)
        if c.ff_activation == "swiglu":
            mlp: list[nn.Module] = [GatedMLP(dim, hidden)]
        else:
            act = make_activation(c.ff_activation)
            mlp = [nn.Linear(dim, hidden, bias=False), act, nn.Linear(hidden, dim, bias=False)]
        self.ff = nn.Sequential(_norm(c.norm, dim, c.norm_eps), *mlp)  # indices 0/1/3 as OF's FeedForward
        self.ff_gate = _gate(dim, c.gate)

    def gated(
        self, y: torch.Tensor, kv: tuple[torch.Tensor, torch.Tensor] | None, mask: torch.Tensor | None
    ) -> torch.Tensor:
        """``y (B, L, D)``; ``kv`` from :meth:`MaskedCrossAttention.kv` and ``mask (B, L, S)``; None without media."""
        if kv is not None:
            y = y + self.attn_gate(self.attn(y, kv, mask))
        return y + self.ff_gate(self.ff(y))

    def forward(self, hidden_states: torch.Tensor) -> torch.Tensor:
        """The injected call: ``(B, L_q, D) -> (B, L_q, D)`` with the context of the current forward."""
        if self.slot is None:
            raise RuntimeError("This block was built without a ContextSlot; call gated(y, kv, mask) instead.")
        ctx = self.slot.get()
        y = hidden_states.to(self.attn.to_q.weight.dtype)  # e.g. a bf16 LM with a float32 bridge
        media, mask = media_and_mask(ctx, hidden_states.shape[0], self.media_attention)
        if media is None:
            return self.gated(y, None, None).to(hidden_states.dtype)
        key = f"flamingo.kv.{self.layer}"
        cached = ctx.extras.get(key)
        if cached is None or cached[0] is not media:  # once per prompt during cached generation
            cached = (media, self.attn.kv(media.to(y.dtype)))
            ctx.extras[key] = cached
        return self.gated(y, cached[1], mask).to(hidden_states.dtype)

    def load_idefics_state_dict(self, state_dict: Mapping[str, torch.Tensor]) -> None:
        """Load an ``IdeficsGatedCrossAttentionLayer`` state dict (build with ``norm='rmsnorm'``, ``ff_activation=
        'swiglu'``, ``fused_kv=False``, heads x dim_head = hidden, ``ff_mult = intermediate / hidden``).

        Mapping (IDEFICS -> ours): ``input_layernorm -> attn.norm``, ``cross_attn.{q,k,v,o}_proj ->
        attn.to_{q,k,v,out}``, ``post_attention_layernorm -> ff.0``, ``mlp.* -> ff.1.*``, ``alpha_cross_attn ->
        attn_gate.alpha``, ``alpha_dense -> ff_gate.alpha`` (IDEFICS' ``(1, 1, D)`` vectors are flattened).
        """
        renames = {
            "input_layernorm": "attn.norm",
            "post_attention_layernorm": "ff.0",
            "mlp": "ff.1",
            "cross_attn.q_proj": "attn.to_q",
            "cross_attn.k_proj": "attn.to_k",
            "cross_attn.v_proj": "attn.to_v",
            "cross_attn.o_proj": "attn.to_out",
            "alpha_cross_attn": "attn_gate.alpha",
            "alpha_dense": "ff_gate.alpha",
        }
        out: dict[str, torch.Tensor] = {}
        for name, tensor in state_dict.items():
            if "rotary_emb" in name:
                continue
            prefix = next((p for p in renames if name == p or name.startswith(p + ".")), None)
            if prefix is None:
                raise ValueError(f"Unexpected IDEFICS key '{name}' (qk layer norms are not supported)")
            out[renames[prefix] + name[len(prefix) :]] = tensor.reshape(-1) if "alpha" in name else tensor
        if self.attn.fused_kv:
            out["attn.to_kv.weight"] = torch.cat((out.pop("attn.to_k.weight"), out.pop("attn.to_v.weight")))
        self.load_state_dict(out)


@BRIDGES.register("flamingo", FlamingoConfig)
class FlamingoBridge(InjectBridge):
    """Perceiver Resampler + GATED XATTN-DENSE blocks (see the module docstring).

    Parameter groups: ``bridge.perceiver`` (the resampler, whichever ``resampler`` is), ``bridge.xattn`` (the blocks
    without gates), ``bridge.gates`` (absent with ``gate='none'``).
    """

    def __init__(self, config: FlamingoConfig, io: BridgeIO) -> None:
        super().__init__(config, io)
        self.check_io()
        for field, value, allowed in (
            ("media_attention", config.media_attention, _MEDIA_ATTENTION),
            ("ff_activation", config.ff_activation, _FF_ACTIVATIONS),
        ):
            if value not in allowed:
                raise ValueError(f"Unknown {field} '{value}'. Use one of {allowed}.")
        if io.lm.num_layers < 1:
            raise ValueError("Flamingo needs LMInfo.num_layers to place its gated blocks; got 0.")
        self.encoder_layer = resolve_layers(config.encoder_layer, io.encoder.num_layers)[0]
        width = io.encoder.width
        self.perceiver = build_resampler(config, width)
        self.layer_indices = xattn_layer_indices(config, io.lm.num_layers)
        self.xattn = nn.ModuleDict(
            {str(i): GatedXAttnDenseBlock(io.lm.hidden_size, width, config, self.slot, i) for i in self.layer_indices}
        )

    @property
    def needs(self) -> BridgeNeeds:
        return BridgeNeeds(num_encoders=1, layers=(self.config.encoder_layer,))

    @property
    def extra_special_tokens(self) -> tuple[str, ...]:
        return ("<|endofchunk|>",)

    def num_visual_tokens(self, num_frames: int = 1) -> int:
        """The memory length per media item: the latents, or every visual token for ``mlp``/``transformer``."""
        if self.config.resampler == "perceiver":
            return self.config.num_latents
        h, w = self.io.encoder.grid
        return num_frames * h * w

    def flops_per_media(self, num_frames: int = 1) -> int:
        """Resampler plus every block's K/V projection of the memory (the text-side cost scales with text)."""
        h, w = self.io.encoder.grid
        c = self.config
        kv = 2 * self.num_visual_tokens(num_frames) * self.io.encoder.width * 2 * c.xattn_heads * c.xattn_dim_head
        return self.perceiver.flops(num_frames * h * w) + len(self.layer_indices) * kv

    def param_groups(self) -> dict[str, list[nn.Parameter]]:
        gates = {id(p) for p in gate_parameters(self)}
        groups = {
            "bridge.perceiver": list(self.perceiver.parameters()),
            "bridge.xattn": [p for p in self.xattn.parameters() if id(p) not in gates],
        }
        if gates:
            groups["bridge.gates"] = list(gate_parameters(self))
        return groups

    def gate_values(self) -> dict[str, float]:
        """Mean ``tanh(alpha)`` per block, for logging the gate openings over training (paper appendix figure)."""
        out = {}
        for i, block in self.xattn.items():
            if isinstance(block.attn_gate, TanhGate):
                out[f"xattn.{i}"] = float(block.attn_gate.value().detach().mean())
                out[f"dense.{i}"] = float(block.ff_gate.value().detach().mean())
        return out

    def tanh_gates(self) -> dict[str, TanhGate]:
        """Every tanh gate by ``"<attn|ff>/layer<i>"``, ``i`` the LM layer the block sits before (empty for
        ``gate='none'``); what the harness's gate log records as ``mean |tanh(alpha)|``."""
        out: dict[str, TanhGate] = {}
        for i, block in self.xattn.items():
            for kind, gate in (("attn", block.attn_gate), ("ff", block.ff_gate)):
                if isinstance(gate, TanhGate):
                    out[f"{kind}/layer{i}"] = gate
        return out

    def encode(self, features: Mapping[str, VisionFeatures], num_frames: int = 1) -> torch.Tensor:
        """``(N_media * F, P, Dv)`` patch tokens (media-major, frames inner) -> memory ``(N_media, R, Dv)``."""
        name = self.io.encoder.name
        if name not in features:
            raise KeyError(f"No features for encoder '{name}'; got {sorted(features)}.")
        feats = features[name]
        x = feats.layer(self.encoder_layer)[:, feats.num_prefix :].to(self.perceiver.norm.weight.dtype)
        check_frames(x.shape[0], num_frames)
        x = x.reshape(x.shape[0] // num_frames, 1, num_frames, *x.shape[1:])
        return self.perceiver(x)[:, 0]

    def injections(self, host: LMHost) -> list[Injection]:
        if host.info.hidden_size != self.io.lm.hidden_size or host.info.num_layers != self.io.lm.num_layers:
            raise ValueError(
                f"Flamingo was built for an LM with hidden {self.io.lm.hidden_size} and {self.io.lm.num_layers} layers "
                f"but the host has {host.info.hidden_size} and {host.info.num_layers}; build it from the host's LMInfo."
            )
        return [Injection(i, "before_layer", self.xattn[str(i)]) for i in self.layer_indices]


# the size presets (BRIDGES.md 1.7) live apart; importing them registers them
import bridges.flamingo_presets  # noqa: E402,F401
