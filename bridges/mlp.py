"""LLaVA's prefix projector: each visual token of a chosen encoder layer mapped to the LM width by a linear map or
a small GELU MLP (Liu et al., *Visual Instruction Tuning*, 2023, and *Improved Baselines with Visual Instruction
Tuning*, 2023 = LLaVA-1.5; reference code haotian-liu/LLaVA ``llava/model/multimodal_projector/builder.py``,
``llava/model/multimodal_encoder/clip_encoder.py``; transformers ``LlavaMultiModalProjector``).

``(N_media * F, P, Dv)`` features of layer ``select_layer`` (CLS dropped or kept) -> projector ->
``(N_media, F * P', D_lm)``. Several layers may be concatenated on the channel axis before the projector, as
transformers does for a list ``vision_feature_layer``. Video frames are treated as images and their tokens laid end
to end (BRIDGES.md 7.3).
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

import torch
from torch import nn

from bridges.base import BRIDGES, BridgeIO, BridgeNeeds, EncoderInfo, LMInfo, PrefixBridge
from bridges.common.features import encoder_features, frames_to_media, layer_tokens
from bridges.common.projector import build_projector, projector_depth, projector_flops
from bridges.presets import BridgePreset, register_preset
from encoders.base import VisionFeatures, resolve_layers

_SELECT_FEATURES = ("patch", "cls_patch")


@dataclass
class MLPBridgeConfig:
    """Config of the LLaVA projector bridge (defaults = LLaVA-1.5, paper and code agree).

    Attributes:
        projector: ``linear`` (LLaVA v1) or ``mlp{k}x_gelu`` (k Linear layers with exact GELU between them;
            LLaVA-1.5 uses ``mlp2x_gelu``).
        select_layer: encoder layer to project (``-2`` = penultimate block, LLaVA's ``mm_vision_select_layer``), or
            a list of layers concatenated on channels in list order (transformers' list ``vision_feature_layer``).
            Indices follow :func:`encoders.base.resolve_layers` (``i`` = output of block ``i``), so a negative index
            means the same as in LLaVA/transformers; a positive transformers index ``k`` (where 0 is the embedding
            output) is block ``k - 1`` here.
        select_feature: ``patch`` drops CLS (LLaVA ``mm_vision_select_feature='patch'``, transformers strategy
            ``default``); ``cls_patch`` keeps it (transformers strategy ``full``).
        bias: whether the projector's Linear layers have a bias (transformers ``multimodal_projector_bias``).
    """

    projector: str = "mlp2x_gelu"
    select_layer: Any = -2
    select_feature: str = "patch"
    bias: bool = True


def _as_layers(select_layer: Any) -> tuple[int, ...]:
    layers = (select_layer,) if isinstance(select_layer, int) else tuple(select_layer)
    if not layers or not all(isinstance(i, int) and not isinstance(i, bool) for i in layers):
        raise ValueError(f"select_layer must be an int or a non-empty list of ints, got {select_layer!r}")
    return layers


@BRIDGES.register("mlp", MLPBridgeConfig)
class MLPBridge(PrefixBridge):
    """Per-token projector: ``(N_media * F, P, Dv)`` per selected layer -> ``(N_media, F * P', D_lm)``.

    ``P' = h * w`` patches, plus one with ``select_feature='cls_patch'``. Module ``projector`` is an
    ``nn.Sequential`` whose indices match LLaVA's ``mm_projector`` (``0`` and ``2`` for ``mlp2x_gelu``).
    """

    def __init__(self, config: MLPBridgeConfig, io: BridgeIO) -> None:
        super().__init__(config, io)
        if config.select_feature not in _SELECT_FEATURES:
            raise ValueError(f"select_feature must be one of {_SELECT_FEATURES}, got '{config.select_feature}'")
        projector_depth(config.projector)  # validates the spec with a clear error
        self.layers = _as_layers(config.select_layer)
        self.check_io()
        self.absolute_layers = resolve_layers(self.layers, io.encoder.num_layers)
        in_dim = io.encoder.width * len(self.layers)
        self.projector = build_projector(config.projector, in_dim, io.lm.hidden_size, bias=config.bias)

    @property
    def needs(self) -> BridgeNeeds:
        return BridgeNeeds(num_encoders=1, layers=self.layers, with_cls=self.config.select_feature == "cls_patch")

    def tokens_per_frame(self) -> int:
        h, w = self.io.encoder.grid
        return h * w + (self.config.select_feature == "cls_patch")

    def num_visual_tokens(self, num_frames: int = 1) -> int:
        return num_frames * self.tokens_per_frame()

    def flops_per_media(self, num_frames: int = 1) -> int:
        in_dim = self.io.encoder.width * len(self.layers)
        return projector_flops(
            self.config.projector, in_dim, self.io.lm.hidden_size, self.num_visual_tokens(num_frames)
        )

    def select(self, features: Mapping[str, VisionFeatures]) -> torch.Tensor:
        """The projector input: chosen layers, CLS handled, concatenated on channels, ``(N, P', Dv * n_layers)``."""
        feats = encoder_features(features, self.io.encoder.name)
        keep_cls = self.config.select_feature == "cls_patch"
        chosen = [layer_tokens(feats, i, keep_cls) for i in self.absolute_layers]
        x = chosen[0] if len(chosen) == 1 else torch.cat(chosen, dim=-1)
        return x.to(self.projector[0].weight.dtype)

    def forward(
        self,
        features: Mapping[str, VisionFeatures],
        num_frames: int = 1,
        instruction: tuple[torch.Tensor, torch.Tensor] | None = None,
    ) -> torch.Tensor:
        return frames_to_media(self.projector(self.select(features)), num_frames)

    @classmethod
    def from_reference(cls, projector: nn.Module, io: BridgeIO | None = None, **overrides: Any) -> MLPBridge:
        """Build a bridge holding the weights of a released projector.

        Accepted modules and name mapping (ours <- reference):

        * transformers ``LlavaMultiModalProjector``: ``projector.0`` <- ``linear_1``, ``projector.2`` <- ``linear_2``
          (``mlp2x_gelu``; its ``act`` must be the exact GELU);
        * LLaVA's ``mm_projector`` ``nn.Sequential`` (``linear`` or ``mlp{k}x_gelu``): same indices;
        * a bare ``nn.Linear``: ``projector.0`` (``linear``).

        ``overrides`` set config fields (``select_layer`` as a list when the projector takes concatenated layers).
        ``io`` defaults to LLaVA-1.5's CLIP ViT-L/14-336 (24 layers, 24 x 24 grid) with the width read from the
        projector, and an LM as wide as its output.
        """
        if hasattr(projector, "linear_1") and hasattr(projector, "linear_2"):
            act = projector.act
            if not (isinstance(act, nn.GELU) and act.approximate == "none") and type(act).__name__ != "GELUActivation":
                raise ValueError(f"Only the exact-GELU projector is supported, got activation {type(act).__name__}")
            linears = [projector.linear_1, projector.linear_2]
        elif isinstance(projector, nn.Linear):
            linears = [projector]
        elif isinstance(projector, nn.Sequential):
            linears = [m for m in projector if isinstance(m, nn.Linear)]
        else:
            raise TypeError(f"Cannot import a projector from {type(projector).__name__}")
        kind = "linear" if len(linears) == 1 else f"mlp{len(linears)}x_gelu"
        fields = {"projector": kind, "bias": linears[0].bias is not None, **overrides}
        config = MLPBridgeConfig(**fields)
        if io is None:
            width, rest = divmod(linears[0].in_features, len(_as_layers(config.select_layer)))
            if rest:
                raise ValueError(f"Projector input {linears[0].in_features} is not divisible by the layer count")
            io = BridgeIO((EncoderInfo("clip_vit_l14_336", width, (24, 24), 24),), LMInfo(linears[-1].out_features))
        bridge = cls(config, io)
        ours = [m for m in bridge.projector if isinstance(m, nn.Linear)]
        with torch.no_grad():
            for mine, theirs in zip(ours, linears, strict=True):
                if mine.weight.shape != theirs.weight.shape:
                    raise ValueError(f"Shape mismatch: ours {tuple(mine.weight.shape)} vs {tuple(theirs.weight.shape)}")
                mine.weight.copy_(theirs.weight)
                if mine.bias is not None:
                    mine.bias.copy_(theirs.bias)
        return bridge


_CLIP_L336 = EncoderInfo("clip_vit_l14_336", 1024, (24, 24), 24)
_LLAVA = "BRIDGES.md 3.2 (LLaVA-1.5, my arithmetic from LL builder.py)"
register_preset(
    BridgePreset(
        "mlp",
        "llava15_7b",
        {},
        BridgeIO((_CLIP_L336,), LMInfo(4096, 32, 32, 32, 128, 32000, "llama")),
        expected_params=20_980_000,
        source=_LLAVA,
    )
)
register_preset(
    BridgePreset(
        "mlp",
        "llava15_13b",
        {},
        BridgeIO((_CLIP_L336,), LMInfo(5120, 40, 40, 40, 128, 32000, "llama")),
        expected_params=31_470_000,
        source=_LLAVA,
    )
)
register_preset(
    BridgePreset(
        "mlp",
        "llava_linear_7b",
        {"projector": "linear"},
        BridgeIO((_CLIP_L336,), LMInfo(4096, 32, 32, 32, 128, 32000, "llama")),
        expected_params=4_200_000,
        source="BRIDGES.md 3.2 (LLaVA v1 / LLaMA-2 linear projector)",
    )
)
register_preset(
    BridgePreset("mlp", "tiny", {}, BridgeIO((EncoderInfo("tiny", 32, (4, 4), 2),), LMInfo(64, 2, 4, 4, 16, 128)))
)
