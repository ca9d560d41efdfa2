"""MMFuser (Cao et al., 2024, arXiv:2410.11829): fuse shallow ViT layers into the deep one, then LLaVA's MLP.

The deep layer's patch tokens are the queries; the shallow layers are the keys/values of a multi-scale deformable
cross-attention (one level per layer), refined by a single-level deformable "self" step, and added back to the
deep features through zero-initialised per-channel scales ``gamma``, so at initialisation the fuser is the
identity and the bridge is LLaVA-1.5 on the deep layer. The reference is ``MSCrossAttnBlock`` in
``yuecao0119/MMFuser`` ``llava/model/multimodal_projector/ms_cross_attn.py`` (BRIDGES.md section 5); the
projector is ``nn.Sequential(MSCrossAttnBlock, Linear, GELU, Linear)`` there.

Token count (a toolkit extension, not in the paper): ``num_tokens = s * s`` puts the queries on an ``s x s`` grid,
the deep layer average-pooled to it (MM1's pooling), with reference points at the pooled cells' centres; the keys
and values stay the full-resolution shallow layers, so each pooled query still samples the fine grid. The paper
keeps every patch (``num_tokens=None``), which this reduces to exactly.

Layers: the paper uses CLIP ViT-L/14-336 blocks 3, 8, 13, 18 (keys/values) and 23 (query), 1-indexed, i.e.
0-based block indices 2, 7, 12, 17, 22 = ``[-22, -17, -12, -7, -2]`` (:func:`encoders.base.resolve_layers`).
:func:`spread_layers` places the same depth fractions on any encoder. Video frames are treated as images.

Loading an MMFuser checkpoint (:func:`convert_reference_state_dict`): ``mm_projector.0.<name>`` ->
``fuser.<name>`` (every block name is kept: ``cross_attn``, ``query_norm``, ``feat_norm``, ``gamma1``, ``norm1``,
``self_attn``, ``gamma2``), ``mm_projector.{k+1}`` -> ``projector.{k}`` (Linear, GELU, Linear).
"""

from __future__ import annotations

import math
from collections.abc import Mapping
from dataclasses import dataclass

import torch
from einops import rearrange
from torch import nn

from bridges.base import BRIDGES, BridgeIO, BridgeNeeds, EncoderInfo, LMInfo, PrefixBridge
from bridges.common.attention import attend
from bridges.common.deformable import MSDeformAttn, ms_deform_attn_flops, reference_points_grid
from bridges.common.projector import build_projector, projector_flops
from bridges.common.checks import at_least
from bridges.common.token_grid import average_pool, pooled_side
from bridges.presets import BridgePreset, register_preset
from encoders.base import VisionFeatures, resolve_layers

#: The paper's layers as 1-indexed blocks of a 24-block ViT (keys/values first, query last).
PAPER_BLOCKS = (3, 8, 13, 18, 23)
PAPER_DEPTH = 24


def spread_layers(num_layers: int, blocks: tuple[int, ...] = PAPER_BLOCKS, depth: int = PAPER_DEPTH) -> tuple[int, ...]:
    """0-based block indices at the same depth fractions as ``blocks`` (1-indexed, of a ``depth``-block ViT).

    Block ``b`` maps to ``round_half_up(b / depth * num_layers) - 1`` clipped to ``[0, num_layers)``: exact at
    24 blocks (2, 7, 12, 17, 22); a 4-block encoder gets (0, 0, 1, 2, 3), a 12-block one (1, 3, 6, 8, 11).
    Repeated indices are allowed (the layer then serves several levels).
    """
    return tuple(min(num_layers - 1, max(0, math.floor(b / depth * num_layers + 0.5) - 1)) for b in blocks)


