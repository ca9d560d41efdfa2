"""Pixel shuffle (space-to-depth) of the patch grid, then a projector: Idefics3's connector (Laurençon et al.,
*Building and better understanding vision-language models*, 2024; transformers ``Idefics3Connector``) and the idea
behind InternVL's and SmolVLM's token reduction.

``(N_media * F, h*w, Dv)`` patch tokens -> each ``s x s`` block of the grid becomes one token of ``s*s*Dv``
channels, ordered ``(row in block, column in block, channel)`` exactly as ``Idefics3Connector.pixel_shuffle`` ->
``(N_media * F, (h/s)*(w/s), s*s*Dv)`` -> projector -> ``(N_media, F * num_tokens, D_lm)``. Nothing is averaged
away: every patch feature reaches the projector, only the token count drops by ``s*s``. Frames are images laid end
to end. Unlike transformers' version, non-square grids are accepted (``s`` must divide both sides).

InternVL's ``pixel_shuffle`` reaches the same tokens with another channel order (and a LayerNorm before its MLP,
``pre_norm``); its weights would need their input columns permuted, which :meth:`from_reference` does not do.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

import torch
from einops import rearrange
from torch import nn

from bridges.base import BRIDGES, BridgeIO, BridgeNeeds, EncoderInfo, LMInfo, PrefixBridge
from bridges.common.checks import at_least
from bridges.common.features import check_frames, encoder_features, layer_tokens
from bridges.common.projector import build_projector, projector_flops
from bridges.common.token_grid import shuffle_factor
from bridges.presets import BridgePreset, register_preset
from encoders.base import VisionFeatures, resolve_layers


@dataclass
class PixelShuffleBridgeConfig:
    """Config of the pixel-shuffle bridge (defaults = Idefics3's connector).

    Attributes:
        num_tokens: visual tokens per image, ``(h/s) * (w/s)`` for a factor ``s`` dividing both grid sides; the
            token-count sweep key. ``None`` = factor 2 (Idefics3's ``scale_factor``; 169 tokens from its 26 x 26
            grid [recall]). ``num_tokens = h*w`` (``s = 1``) is the ``mlp`` bridge.
        projector: ``linear`` (Idefics3's ``Idefics3SimpleMLP``) or ``mlp{k}x_gelu`` (InternVL's ``mlp1`` is
            ``mlp2x_gelu`` after a LayerNorm).
        bias: projector biases (Idefics3: none).
        pre_norm: LayerNorm over the ``s*s*Dv`` shuffled channels before the projector (InternVL).
        layer: encoder layer to shuffle (-1: Idefics3 takes the vision tower's last, post-layernormed, output).
    """

    num_tokens: int | None = None
    projector: str = "linear"
    bias: bool = False
    pre_norm: bool = False
    layer: int = -1

    def __post_init__(self) -> None:
        """Range check at config time (the grid check needs the encoder and runs when the bridge is built)."""
        at_least(self, 1, "num_tokens", optional=True)


def pixel_shuffle(tokens: torch.Tensor, grid: tuple[int, int], factor: int) -> torch.Tensor:
    """Space-to-depth: ``(N, h*w, C)`` -> ``(N, (h/s)*(w/s), s*s*C)``, channels ordered ``(dy, dx, c)``."""
    h, w = grid
    return rearrange(tokens, "n (h dy w dx) c -> n (h w) (dy dx c)", h=h // factor, dy=factor, w=w // factor, dx=factor)


@BRIDGES.register("pixel_shuffle", PixelShuffleBridgeConfig)
class PixelShuffleBridge(PrefixBridge):
    """``(N_media * F, h*w, Dv)`` -> space-to-depth by ``s`` -> projector -> ``(N_media, F * h*w/s^2, D_lm)``."""

    def __init__(self, config: PixelShuffleBridgeConfig, io: BridgeIO) -> None:
        super().__init__(config, io)
        self.check_io()
        h, w = io.encoder.grid
        requested = config.num_tokens if config.num_tokens is not None else (h // 2) * (w // 2)
        if config.num_tokens is None and (h % 2 or w % 2):
            raise ValueError(
                f"pixel_shuffle: the default factor 2 does not divide the {h} x {w} encoder grid; set num_tokens "
                f"(e.g. num_tokens={h * w} for factor 1)."
            )
        self.factor = shuffle_factor("pixel_shuffle", requested, io.encoder.grid)
        self.tokens_per_frame = requested
        self.absolute_layer = resolve_layers(config.layer, io.encoder.num_layers)[0]
        self.in_dim = io.encoder.width * self.factor**2
        self.norm = nn.LayerNorm(self.in_dim) if config.pre_norm else nn.Identity()
        self.projector = build_projector(config.projector, self.in_dim, io.lm.hidden_size, bias=config.bias)

    @property
    def needs(self) -> BridgeNeeds:
        return BridgeNeeds(num_encoders=1, layers=(self.config.layer,), needs_grid=True)

    def param_groups(self) -> dict[str, list[nn.Parameter]]:
        return {"bridge.projector": [*self.norm.parameters(), *self.projector.parameters()]}

    def num_visual_tokens(self, num_frames: int = 1) -> int:
        return num_frames * self.tokens_per_frame

    def flops_per_media(self, num_frames: int = 1) -> int:
        """The projector's matmuls (the shuffle is a reshape; the optional LayerNorm is not counted)."""
        tokens = self.num_visual_tokens(num_frames)
        return projector_flops(self.config.projector, self.in_dim, self.io.lm.hidden_size, tokens)

    def forward(
        self,
        features: Mapping[str, VisionFeatures],
        num_frames: int = 1,
        instruction: tuple[torch.Tensor, torch.Tensor] | None = None,
    ) -> torch.Tensor:
        feats = encoder_features(features, self.io.encoder.name)
        tokens = layer_tokens(feats, self.absolute_layer, dtype=self.projector[0].weight.dtype)
        check_frames(tokens.shape[0], num_frames)
        h, w = self.io.encoder.grid
        if tokens.shape[1] != h * w:
            raise ValueError(f"Expected {h} x {w} = {h * w} patch tokens, got {tokens.shape[1]}")
        x = self.projector(self.norm(pixel_shuffle(tokens, (h, w), self.factor)))
        return rearrange(x, "(n f) t d -> n (f t) d", f=num_frames)

    @classmethod
    def from_reference(
        cls, connector: nn.Module, io: BridgeIO | None = None, grid: tuple[int, int] = (26, 26), **overrides: Any
    ) -> PixelShuffleBridge:
        """A bridge holding the weights of transformers' ``Idefics3Connector`` (``scale_factor`` and
        ``modality_projection.proj``, a bias-free Linear, -> our ``projector.0``).

        ``io`` defaults to an encoder of width ``proj.in_features / s^2`` with patch ``grid`` (Idefics3-8B: SigLIP at
        364 px, 26 x 26 patches [recall]) and an LM as wide as the projection's output.
        """
        if not (hasattr(connector, "scale_factor") and hasattr(connector, "modality_projection")):
            raise TypeError(f"Cannot import a pixel-shuffle connector from {type(connector).__name__}")
        factor = int(connector.scale_factor)
        proj = connector.modality_projection.proj
        width, rest = divmod(proj.in_features, factor**2)
        if rest:
            raise ValueError(f"Projection input {proj.in_features} is not divisible by scale_factor^2 = {factor**2}")
        if io is None:
            io = BridgeIO((EncoderInfo("siglip", width, grid, 27),), LMInfo(proj.out_features))
        h, w = io.encoder.grid
        fields = {"num_tokens": (h // factor) * (w // factor), "projector": "linear", "bias": proj.bias is not None}
        bridge = cls(PixelShuffleBridgeConfig(**{**fields, **overrides}), io)
        if bridge.factor != factor:
            raise ValueError(
                f"The grid {h} x {w} with num_tokens={bridge.config.num_tokens} gives factor "
                f"{bridge.factor}, but the connector's scale_factor is {factor}"
            )
        ours = bridge.projector[0]
        if ours.weight.shape != proj.weight.shape:
            raise ValueError(f"Shape mismatch: ours {tuple(ours.weight.shape)} vs {tuple(proj.weight.shape)}")
        with torch.no_grad():
            ours.weight.copy_(proj.weight)
            if ours.bias is not None:
                ours.bias.copy_(proj.bias)
        return bridge.to(dtype=proj.weight.dtype, device=proj.weight.device)


# Idefics3-8B: SigLIP-so400m (1152), scale factor 2, Llama-3.1-8B (4096), one bias-free Linear (transformers'
# Idefics3SimpleMLP with Idefics3Config's defaults: 1152 * 4 * 4096). The 26 x 26 grid (364 px) is [recall] and does
# not change the count.
register_preset(
    BridgePreset(
        "pixel_shuffle",
        "idefics3_8b",
        {},
        BridgeIO(
            (EncoderInfo("siglip_so400m_364", 1152, (26, 26), 27),), LMInfo(4096, 32, 32, 8, 128, 128256, "llama")
        ),
        expected_params=18_874_368,
        source="transformers Idefics3SimpleMLP at Idefics3Config defaults (scale 2, Dv 1152, D 4096), my arithmetic",
    )
)
register_preset(
    BridgePreset(
        "pixel_shuffle",
        "tiny",
        {"num_tokens": 4, "projector": "mlp2x_gelu"},
        BridgeIO((EncoderInfo("tiny", 32, (4, 4), 2),), LMInfo(64, 2, 4, 4, 16, 128)),
    )
)
