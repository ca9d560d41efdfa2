"""Adaptive average pooling of the patch grid to a target token count, then a LLaVA projector: MM1's "average
pooling" connector (McKinzie et al., *MM1: Methods, Analysis & Insights from Multimodal LLM Pre-training*, 2024,
section 3.2 [recall]), the simplest token-matched baseline beside the learned resamplers.

``(N_media * F, h*w, Dv)`` patch tokens of layer ``layer`` -> grid ``(Dv, h, w)`` -> ``adaptive_avg_pool2d`` to
``s x s`` with ``s * s = num_tokens`` -> ``(N_media * F, num_tokens, Dv)`` row-major -> projector ->
``(N_media, F * num_tokens, D_lm)``. The pooling has no parameters; with ``num_tokens = h * w`` the bridge is the
``mlp`` bridge exactly. Frames are images laid end to end, as in the ``mlp`` bridge.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass

import torch

from bridges.base import BRIDGES, BridgeIO, BridgeNeeds, EncoderInfo, LMInfo, PrefixBridge
from bridges.common.checks import at_least
from bridges.common.features import encoder_features, frames_to_media, layer_tokens
from bridges.common.projector import build_projector, projector_flops
from bridges.common.token_grid import average_pool, pooled_side
from bridges.presets import BridgePreset, register_preset
from encoders.base import VisionFeatures, resolve_layers


@dataclass
class AvgPoolBridgeConfig:
    """Config of the average-pooling bridge.

    Attributes:
        num_tokens: visual tokens per image, a square ``s * s`` with ``s`` at most the encoder grid's shorter side
            (144 = 12 x 12, the count of LLaVA-1.5's 24 x 24 grid pooled 2 x 2). The token-count sweep key.
        projector: ``linear`` (MM1 describes a linear projection after the pooling [recall]) or ``mlp{k}x_gelu``
            (default ``mlp2x_gelu``: the ``mlp`` bridge's projector, so the two differ only in the pooling).
        layer: encoder layer to pool (-2 = penultimate block, as the ``mlp`` bridge).
        bias: whether the projector's Linear layers have a bias.
    """

    num_tokens: int = 144
    projector: str = "mlp2x_gelu"
    layer: int = -2
    bias: bool = True

    def __post_init__(self) -> None:
        """Range check at config time (the grid check needs the encoder and runs when the bridge is built)."""
        at_least(self, 1, "num_tokens")


@BRIDGES.register("avgpool", AvgPoolBridgeConfig)
class AvgPoolBridge(PrefixBridge):
    """``(N_media * F, h*w, Dv)`` -> average-pooled ``s x s`` grid -> projector -> ``(N_media, F * s*s, D_lm)``."""

    def __init__(self, config: AvgPoolBridgeConfig, io: BridgeIO) -> None:
        super().__init__(config, io)
        self.check_io()
        self.side = pooled_side("avgpool", config.num_tokens, io.encoder.grid)
        self.absolute_layer = resolve_layers(config.layer, io.encoder.num_layers)[0]
        self.projector = build_projector(config.projector, io.encoder.width, io.lm.hidden_size, bias=config.bias)

    @property
    def needs(self) -> BridgeNeeds:
        return BridgeNeeds(num_encoders=1, layers=(self.config.layer,), needs_grid=True)

    def param_groups(self) -> dict[str, list[torch.nn.Parameter]]:
        return {"bridge.projector": list(self.projector.parameters())}

    def num_visual_tokens(self, num_frames: int = 1) -> int:
        return num_frames * self.config.num_tokens

    def flops_per_media(self, num_frames: int = 1) -> int:
        """The projector's matmuls; the pooling only adds (no multiply-adds, nor counted by the FLOP counter)."""
        cfg = self.config
        return projector_flops(
            cfg.projector, self.io.encoder.width, self.io.lm.hidden_size, self.num_visual_tokens(num_frames)
        )

    def pool(self, features: Mapping[str, VisionFeatures]) -> torch.Tensor:
        """Pooled tokens before the projector, ``(N * F, num_tokens, Dv)``."""
        feats = encoder_features(features, self.io.encoder.name)
        tokens = layer_tokens(feats, self.absolute_layer, dtype=self.projector[0].weight.dtype)
        return average_pool(tokens, self.io.encoder.grid, self.side)

    def forward(
        self,
        features: Mapping[str, VisionFeatures],
        num_frames: int = 1,
        instruction: tuple[torch.Tensor, torch.Tensor] | None = None,
    ) -> torch.Tensor:
        return frames_to_media(self.projector(self.pool(features)), num_frames)


# LLaVA-1.5-7B's encoder, LM and projector with the 24 x 24 grid pooled 2 x 2 to 144 tokens: the projector is LLaVA's
# mlp2x_gelu, so the size is the mlp bridge's llava15_7b figure (BRIDGES.md 3.2); pooling adds no parameters.
register_preset(
    BridgePreset(
        "avgpool",
        "llava15_7b_144",
        {"num_tokens": 144},
        BridgeIO((EncoderInfo("clip_vit_l14_336", 1024, (24, 24), 24),), LMInfo(4096, 32, 32, 32, 128, 32000, "llama")),
        expected_params=20_980_000,
        source="= mlp llava15_7b (BRIDGES.md 3.2, LLaVA-1.5 mlp2x_gelu); the pooling has no parameters",
    )
)
register_preset(
    BridgePreset(
        "avgpool",
        "tiny",
        {"num_tokens": 4},
        BridgeIO((EncoderInfo("tiny", 32, (4, 4), 2),), LMInfo(64, 2, 4, 4, 16, 128)),
    )
)