@dataclass
class MMFuserConfig:
    """MMFuser bridge settings. Defaults follow the reference code (MF ``ms_cross_attn.py``, ``scripts/mmfuser``).

    Attributes:
        layers: encoder layers (indices as in :func:`encoders.base.resolve_layers`); the last one is the query,
            the others the key/value levels in order. ``None``: :func:`spread_layers` over the encoder's depth
            (at 24 blocks exactly the paper's ``[-22, -17, -12, -7, -2]``).
        attention: ``deformable`` (paper and code) or ``dense`` (the paper's ablation: standard multi-head
            attention over all key/value tokens of all levels, and dense self-attention, both through SDPA).
        num_heads: heads of both attention steps (code: 16).
        num_points: sampling points per head and level (code: 4; deformable only).
        self_step: keep the refinement step (code: a single-level deformable attention on the cross output);
            ``False`` is the "cross-attention only" ablation.
        init_values: initial value of the ``gamma1``/``gamma2`` scales (code: 0, so the fuser starts as identity).
        norm_eps: LayerNorm epsilon (code: 1e-6).
        projector: LLaVA projector after the fuser (code and LLaVA-1.5: ``mlp2x_gelu``).
        num_tokens: visual tokens per image, a square ``s * s`` with ``s`` at most the grid's shorter side: the
            queries' grid (see the module docstring). ``None`` = every patch, as in the paper.
    """

    layers: list[int] | None = None
    attention: str = "deformable"
    num_heads: int = 16
    num_points: int = 4
    self_step: bool = True
    init_values: float = 0.0
    norm_eps: float = 1e-6
    projector: str = "mlp2x_gelu"
    num_tokens: int | None = None

    def __post_init__(self) -> None:
        """Range checks: a bad value fails here, naming the key, the value and the allowed range."""
        at_least(self, 1, "num_heads", "num_points")
        at_least(self, 1, "num_tokens", optional=True)


class DenseAttn(nn.Module):
    """Standard multi-head attention (for the dense ablation): ``q_proj``, fused ``kv_proj``, ``out_proj``."""

    def __init__(self, d_model: int, n_heads: int) -> None:
        super().__init__()
        self.n_heads = n_heads
        self.q_proj = nn.Linear(d_model, d_model)
        self.kv_proj = nn.Linear(d_model, 2 * d_model)
        self.out_proj = nn.Linear(d_model, d_model)
        # Xavier as the reference block's pass over its matrices; K and V initialised as two (C, C) matrices
        for weight in (self.q_proj.weight, *self.kv_proj.weight.chunk(2), self.out_proj.weight):
            nn.init.xavier_uniform_(weight)
        for proj in (self.q_proj, self.kv_proj, self.out_proj):
            nn.init.zeros_(proj.bias)

    def forward(self, query: torch.Tensor, context: torch.Tensor) -> torch.Tensor:
        """``query (N, Lq, C)``, ``context (N, S, C)`` -> ``(N, Lq, C)``."""
        k, v = self.kv_proj(context).chunk(2, dim=-1)
        return self.out_proj(attend(self.q_proj(query), k, v, self.n_heads))

    @staticmethod
    def flops(num_queries: int, num_keys: int, d_model: int) -> int:
        return 2 * d_model * (2 * num_queries * d_model + 2 * num_keys * d_model + 2 * num_queries * num_keys)


class MSCrossAttnBlock(nn.Module):
    """The fuser: deep-layer queries attend to the shallow levels, then a self step, added back via ``gamma``.

    ``out = q + gamma1 * (A + gamma2 * Self(LN_1(A)))`` with ``A = Cross(LN_q(q), LN_feat(levels))``.
    """

    def __init__(self, d_model: int, n_levels: int, config: MMFuserConfig) -> None:
        super().__init__()
        self.n_levels, self.dense = n_levels, config.attention == "dense"
        if self.dense:
            self.cross_attn: nn.Module = DenseAttn(d_model, config.num_heads)
        else:
            self.cross_attn = MSDeformAttn(d_model, n_levels, config.num_heads, config.num_points)
        self.query_norm = nn.LayerNorm(d_model, eps=config.norm_eps)
        self.feat_norm = nn.LayerNorm(d_model, eps=config.norm_eps)
        self.gamma1 = nn.Parameter(torch.full((d_model,), config.init_values))
        self.self_attn: nn.Module | None = None
        if config.self_step:
            self.norm1 = nn.LayerNorm(d_model, eps=config.norm_eps)
            self.self_attn = (
                DenseAttn(d_model, config.num_heads)
                if self.dense
                else MSDeformAttn(d_model, 1, config.num_heads, config.num_points)
            )
            self.gamma2 = nn.Parameter(torch.full((d_model,), config.init_values))

    def forward(
        self,
        query: torch.Tensor,
        levels: torch.Tensor,
        grid: tuple[int, int],
        query_grid: tuple[int, int] | None = None,
    ) -> torch.Tensor:
        """Fuse.

        Args:
            query: ``(N, Hq*Wq, C)`` deep-layer tokens, row-major over ``query_grid``.
            levels: ``(N, L*h*w, C)`` shallow layers concatenated level-major, each row-major over ``grid``.
            grid: the patch grid ``(h, w)`` of the levels.
            query_grid: the queries' grid ``(Hq, Wq)``; ``None`` = ``grid`` (the paper).

        Returns:
            ``(N, Hq*Wq, C)``.
        """
        query_grid = query_grid or grid
        q = self.query_norm(query)
        kv = self.feat_norm(levels)
        if self.dense:
            attn = self.cross_attn(q, kv)
        else:
            ref = reference_points_grid(*query_grid, device=query.device)  # float32 even for half inputs
            attn = self.cross_attn(q, ref, kv, [grid] * self.n_levels)
        if self.self_attn is not None:
            a1 = self.norm1(attn)
            refined = self.self_attn(a1, a1) if self.dense else self.self_attn(a1, ref, a1, [query_grid])
            attn = attn + self.gamma2 * refined
        return query + self.gamma1 * attn


