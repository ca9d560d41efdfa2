"""Eagle: several vision experts, each resampled to one token grid, concatenated on channels, then one MLP
(Shi et al., *Eagle: Exploring the Design Space for Multimodal LLMs with Mixture of Encoders*, 2024; reference code
NVlabs/EAGLE ``eagle/model/multimodal_encoder/multi_backbone_channel_concatenation_encoder.py``; BRIDGES.md 4).

Per expert, in the fixed order of ``BridgeIO.encoders``: patch tokens ``(N, h*w, C)`` -> optional
``pixel_unshuffle(u)`` (space-to-depth; SAM in Eagle-X5) -> bilinear resize (``align_corners=True``, fp32) to the
common grid when the sizes differ -> ``(N, G, C')``. The experts are concatenated on channels ``(N, G, ΣC')``, so
the LM receives ``G`` tokens per image whatever the number of experts, then the LLaVA projector maps them to the LM.

``downsample="area"`` (a toolkit option) shrinks a grid by adaptive average pooling instead. The reference's bilinear
resize with ``align_corners=True`` samples only the corner patches when it shrinks a grid several-fold (a 4 x 4 grid
to 2 x 2 keeps 4 of 16 patches, to 1 x 1 the top-left one), so a token-count sweep over ``grid_size`` uses ``area``,
which averages every patch as MM1's pooling does. A grid that grows is resized bilinearly either way.

Variants (``variant``):

* ``released`` (default, the released code): one projector over the concatenated channels.
* ``pre_alignment`` (the paper): also one projector per expert (parameter group ``bridge.pre_alignment``) for the
  paper's extra first stage, where each expert is aligned alone with a frozen LM: select it with ``pre_align_expert``
  (config) or :meth:`EagleBridge.pre_align`; the bridge then emits that expert's ``G`` tokens through its projector.
  With no expert selected it behaves as ``released`` (the joint-projector and SFT stages). The per-expert projectors
  are not copied into the joint one: the paper does not say how, so the joint projector trains from its own init.
* ``sequence_append`` (the baseline Eagle compares against): per-expert projectors and the experts' tokens laid end
  to end, ``E * G`` tokens per image. Every expert is resampled to the common grid first (a toolkit choice that
  keeps the per-expert token budget equal).

Video frames are treated as images: ``F`` frames give ``F * G`` tokens, frame-major (BRIDGES.md 7.3).
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any, ClassVar

import torch
import torch.nn.functional as F
from einops import rearrange
from torch import nn

from bridges.base import BRIDGES, BridgeIO, BridgeNeeds, EncoderInfo, LMInfo, PrefixBridge
from bridges.common.projector import build_projector, projector_flops
from bridges.common.checks import at_least
from bridges.common.features import check_frames
from bridges.presets import BridgePreset, register_preset
from encoders.base import VisionFeatures

VARIANTS = ("released", "pre_alignment", "sequence_append")
DOWNSAMPLES = ("bilinear", "area")


@dataclass
class EagleBridgeConfig:
    """Config of the Eagle channel-concatenation bridge (defaults = the released code).

    Attributes:
        variant: ``released`` (code), ``pre_alignment`` (paper), ``sequence_append`` (the paper's baseline).
        grid_size: side of the common square token grid (Eagle: 32, i.e. 1024 tokens). ``None`` = the first
            expert's grid after its pixel-unshuffle (CLIP-448 in Eagle-X5, which is 32 x 32).
        pixel_unshuffle: expert name -> space-to-depth factor applied before resizing (Eagle: ``{"sam-1024": 2}``,
            the code's ``add_pixel_shuffle``); channels grow by the factor squared.
        projector: the joint projector, ``linear`` or ``mlp{k}x_gelu`` (Eagle: ``mlp2x_gelu``).
        expert_projector: the per-expert projectors of ``pre_alignment`` / ``sequence_append``.
        downsample: how an expert's grid larger than the common one is shrunk to it: ``bilinear`` (the code,
            ``align_corners=True``) or ``area`` (adaptive average pooling; see the module docstring).
        layer: encoder layer taken from every expert (-1 = last; the released CLIP tower ignores ``select_layer``).
        pre_align_expert: in ``pre_alignment``, the expert being aligned alone (``None`` = joint use).
    """

    variant: str = "released"
    grid_size: int | None = None
    pixel_unshuffle: dict[str, int] = field(default_factory=dict)
    projector: str = "mlp2x_gelu"
    expert_projector: str = "mlp2x_gelu"
    downsample: str = "bilinear"
    layer: int = -1
    pre_align_expert: str | None = None
    # Eagle fuses experts; with one encoder it is an MLP projector. The harness refuses fewer at config time.
    min_encoders: ClassVar[int] = 2

    def __post_init__(self) -> None:
        """Range checks: a bad value fails here, naming the key, the value and the allowed range."""
        at_least(self, 1, "grid_size", optional=True)


def to_grid(
    tokens: torch.Tensor,
    grid: tuple[int, int],
    target: tuple[int, int],
    unshuffle: int = 1,
    downsample: str = "bilinear",
) -> torch.Tensor:
    """One expert's patch tokens ``(N, h*w, C)`` -> ``(N, H*W, C * unshuffle**2)`` on the ``target = (H, W)`` grid.

    ``pixel_unshuffle`` keeps PyTorch's channel order (``c * u**2 + i * u + j``); resizing is bilinear with
    ``align_corners=True`` in float32 and skipped when the grid already matches, as in the reference; with
    ``downsample="area"`` a grid that shrinks on both sides is average-pooled instead.
    """
    if tokens.shape[1] != grid[0] * grid[1]:
        raise ValueError(f"{tokens.shape[1]} tokens do not fill the {grid} grid; pass patch tokens only (no CLS)")
    x = rearrange(tokens, "n (h w) c -> n c h w", h=grid[0], w=grid[1])
    if unshuffle > 1:  # = F.pixel_unshuffle, which returns an empty batch unchanged (wrong channel count)
        x = rearrange(x, "n c (h i) (w j) -> n (c i j) h w", i=unshuffle, j=unshuffle)
    if tuple(x.shape[-2:]) != tuple(target):
        shrinks = x.shape[-2] >= target[0] and x.shape[-1] >= target[1]
        if downsample == "area" and shrinks:
            x = F.adaptive_avg_pool2d(x.float(), target).to(tokens.dtype)
        else:
            x = F.interpolate(x.float(), size=target, mode="bilinear", align_corners=True).to(tokens.dtype)
    return rearrange(x, "n c h w -> n (h w) c")


@BRIDGES.register("eagle", EagleBridgeConfig)
class EagleBridge(PrefixBridge):
    """``E`` experts' ``(N_media * F, P_e, C_e)`` -> ``(N_media, F * G, D_lm)`` (``F * E * G`` for sequence_append)."""

    stage_options = ("pre_align_expert",)

    def __init__(self, config: EagleBridgeConfig, io: BridgeIO) -> None:
        super().__init__(config, io)
        self.check_io()
        if config.variant not in VARIANTS:
            raise ValueError(f"Unknown Eagle variant '{config.variant}'. Use one of {VARIANTS}.")
        if config.downsample not in DOWNSAMPLES:
            raise ValueError(f"Unknown Eagle downsample '{config.downsample}'. Use one of {DOWNSAMPLES}.")
        names = [e.name for e in io.encoders]
        if len(set(names)) != len(names):
            raise ValueError(f"Eagle needs distinct encoder names (its fixed expert order), got {names}")
        unknown = sorted(set(config.pixel_unshuffle) - set(names))
        if unknown:
            raise ValueError(f"pixel_unshuffle names unknown experts {unknown}; experts are {names}")
        self.unshuffle = {e.name: int(config.pixel_unshuffle.get(e.name, 1)) for e in io.encoders}
        for e in io.encoders:
            u = self.unshuffle[e.name]
            if u < 1 or e.grid[0] % u or e.grid[1] % u:
                raise ValueError(f"Expert '{e.name}': grid {e.grid} is not divisible by pixel_unshuffle factor {u}")
        self.widths = [e.width * self.unshuffle[e.name] ** 2 for e in io.encoders]
        first, u0 = io.encoders[0], self.unshuffle[io.encoders[0].name]
        self.grid = (config.grid_size,) * 2 if config.grid_size else (first.grid[0] // u0, first.grid[1] // u0)
        d_lm = io.lm.hidden_size
        self.projector = None
        if config.variant != "sequence_append":
            self.projector = build_projector(config.projector, sum(self.widths), d_lm)
        self.expert_projectors = None
        if config.variant != "released":
            kind = config.expert_projector
            self.expert_projectors = nn.ModuleList(build_projector(kind, c, d_lm) for c in self.widths)
        self.active_expert: int | None = None
        self.pre_align(config.pre_align_expert)

    def configure_stage(self, pre_align_expert: str | None = None, **options: Any) -> None:
        """A stage's ``bridge_options``: ``{pre_align_expert: <expert>}`` for the paper's pre-alignment stage; a
        stage without it uses the config's ``pre_align_expert`` (joint use by default)."""
        super().configure_stage(**options)
        self.pre_align(pre_align_expert if pre_align_expert is not None else self.config.pre_align_expert)

    def pre_align(self, expert: str | None) -> None:
        """Select the expert aligned alone in the ``pre_alignment`` stage, or ``None`` for joint use."""
        if expert is None:
            self.active_expert = None
            return
        if self.config.variant != "pre_alignment":
            raise ValueError(f"pre_align_expert needs variant='pre_alignment' (this bridge is '{self.config.variant}')")
        names = [e.name for e in self.io.encoders]
        if expert not in names:
            raise ValueError(f"Unknown expert '{expert}' to pre-align; experts are {names}")
        self.active_expert = names.index(expert)

    @property
    def needs(self) -> BridgeNeeds:
        return BridgeNeeds(num_encoders=None, layers=(self.config.layer,), needs_grid=True)

    def param_groups(self) -> dict[str, list[nn.Parameter]]:
        if self.config.variant == "sequence_append":
            return {"bridge.projector": list(self.expert_projectors.parameters())}
        groups = {"bridge.projector": list(self.projector.parameters())}
        if self.expert_projectors is not None:
            groups["bridge.pre_alignment"] = list(self.expert_projectors.parameters())
        return groups

    @property
    def tokens_per_image(self) -> int:
        g = self.grid[0] * self.grid[1]
        return g * len(self.io.encoders) if self.config.variant == "sequence_append" else g

    def num_visual_tokens(self, num_frames: int = 1) -> int:
        return num_frames * self.tokens_per_image

    def flops_per_media(self, num_frames: int = 1) -> int:
        """Projector matmuls; the resize and space-to-depth have no multiply-adds to speak of (nor in the counter)."""
        g, d_lm = num_frames * self.grid[0] * self.grid[1], self.io.lm.hidden_size
        if self.active_expert is not None:
            return projector_flops(self.config.expert_projector, self.widths[self.active_expert], d_lm, g)
        if self.config.variant == "sequence_append":
            return sum(projector_flops(self.config.expert_projector, c, d_lm, g) for c in self.widths)
        return projector_flops(self.config.projector, sum(self.widths), d_lm, g)

    def expert_grids(self, features: Mapping[str, VisionFeatures], only: int | None = None) -> list[torch.Tensor]:
        """Each expert's tokens on the common grid, ``(N, G, C'_e)``, in expert order (or just expert ``only``)."""
        experts = list(self.io.encoders) if only is None else [self.io.encoders[only]]
        missing = [e.name for e in experts if e.name not in features]
        if missing:
            raise KeyError(f"No features for experts {missing}; got {sorted(features)}. Check the encoder names.")
        counts = {features[e.name].num_images for e in experts}
        if len(counts) != 1:
            raise ValueError(f"Experts returned different image counts {sorted(counts)}; all must see the same images")
        dtype = next(self.parameters()).dtype  # encoders may run in another precision than the bridge
        # A loop over the small, fixed expert list: grids and widths differ per expert, so there is nothing to batch.
        grids = []
        for e in experts:
            f = features[e.name]
            grid = to_grid(f.patches(), f.grid, self.grid, self.unshuffle[e.name], self.config.downsample)
            grids.append(grid.to(dtype))
        return grids

    def forward(
        self,
        features: Mapping[str, VisionFeatures],
        num_frames: int = 1,
        instruction: tuple[torch.Tensor, torch.Tensor] | None = None,
    ) -> torch.Tensor:
        grids = self.expert_grids(features, only=self.active_expert)
        check_frames(grids[0].shape[0], num_frames)
        if self.active_expert is not None:
            tokens = self.expert_projectors[self.active_expert](grids[0])
        elif self.config.variant == "sequence_append":
            # one projector per expert (input widths differ): E small matmuls, then expert-major tokens per image
            tokens = torch.stack([proj(x) for proj, x in zip(self.expert_projectors, grids, strict=True)], dim=1)
            tokens = rearrange(tokens, "n e g d -> n (e g) d")
        else:
            tokens = self.projector(torch.cat(grids, dim=-1))
        return rearrange(tokens, "(n f) t d -> n (f t) d", f=num_frames)

    @classmethod
    def from_reference(cls, projector: nn.Module, io: BridgeIO, **overrides: Any) -> EagleBridge:
        """A ``released`` bridge holding Eagle's ``mm_projector`` weights.

        Accepts Eagle's/LLaVA's ``mm_projector`` ``nn.Sequential`` (indices ``0``, ``2`` as ours) or transformers'
        ``LlavaMultiModalProjector`` (``linear_1 -> 0``, ``linear_2 -> 2``). The projector's input rows follow the
        expert order, so ``io.encoders`` must list the experts in the checkpoint's order (Eagle-X5:
        clip-448, convnext-1024, sam-1024, det-1024, pix2struct-1024).
        """
        if hasattr(projector, "linear_1"):
            linears = [projector.linear_1, projector.linear_2]
        else:
            linears = [m for m in projector if isinstance(m, nn.Linear)]
        kind = "linear" if len(linears) == 1 else f"mlp{len(linears)}x_gelu"
        bridge = cls(EagleBridgeConfig(**{"projector": kind, **overrides}), io)
        pairs = list(zip([m for m in bridge.projector if isinstance(m, nn.Linear)], linears, strict=True))
        for mine, theirs in pairs:
            if mine.weight.shape != theirs.weight.shape or (theirs.bias is None) != (mine.bias is None):
                raise ValueError(
                    f"Reference projector layer {tuple(theirs.weight.shape)} does not fit ours "
                    f"{tuple(mine.weight.shape)}; check the experts, their order, pixel_unshuffle and the bias"
                )
        with torch.no_grad():
            for mine, theirs in pairs:
                mine.weight.copy_(theirs.weight)
                if mine.bias is not None:
                    mine.bias.copy_(theirs.bias)
        return bridge


# Presets: Eagle-X5 / X4 experts as the released code builds them (BRIDGES.md 4.1); SAM's 64 x 64 x 256 neck output
# is unshuffled to 32 x 32 x 1024. The projector counts are BRIDGES.md 4.3 / 7.1.
_EXPERTS = {
    "clip-448": EncoderInfo("clip-448", 1024, (32, 32), 24),
    "convnext-1024": EncoderInfo("convnext-1024", 3072, (32, 32), 4),
    "sam-1024": EncoderInfo("sam-1024", 256, (64, 64), 24),
    "det-1024": EncoderInfo("det-1024", 1024, (64, 64), 24),
    "pix2struct-1024": EncoderInfo("pix2struct-1024", 1536, (45, 45), 24),
}
_VICUNA_7B = LMInfo(4096, 32, 32, 32, 128, 32000, "llama")
_X5 = ("clip-448", "convnext-1024", "sam-1024", "det-1024", "pix2struct-1024")
_X4 = ("clip-448", "convnext-1024", "det-1024", "pix2struct-1024")
for _name, _experts, _params in (("eagle_x5_7b", _X5, 48_240_000), ("eagle_x4_7b", _X4, 44_050_000)):
    register_preset(
        BridgePreset(
            "eagle",
            _name,
            {"pixel_unshuffle": {"sam-1024": 2}} if "sam-1024" in _experts else {},
            BridgeIO(tuple(_EXPERTS[e] for e in _experts), _VICUNA_7B),
            expected_params=_params,
            source="BRIDGES.md 4.3 / 7.1 (Eagle projector, mlp2x_gelu over ΣC, Vicuna-7B)",
        )
    )
register_preset(
    BridgePreset(
        "eagle",
        "tiny",
        {"pixel_unshuffle": {"tiny_b": 2}},
        BridgeIO(
            (EncoderInfo("tiny", 32, (4, 4), 2), EncoderInfo("tiny_b", 8, (8, 8), 2)), LMInfo(64, 2, 4, 4, 16, 128)
        ),
    )
)
