"""Honeybee's C-Abstractor: ResNet blocks, adaptive average pooling to the target grid, ResNet blocks, then an MLP
(Cha et al., *Honeybee: Locality-enhanced Projector for Multimodal LLM*, CVPR 2024; reference code
kakaobrain/honeybee ``honeybee/projectors.py``, ``CAbstractor``).

``(N_media * F, h*w, Dv)`` patch tokens (+ a learned position embedding) -> grid ``(Dv, h, w)`` -> ``depth``
RegNet bottleneck blocks to ``hidden_size`` channels -> ``adaptive_avg_pool2d`` to ``s x s`` (``s * s =
num_tokens``) -> ``depth`` more blocks -> ``(N_media * F, num_tokens, hidden_size)`` row-major -> readout MLP
(Linear, SiLU, Linear, ...) -> ``(N_media, F * num_tokens, D_lm)``.

The blocks are timm's RegNet ``Bottleneck`` (``timm.models.regnet.RegStage`` with stride 1, SiLU and
``LayerNorm2d``, as Honeybee builds them): 1x1 conv, depthwise 3x3 conv, squeeze-and-excitation, 1x1 conv,
residual (a 1x1 conv shortcut when the width changes). Locality: the conv path is local (a 3x3 neighbourhood per
block), the pooling keeps each output cell to its own window; the SE step is global (one channel gate per image
from its mean), so strict locality holds with ``se_ratio=0`` or ``depth=0`` only. With ``depth=0`` the abstractor
is the pooling alone and the readout reads the encoder width (Honeybee's branch for ``depth == 0``).

Sources: the stored corpus holds copies and ports of Honeybee's ``projectors.py`` (``CAbstractor``, ``build_mlp``,
``build_pos_embeds``) and of its projector config (depth 3, mlp_depth 2, hidden_size 1024, pos_emb on, 0 EOS tokens),
not the kakaobrain repository itself; the defaults below follow those copies.

Module names follow Honeybee's (``pos_emb``, ``net.0`` / ``net.2`` stages, ``readout``), so its ``abstractor.*``
weights load with :meth:`CAbstractorBridge.load_honeybee_state_dict`.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass

import torch
from einops import rearrange
from timm.layers import LayerNorm2d
from timm.models.regnet import RegStage
from torch import nn

from bridges.base import BRIDGES, BridgeIO, BridgeNeeds, EncoderInfo, LMInfo, PrefixBridge
from bridges.common.checks import at_least
from bridges.common.features import check_frames, encoder_features, layer_tokens
from bridges.common.token_grid import from_grid, pooled_side, to_grid
from bridges.presets import BridgePreset, register_preset
from encoders.base import VisionFeatures, resolve_layers


@dataclass
class CAbstractorConfig:
    """Config of the C-Abstractor (defaults = Honeybee's C-Abstractor configuration, see the module docstring).

    Attributes:
        num_tokens: visual tokens per image (Honeybee ``num_query_tokens``), a square ``s * s`` with ``s`` at most
            the encoder grid's shorter side; 144 (Honeybee-C-M144; 256 for M256 [recall]). The token-count sweep key.
        depth: RegNet bottleneck blocks before and after the pooling (3). 0 = pooling only.
        hidden_size: channels of the blocks (1024).
        mlp_depth: Linear layers of the readout, SiLU between them (2).
        se_ratio: squeeze-and-excitation width as a share of each block's input channels (timm's default 0.25,
            which Honeybee keeps); 0 disables SE and makes the blocks strictly local.
        pos_emb: a learned position embedding added to the patch tokens (Honeybee: on, trunc-normal std 0.02).
        layer: encoder layer (Honeybee ``feature_layer_index=-1``).
    """

    num_tokens: int = 144
    depth: int = 3
    hidden_size: int = 1024
    mlp_depth: int = 2
    se_ratio: float = 0.25
    pos_emb: bool = True
    layer: int = -1

    def __post_init__(self) -> None:
        """Range checks at config time (the grid check needs the encoder and runs when the bridge is built)."""
        at_least(self, 1, "num_tokens", "hidden_size", "mlp_depth")
        at_least(self, 0, "depth", "se_ratio")


def build_readout(depth: int, in_dim: int, out_dim: int) -> nn.Sequential:
    """Honeybee's ``build_mlp``: ``Linear(in, out)`` then ``(SiLU, Linear(out, out)) x (depth - 1)``."""
    if depth < 1:
        raise ValueError(f"c_abstractor: mlp_depth must be >= 1, got {depth}")
    layers: list[nn.Module] = [nn.Linear(in_dim, out_dim)]
    for _ in range(depth - 1):
        layers += [nn.SiLU(), nn.Linear(out_dim, out_dim)]
    return nn.Sequential(*layers)