@BRIDGES.register("mmfuser", MMFuserConfig)
class MMFuserBridge(PrefixBridge):
    """MMFuser prefix bridge: :class:`MSCrossAttnBlock` over one encoder's layers, then the LLaVA projector.

    Parameter groups: ``bridge.fuser`` (the block, 5.19M at paper scale) and ``bridge.projector`` (the MLP); the
    reference trains both in both stages, so a stage selects them together with ``bridge*``.
    """

    def __init__(self, config: MMFuserConfig, io: BridgeIO) -> None:
        super().__init__(config, io)
        if len(io.encoders) != 1:
            raise ValueError(f"mmfuser fuses the layers of one encoder but got {len(io.encoders)}; use one encoder.")
        if config.attention not in ("deformable", "dense"):
            raise ValueError(f"mmfuser.attention must be 'deformable' or 'dense', got '{config.attention}'.")
        enc = io.encoder
        if enc.width % config.num_heads != 0:
            raise ValueError(
                f"mmfuser.num_heads={config.num_heads} does not divide the encoder width {enc.width}; pick a divisor."
            )
        layers = (
            spread_layers(enc.num_layers) if config.layers is None else resolve_layers(config.layers, enc.num_layers)
        )
        if len(layers) < 2:
            raise ValueError(f"mmfuser.layers needs a query layer and at least one key/value layer, got {layers}.")
        self.layers: tuple[int, ...] = layers
        self.check_io()
        self.side = None if config.num_tokens is None else pooled_side("mmfuser", config.num_tokens, enc.grid)
        self.fuser = MSCrossAttnBlock(enc.width, len(layers) - 1, config)
        self.projector = build_projector(config.projector, enc.width, io.lm.hidden_size)

    @property
    def needs(self) -> BridgeNeeds:
        return BridgeNeeds(num_encoders=1, layers=tuple(sorted(set(self.layers))), needs_grid=True, with_cls=False)

    def param_groups(self) -> dict[str, list[nn.Parameter]]:
        return {"bridge.fuser": list(self.fuser.parameters()), "bridge.projector": list(self.projector.parameters())}

    @property
    def query_grid(self) -> tuple[int, int]:
        """The queries' grid: the encoder grid, or ``s x s`` with ``num_tokens = s * s``."""
        return self.io.encoder.grid if self.side is None else (self.side, self.side)

    def num_visual_tokens(self, num_frames: int = 1) -> int:
        return num_frames * math.prod(self.query_grid)

    def fuser_flops(self) -> int:
        """Forward FLOPs of the fuser for one image (see :func:`ms_deform_attn_flops` for what is counted)."""
        keys, queries = math.prod(self.io.encoder.grid), math.prod(self.query_grid)
        width, cfg, levels = self.io.encoder.width, self.config, len(self.layers) - 1
        if cfg.attention == "dense":
            flops = DenseAttn.flops(queries, levels * keys, width)
            return flops + (DenseAttn.flops(queries, queries, width) if cfg.self_step else 0)
        flops = ms_deform_attn_flops(queries, levels * keys, width, cfg.num_heads, levels, cfg.num_points)
        if cfg.self_step:
            flops += ms_deform_attn_flops(queries, queries, width, cfg.num_heads, 1, cfg.num_points)
        return flops

    def flops_per_media(self, num_frames: int = 1) -> int:
        """Fuser + projector FLOPs; matmuls as 2 x multiply-adds, bilinear sampling as 8 per sampled value
        (``bridges.common.deformable.GRID_SAMPLE_FLOPS``); norms, softmax, pooling and residuals are not counted."""
        tokens = self.num_visual_tokens()
        proj = projector_flops(self.config.projector, self.io.encoder.width, self.io.lm.hidden_size, tokens)
        return num_frames * (self.fuser_flops() + proj)

    def _features(self, features: Mapping[str, VisionFeatures]) -> VisionFeatures:
        name = self.io.encoder.name
        if name in features:
            return features[name]
        if len(features) == 1:
            return next(iter(features.values()))
        raise KeyError(f"mmfuser expects features of encoder '{name}', got {sorted(features)}.")

    def forward(
        self,
        features: Mapping[str, VisionFeatures],
        num_frames: int = 1,
        instruction: tuple[torch.Tensor, torch.Tensor] | None = None,
    ) -> torch.Tensor:
        """``features`` of ``N_media * num_frames`` images -> ``(N_media, num_frames * Hq * Wq, D_lm)``."""
        feats = self._features(features)
        if feats.width != self.io.encoder.width:
            raise ValueError(f"mmfuser was built for width {self.io.encoder.width} but features have {feats.width}.")
        n_images = feats.num_images
        if n_images % num_frames != 0:
            raise ValueError(f"mmfuser got {n_images} images, not a multiple of num_frames={num_frames}.")
        dtype = self.fuser.gamma1.dtype  # encoders may run in another precision than the bridge
        tokens = [feats.layer(idx)[:, feats.num_prefix :].to(dtype) for idx in self.layers]  # each (N, h*w, C)
        h, w = feats.grid
        if tokens[0].shape[1] != h * w:
            raise ValueError(f"mmfuser needs the full patch grid {h}x{w}, got {tokens[0].shape[1]} tokens.")
        query = tokens[-1]
        if self.side is not None:
            query = average_pool(query, (h, w), self.side)
        fused = self.fuser(query, torch.cat(tokens[:-1], dim=1), (h, w), self.query_grid)
        return rearrange(self.projector(fused), "(n f) t d -> n (f t) d", f=num_frames)


