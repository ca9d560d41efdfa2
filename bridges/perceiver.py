"""Flamingo's Perceiver Resampler used as a prefix bridge (Alayrac et al., *Flamingo*, 2022; reference code
mlfoundations/open_flamingo ``open_flamingo/src/helpers.py``; BRIDGES.md 1.2, 1.6, 1.9).

``(N_media * F, P, Dv)`` patch tokens -> :class:`~bridges.common.resampler.PerceiverResampler` (latents attend to
``[media; latents]``) -> ``(N_media, R, Dv)`` -> projector to the LM width -> ``(N_media, R, D_lm)``, spliced into
the text in place of each ``<image>``. Unlike Flamingo, the latents enter the LM sequence as tokens (no gated
cross-attention); this is the "resampler + prefix" design of e.g. IDEFICS2 / Kosmos-style connectors, and a
useful control for Flamingo: same resampler, different way into the LM.

A video is one media item: optional learned frame embeddings are added per frame, then all ``F * P`` tokens form
one context and yield ``R`` latents per video (Flamingo paper; BRIDGES.md 1.6).
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

import torch
from einops import rearrange
from torch import nn

from bridges.base import BRIDGES, BridgeIO, BridgeNeeds, EncoderInfo, LMInfo, PrefixBridge
from bridges.common.features import check_frames, encoder_features, layer_tokens
from bridges.common.projector import build_projector, projector_flops
from bridges.common.resampler import PerceiverResampler
from bridges.common.checks import at_least, positive
from bridges.presets import BridgePreset, register_preset
from encoders.base import VisionFeatures


@dataclass
class PerceiverBridgeConfig:
    """Config of the Perceiver-resampler prefix bridge. The resampler width is the encoder width (as OpenFlamingo).

    Attributes:
        depth: resampler layers. 6 (OpenFlamingo and paper).
        heads: attention heads. 8 (OpenFlamingo); paper 16.
        dim_head: head width. 64 (OpenFlamingo); paper 128.
        num_latents: latents ``R`` = visual tokens per media item. 64 (both).
        ff_mult: feed-forward width multiplier. 4 (both).
        activation: ``gelu`` (OpenFlamingo, default), ``squared_relu`` (paper), ``relu`` (IDEFICS).
        fused_kv: one ``to_kv`` projection (OpenFlamingo) or separate ``to_k``/``to_v`` (IDEFICS layout).
        qk_norm: per-head LayerNorms on q and k (IDEFICS option; off in OpenFlamingo and the paper).
        max_num_frames: frames of the learned frame embeddings (the paper's per-frame time embeddings);
            ``None`` = no frame embedding (OpenFlamingo default), then frame order is invisible to the resampler.
        layer: encoder layer to resample (-1 = last block; OpenFlamingo uses the ViT's final tokens).
        with_cls: keep the CLS token in the context (OpenFlamingo: patch tokens only).
        projector: projection to the LM width, ``linear`` or ``mlp{k}x_gelu`` (a toolkit choice: Flamingo needs
            none, since its latents only feed cross-attention keys).

    OpenFlamingo's ``media_time_embs`` (per media index within a sample) are not offered here: a prefix bridge
    resamples every media item on its own, so the index would always be 0. The ``flamingo`` bridge uses them.
    """

    depth: int = 6
    heads: int = 8
    dim_head: int = 64
    num_latents: int = 64
    ff_mult: float = 4.0
    activation: str = "gelu"
    fused_kv: bool = True
    qk_norm: bool = False
    max_num_frames: int | None = None
    layer: int = -1
    with_cls: bool = False
    projector: str = "linear"

    def __post_init__(self) -> None:
        """Range checks: a bad value fails here, naming the key, the value and the allowed range."""
        at_least(self, 1, "depth", "heads", "dim_head", "num_latents")
        at_least(self, 1, "max_num_frames", optional=True)
        positive(self, "ff_mult")


@BRIDGES.register("perceiver", PerceiverBridgeConfig)
class PerceiverBridge(PrefixBridge):
    """``(N_media * F, P, Dv)`` -> ``(N_media, num_latents, D_lm)`` through a Perceiver Resampler and a projector."""

    def __init__(self, config: PerceiverBridgeConfig, io: BridgeIO) -> None:
        super().__init__(config, io)
        self.check_io()
        width = io.encoder.width
        self.resampler = PerceiverResampler(
            width,
            depth=config.depth,
            heads=config.heads,
            dim_head=config.dim_head,
            num_latents=config.num_latents,
            ff_mult=config.ff_mult,
            activation=config.activation,  # type: ignore[arg-type]
            fused_kv=config.fused_kv,
            max_num_frames=config.max_num_frames,
            qk_norm=config.qk_norm,
        )
        self.projector = build_projector(config.projector, width, io.lm.hidden_size)

    @property
    def needs(self) -> BridgeNeeds:
        return BridgeNeeds(num_encoders=1, layers=(self.config.layer,), with_cls=self.config.with_cls)

    def param_groups(self) -> dict[str, list[nn.Parameter]]:
        return {
            "bridge.resampler": list(self.resampler.parameters()),
            "bridge.projector": list(self.projector.parameters()),
        }

    def num_visual_tokens(self, num_frames: int = 1) -> int:
        return self.config.num_latents

    def flops_per_media(self, num_frames: int = 1) -> int:
        h, w = self.io.encoder.grid
        context = num_frames * (h * w + int(self.config.with_cls))
        cfg, io = self.config, self.io
        head = projector_flops(cfg.projector, io.encoder.width, io.lm.hidden_size, cfg.num_latents)
        return self.resampler.flops(context) + head

    def forward(
        self,
        features: Mapping[str, VisionFeatures],
        num_frames: int = 1,
        instruction: tuple[torch.Tensor, torch.Tensor] | None = None,
    ) -> torch.Tensor:
        feats = encoder_features(features, self.io.encoder.name)
        # CLS (index 0) only when asked for; register tokens dropped; encoders may run in another precision
        tokens = layer_tokens(feats, feats.layers[-1], self.config.with_cls, self.resampler.latents.dtype)
        check_frames(tokens.shape[0], num_frames)
        x = rearrange(tokens, "(n f) p d -> n 1 f p d", f=num_frames)
        return self.projector(self.resampler(x)[:, 0])

    @classmethod
    def from_reference(cls, resampler: nn.Module, io: BridgeIO | None = None, **overrides: Any) -> PerceiverBridge:
        """A bridge whose resampler holds the weights of a released one (the projector keeps its fresh init).

        Accepted modules:

        * transformers ``IdeficsPerceiverResampler``: ReLU, separate K/V, optional qk-norms; renamed as documented
          in :meth:`PerceiverResampler.load_idefics_state_dict`;
        * OpenFlamingo's ``PerceiverResampler`` (or ours): same parameter names, loaded as is (GELU; ``frame_embs``
          and ``media_time_embs`` are dropped / kept at init when absent).

        ``io`` defaults to a 16 x 16-patch encoder as wide as the resampler and an LM of the same width.
        """
        if hasattr(resampler, "blocks") and hasattr(resampler, "n_latents"):  # IDEFICS
            ours = PerceiverResampler.from_idefics(resampler)
            fields: dict[str, Any] = {"activation": "relu", "fused_kv": False, "qk_norm": ours.qk_norm}
            fields.update(heads=ours.heads, dim_head=ours.dim_head, ff_mult=ours.ff_mult)
        elif hasattr(resampler, "layers") and hasattr(resampler, "latents"):  # OpenFlamingo layout
            attn, ff = resampler.layers[0]
            ours = None
            fields = {
                "heads": attn.heads,
                "dim_head": attn.to_q.out_features // attn.heads,
                "ff_mult": ff[1].out_features / ff[1].in_features,
                "fused_kv": hasattr(attn, "to_kv"),
                "qk_norm": getattr(attn, "q_norm", None) is not None,
            }
            frames = getattr(resampler, "frame_embs", None)
            fields["max_num_frames"] = None if frames is None else frames.shape[0]
        else:
            raise TypeError(f"Cannot import a Perceiver resampler from {type(resampler).__name__}")
        latents = resampler.latents
        fields.update(
            depth=len(getattr(resampler, "blocks", getattr(resampler, "layers", []))),
            num_latents=latents.shape[0],
            **overrides,
        )
        width = latents.shape[1]
        if io is None:
            io = BridgeIO((EncoderInfo("vision", width, (16, 16), 24),), LMInfo(width))
        bridge = cls(PerceiverBridgeConfig(**fields), io).to(device=latents.device, dtype=latents.dtype)
        if ours is not None:
            bridge.resampler.load_state_dict(ours.state_dict())
        else:
            state = {k: v for k, v in resampler.state_dict().items() if k != "media_time_embs"}
            bridge.resampler.load_state_dict(state)
        return bridge


# Presets. OpenFlamingo: ViT-L/14 tokens (Dv 1024, 16 x 16 patches); 63.0M counts the resampler only (BRIDGES.md
# 1.7 / 7.1), since the projector to the LM width is this bridge's addition.
_VIT_L14 = EncoderInfo("openclip_vit_l14", 1024, (16, 16), 24)
register_preset(
    BridgePreset(
        "perceiver",
        "openflamingo",
        {},
        BridgeIO((_VIT_L14,), LMInfo(2048, 24, 16, 16, 128, 50280, "mpt")),
        expected_params=63_000_000,
        count="bridge.resampler",
        source="BRIDGES.md 1.7 / 7.1 (OpenFlamingo perceiver at Dv 1024, arithmetic from OF helpers.py)",
    )
)
# The paper's resampler (width 1536, 16 x 128 heads, squared ReLU, frame embeddings). BRIDGES.md 1.7: 188.9M by
# arithmetic against 194M reported [recall], so no expected count is asserted.
register_preset(
    BridgePreset(
        "perceiver",
        "flamingo_paper",
        {"heads": 16, "dim_head": 128, "activation": "squared_relu", "max_num_frames": 8},
        BridgeIO((EncoderInfo("nfnet_f6", 1536, (12, 12), 1),), LMInfo(2048, 24, 16, 16, 128)),
        count="bridge.resampler",
        source="BRIDGES.md 1.7 (Flamingo-3B)",
    )
)
register_preset(
    BridgePreset(
        "perceiver",
        "tiny",
        {"depth": 1, "heads": 2, "dim_head": 16, "num_latents": 8, "max_num_frames": 4},
        BridgeIO((EncoderInfo("tiny", 32, (4, 4), 2),), LMInfo(64, 2, 4, 4, 16, 128)),
    )
)