def reg_stage(depth: int, in_chs: int, out_chs: int, se_ratio: float) -> RegStage:
    """``depth`` timm RegNet bottleneck blocks at stride 1 with SiLU and LayerNorm2d (Honeybee's ``RegBlock``)."""
    return RegStage(
        depth, in_chs, out_chs, stride=1, dilation=1, act_layer=nn.SiLU, norm_layer=LayerNorm2d, se_ratio=se_ratio
    )


def bottleneck_flops(positions: int, in_chs: int, out_chs: int, se_ratio: float) -> int:
    """Forward FLOPs of one timm RegNet ``Bottleneck`` (bottle_ratio 1, group_size 1) over ``positions`` cells.

    1x1 conv, depthwise 3x3 (9 taps per output), SE's two 1x1 convs on the pooled vector, 1x1 conv, and the 1x1
    shortcut conv when the width changes; norms, activations and the residual add are not counted.
    """
    flops = 2 * positions * (in_chs * out_chs + 9 * out_chs + out_chs * out_chs)
    se = round(in_chs * se_ratio)
    flops += 2 * 2 * out_chs * se if se_ratio else 0
    return flops + (2 * positions * in_chs * out_chs if in_chs != out_chs else 0)


@BRIDGES.register("c_abstractor", CAbstractorConfig)
class CAbstractorBridge(PrefixBridge):
    """``(N_media * F, h*w, Dv)`` -> ResNet blocks, pool to ``s x s``, ResNet blocks -> readout ->
    ``(N_media, F * s*s, D_lm)``. Parameter groups: ``bridge.abstractor`` (position embedding and blocks) and
    ``bridge.projector`` (the readout)."""

    def __init__(self, config: CAbstractorConfig, io: BridgeIO) -> None:
        super().__init__(config, io)
        self.check_io()
        self.side = pooled_side("c_abstractor", config.num_tokens, io.encoder.grid)
        self.absolute_layer = resolve_layers(config.layer, io.encoder.num_layers)[0]
        width, (h, w) = io.encoder.width, io.encoder.grid
        self.pos_emb = nn.Parameter(torch.zeros(1, h * w, width)) if config.pos_emb else None
        if self.pos_emb is not None:
            nn.init.trunc_normal_(self.pos_emb, mean=0.0, std=0.02)
        sampler = nn.AdaptiveAvgPool2d((self.side, self.side))
        if config.depth:
            s1 = reg_stage(config.depth, width, config.hidden_size, config.se_ratio)
            s2 = reg_stage(config.depth, config.hidden_size, config.hidden_size, config.se_ratio)
            self.net = nn.Sequential(s1, sampler, s2)
            readout_in = config.hidden_size
        else:
            self.net = nn.Sequential(sampler)
            readout_in = width
        self.readout = build_readout(config.mlp_depth, readout_in, io.lm.hidden_size)

    @property
    def needs(self) -> BridgeNeeds:
        return BridgeNeeds(num_encoders=1, layers=(self.config.layer,), needs_grid=True)

    def param_groups(self) -> dict[str, list[nn.Parameter]]:
        abstractor = [*([self.pos_emb] if self.pos_emb is not None else []), *self.net.parameters()]
        return {"bridge.abstractor": abstractor, "bridge.projector": list(self.readout.parameters())}

    def num_visual_tokens(self, num_frames: int = 1) -> int:
        return num_frames * self.config.num_tokens

    def flops_per_media(self, num_frames: int = 1) -> int:
        """Bottleneck convs before (``h*w`` cells) and after (``s*s`` cells) the pooling, and the readout."""
        cfg, (h, w), width = self.config, self.io.encoder.grid, self.io.encoder.width
        flops, hidden = 0, cfg.hidden_size
        for i in range(cfg.depth):
            flops += bottleneck_flops(h * w, width if i == 0 else hidden, hidden, cfg.se_ratio)
            flops += bottleneck_flops(cfg.num_tokens, hidden, hidden, cfg.se_ratio)
        readout_in = hidden if cfg.depth else width
        d_lm = self.io.lm.hidden_size
        flops += 2 * cfg.num_tokens * (readout_in * d_lm + (cfg.mlp_depth - 1) * d_lm * d_lm)
        return num_frames * flops

    def forward(
        self,
        features: Mapping[str, VisionFeatures],
        num_frames: int = 1,
        instruction: tuple[torch.Tensor, torch.Tensor] | None = None,
    ) -> torch.Tensor:
        feats = encoder_features(features, self.io.encoder.name)
        x = layer_tokens(feats, self.absolute_layer, dtype=self.readout[0].weight.dtype)
        check_frames(x.shape[0], num_frames)
        if self.pos_emb is not None:
            x = x + self.pos_emb
        x = self.readout(from_grid(self.net(to_grid(x, self.io.encoder.grid))))
        return rearrange(x, "(n f) t d -> n (f t) d", f=num_frames)

    def load_honeybee_state_dict(self, state_dict: Mapping[str, torch.Tensor]) -> None:
        """Load Honeybee ``CAbstractor`` weights (keys ``pos_emb``, ``net.*``, ``readout.*``, with any
        ``abstractor.`` prefix stripped). A ``pos_emb`` with one row more than the patch count (a CLS row, which the
        copies of Honeybee's code read skip with ``pos_emb[:, 1:]``) loses its first row."""
        state = {k.removeprefix("abstractor."): v for k, v in state_dict.items()}
        if self.pos_emb is not None and "pos_emb" in state and state["pos_emb"].shape[1] == self.pos_emb.shape[1] + 1:
            state["pos_emb"] = state["pos_emb"][:, 1:]
        self.load_state_dict(state)


# Honeybee-C-7B-M144 [config recalled]: CLIP ViT-L/14 at 224 px (Dv 1024, 16 x 16 patches), Vicuna-7B (4096), the
# defaults above. Size by arithmetic over the structure read in projectors.py / timm's Bottleneck:
# blocks 2 x 3 x 2,638,080 + position embedding 256 x 1024 + readout (1024*4096 + 4096) + (4096*4096 + 4096).
_CLIP_L224 = EncoderInfo("clip_vit_l14_224", 1024, (16, 16), 24)
_VICUNA7B = LMInfo(4096, 32, 32, 32, 128, 32000, "llama")
register_preset(
    BridgePreset(
        "c_abstractor",
        "honeybee_c_7b_m144",
        {},
        BridgeIO((_CLIP_L224,), _VICUNA7B),
        expected_params=37_070_336,
        source="my arithmetic from Honeybee projectors.py + timm RegNet Bottleneck (M144 config recalled)",
    )
)
register_preset(
    BridgePreset(
        "c_abstractor",
        "tiny",
        {"num_tokens": 4, "depth": 1, "hidden_size": 32},
        BridgeIO((EncoderInfo("tiny", 32, (4, 4), 2),), LMInfo(64, 2, 4, 4, 16, 128)),
    )
)