def convert_reference_state_dict(
    state_dict: Mapping[str, torch.Tensor], prefix: str = "model.mm_projector."
) -> dict[str, torch.Tensor]:
    """Rename an MMFuser checkpoint's ``<prefix>0.*`` / ``<prefix>{k}.*`` entries to this bridge's names."""
    out: dict[str, torch.Tensor] = {}
    for key, tensor in state_dict.items():
        if not key.startswith(prefix):
            continue
        index, _, rest = key[len(prefix) :].partition(".")
        out[f"fuser.{rest}" if index == "0" else f"projector.{int(index) - 1}.{rest}"] = tensor
    if not out:
        raise KeyError(f"No '{prefix}*' entries in the state dict; pass the prefix the checkpoint uses.")
    return out


_PAPER_IO = BridgeIO(encoders=(EncoderInfo("clip_vit_l14_336", 1024, (24, 24), 24),), lm=LMInfo(hidden_size=4096))
register_preset(
    BridgePreset(
        bridge="mmfuser",
        name="mmfuser_7b",
        overrides={"layers": [-22, -17, -12, -7, -2]},
        io=_PAPER_IO,
        expected_params=5_190_000,
        source="BRIDGES.md 7.1 / 5.4: MMFuser fuser (MSCrossAttnBlock) 5.19M, without the mlp2x_gelu projector",
        count="bridge.fuser",
    )
)
register_preset(
    BridgePreset(
        bridge="mmfuser",
        name="mmfuser_7b_total",
        overrides={"layers": [-22, -17, -12, -7, -2]},
        io=_PAPER_IO,
        expected_params=26_170_000,
        source="BRIDGES.md 7.1: 5.19M fuser + 20.98M LLaVA-1.5 7B mlp2x_gelu (the whole trained mm_projector)",
        count="bridge",
    )
)
register_preset(
    BridgePreset(
        bridge="mmfuser",
        name="tiny",
        overrides={"num_heads": 4, "num_points": 2},
        io=BridgeIO(encoders=(EncoderInfo("tiny_vit", 64, (4, 4), 4),), lm=LMInfo(hidden_size=64)),
    )
)
