"""Multi-scale deformable attention (Deformable DETR, Zhu et al. 2021) without its CUDA op.

Each query looks at ``n_points`` learned sampling locations per head and per feature level, around its reference
point, and takes a softmax-weighted sum of the bilinearly sampled values. Used by MMFuser (``bridges/mmfuser.py``).

* :func:`ms_deform_attn_core` is numerically Deformable-DETR's ``ms_deform_attn_core_pytorch`` (and transformers'
  ``MultiScaleDeformableAttention``), with no compiled CUDA op. On CPU (float32/float64) it runs compiled loops
  (:mod:`bridges.common.deformable_numba`, numba), or without numba one weighted gather with a sparse-kernel
  backward (:mod:`bridges.common.deformable_sampler`); elsewhere one ``F.grid_sample`` call for all levels, heads,
  points and samples when the levels share one shape (MMFuser: every level is the same ViT grid), otherwise one
  call per level.
* :class:`MSDeformAttn` is the reference module, with the reference parameter names (``sampling_offsets``,
  ``attention_weights``, ``value_proj``, ``output_proj``) and initialisation, so Deformable-DETR, MMFuser and
  transformers' ``DeformableDetrMultiscaleDeformableAttention`` state dicts load 1:1
  (:meth:`MSDeformAttn.from_reference`).

FLOPs: ``torch.utils.flop_counter`` has no formula for ``grid_sampler_2d``; :func:`grid_sample_flop_mapping` gives
one (bilinear = 4 multiply-adds = 8 FLOPs per sampled value) to pass as ``FlopCounterMode(custom_mapping=...)``, and
one for the gather sampler's op (the same 8, plus 2 for the weighted sum the grid_sample path counts as a matmul).
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from typing import Any

import torch
import torch.nn.functional as F
from einops import rearrange
from torch import nn

from bridges.common import deformable_numba, deformable_sampler

SpatialShapes = Sequence[tuple[int, int]]

#: FLOPs per output element of ``grid_sample`` by interpolation mode (0 bilinear, 1 nearest, 2 bicubic): the
#: multiply-adds that combine the 4 (bilinear) or 16 (bicubic) neighbours; index arithmetic is not counted.
GRID_SAMPLE_FLOPS = {0: 8, 1: 0, 2: 32}

#: CPU samplers in the order ``auto`` tries them: (module with ``supported`` and ``SUPPORTED_DTYPES``, sampler)
_CPU_SAMPLERS = {
    "numba": (deformable_numba, deformable_numba.compiled_sample),
    "gather": (deformable_sampler, deformable_sampler.gather_sample),
}


def _as_shapes(spatial_shapes: SpatialShapes | torch.Tensor) -> list[tuple[int, int]]:
    if isinstance(spatial_shapes, torch.Tensor):
        spatial_shapes = spatial_shapes.tolist()
    return [(int(h), int(w)) for h, w in spatial_shapes]


def ms_deform_attn_core(
    value: torch.Tensor,
    spatial_shapes: SpatialShapes | torch.Tensor,
    sampling_locations: torch.Tensor,
    attention_weights: torch.Tensor,
    implementation: str = "auto",
) -> torch.Tensor:
    """Sample every level at the given locations and take the attention-weighted sum.

    Args:
        value: ``(N, S, M, Dh)`` projected values of all levels, flattened level-major (``S = sum H_l * W_l``),
            each level in row-major ``(H_l, W_l)`` order.
        spatial_shapes: ``[(H_l, W_l)] * L``, as Python ints (a ``(L, 2)`` tensor is accepted and read once).
        sampling_locations: ``(N, Lq, M, L, P, 2)`` normalised ``(x, y)``; ``(0, 0)`` is the top-left corner of
            the map and ``(1, 1)`` the bottom-right one (``align_corners=False`` convention); outside samples read 0.
        attention_weights: ``(N, Lq, M, L, P)``, already normalised over ``(L, P)``.
        implementation: ``numba`` (compiled loops, :mod:`bridges.common.deformable_numba`; CPU, float32/float64),
            ``gather`` (library kernels, :mod:`bridges.common.deformable_sampler`; the same inputs), ``grid_sample``,
            or ``auto``: the first of these that takes the inputs. Same numbers either way, to rounding.

    Returns:
        ``(N, Lq, M * Dh)``.
    """
    shapes = _as_shapes(spatial_shapes)
    n, s, m, _ = value.shape
    levels = sampling_locations.shape[3]
    if len(shapes) != levels or sum(h * w for h, w in shapes) != s:
        raise ValueError(
            f"spatial_shapes {shapes} do not match value length {s} and {levels} sampled levels; give one (H, W) "
            "per level with sum(H * W) equal to the flattened value length."
        )
    tensors = (value, sampling_locations, attention_weights)
    if implementation == "auto":
        usable = (name for name, (module, _) in _CPU_SAMPLERS.items() if module.supported(*tensors))
        implementation = next(usable, "grid_sample")
    if implementation in _CPU_SAMPLERS:
        module, sample = _CPU_SAMPLERS[implementation]
        if not module.supported(*tensors):
            needs = " with numba installed" if implementation == "numba" else ""
            raise ValueError(
                f"ms_deform_attn_core: implementation={implementation!r} takes CPU tensors of one dtype among "
                f"{module.SUPPORTED_DTYPES}{needs}, got {[(t.device.type, t.dtype) for t in tensors]}; "
                "use 'grid_sample' or 'auto'."
            )
        return sample(value, shapes, sampling_locations, attention_weights)
    if implementation != "grid_sample":
        raise ValueError(
            "ms_deform_attn_core: implementation must be 'auto', 'numba', 'gather' or 'grid_sample', got "
            f"{implementation!r}."
        )
    grids = 2 * sampling_locations - 1
    if len(set(shapes)) == 1:  # one grid_sample over (level, sample, head) stacked on the batch axis
        h, w = shapes[0]
        maps = rearrange(value, "n (l h w) m d -> (l n m) d h w", l=levels, h=h, w=w)
        sampled = F.grid_sample(
            maps,
            rearrange(grids, "n q m l p c -> (l n m) q p c"),
            mode="bilinear",
            padding_mode="zeros",
            align_corners=False,
        )
        sampled = rearrange(sampled, "(l b) d q p -> b q (l p) d", l=levels)
    else:  # levels of different sizes: one call per level (a handful), still vectorised over samples and heads
        per_level = value.split([h * w for h, w in shapes], dim=1)
        outs = []
        for lvl, (h, w) in enumerate(shapes):
            maps = rearrange(per_level[lvl], "n (h w) m d -> (n m) d h w", h=h, w=w)
            grid = rearrange(grids[:, :, :, lvl], "n q m p c -> (n m) q p c")
            outs.append(F.grid_sample(maps, grid, mode="bilinear", padding_mode="zeros", align_corners=False))
        sampled = rearrange(torch.stack(outs, dim=-2), "b d q l p -> b q (l p) d")
    # the weighted sum over (level, point) as a batched (1, L*P) @ (L*P, Dh) product: faster than mul + sum
    weights = rearrange(attention_weights, "n q m l p -> (n m) q 1 (l p)")
    out = torch.matmul(weights, sampled)
    return rearrange(out, "(n m) q 1 d -> n q (m d)", n=n, m=m)


def ms_deform_attn_flops(
    num_queries: int, num_values: int, d_model: int, n_heads: int, n_levels: int, n_points: int
) -> int:
    """Forward FLOPs of :class:`MSDeformAttn` for one sample.

    Counts the four Linear layers, the bilinear sampling (:data:`GRID_SAMPLE_FLOPS`) and the weighted sum over
    ``(L, P)``; the softmax and the location arithmetic (elementwise) are not counted, as in
    ``torch.utils.flop_counter``.
    """
    samples = num_queries * d_model * n_levels * n_points  # sampled channel values
    linears = (
        2
        * d_model
        * (
            num_values * d_model  # value_proj
            + num_queries * n_heads * n_levels * n_points * 3  # sampling_offsets (x, y) + attention_weights
            + num_queries * d_model  # output_proj
        )
    )
    return linears + samples * (GRID_SAMPLE_FLOPS[0] + 2)


def _grid_sampler_2d_flop(
    input_shape: Sequence[int],
    grid_shape: Sequence[int],
    interpolation_mode: int,
    *args: Any,
    out_shape: Any = None,
    **kwargs: Any,
) -> int:
    n, c = input_shape[:2]
    h_out, w_out = grid_shape[1:3]
    return GRID_SAMPLE_FLOPS[int(interpolation_mode)] * n * c * h_out * w_out


def _gather_sample_flop(
    value_shape: Sequence[int], locations_shape: Sequence[int], *args: Any, out_shape: Any = None, **kwargs: Any
) -> int:
    n, _, m, d = value_shape
    lq, levels, points = locations_shape[1], locations_shape[3], locations_shape[4]
    return (GRID_SAMPLE_FLOPS[0] + 2) * n * lq * m * levels * points * d


def grid_sample_flop_mapping() -> dict[Any, Any]:
    """``custom_mapping`` for ``torch.utils.flop_counter.FlopCounterMode`` that counts the deformable sampling
    forward: ``grid_sample`` and the gather sampler's ``bridgelab::ms_deform_sample`` (same totals per module)."""
    return {
        torch.ops.aten.grid_sampler_2d: _grid_sampler_2d_flop,
        torch.ops.bridgelab.ms_deform_sample: _gather_sample_flop,
        torch.ops.bridgelab.ms_deform_sample_compiled: _gather_sample_flop,
    }


def reference_points_grid(
    height: int, width: int, device: torch.device | None = None, dtype: torch.dtype = torch.float32
) -> torch.Tensor:
    """Cell centres ``((x + 0.5) / W, (y + 0.5) / H)`` of a row-major ``(H, W)`` grid, ``(1, H * W, 1, 2)``."""
    ys = (torch.arange(height, device=device, dtype=dtype) + 0.5) / height
    xs = (torch.arange(width, device=device, dtype=dtype) + 0.5) / width
    y, x = torch.meshgrid(ys, xs, indexing="ij")
    return torch.stack((x.reshape(-1), y.reshape(-1)), -1)[None, :, None]


class MSDeformAttn(nn.Module):
    """Multi-scale deformable attention, Deformable-DETR's ``MSDeformAttn`` (``models/ops/modules/ms_deform_attn.py``).

    Weight names, identical in Deformable-DETR, MMFuser and transformers'
    ``DeformableDetrMultiscaleDeformableAttention`` (which also holds a parameter-free ``attn`` submodule):

    ==========================  =================================  ==========================
    ours / reference            shape                              role
    ==========================  =================================  ==========================
    ``sampling_offsets``        Linear(C, M * L * P * 2)           offsets, viewed (M, L, P, 2)
    ``attention_weights``       Linear(C, M * L * P)               logits, softmax over (L, P)
    ``value_proj``              Linear(C, C)                       values, viewed (M, Dh)
    ``output_proj``             Linear(C, C)                       output projection
    ==========================  =================================  ==========================

    Args:
        d_model: width ``C`` of queries, values and output.
        n_levels: feature levels ``L``.
        n_heads: heads ``M`` (``C % M == 0``).
        n_points: sampling points per head and level ``P``.
        upcast: run the sampling core in float32 for half-precision inputs (MMFuser's code does; Deformable-DETR's
            CUDA op requires it).
    """

    def __init__(
        self, d_model: int = 256, n_levels: int = 4, n_heads: int = 8, n_points: int = 4, upcast: bool = True
    ) -> None:
        super().__init__()
        if d_model % n_heads != 0:
            raise ValueError(
                f"MSDeformAttn: d_model {d_model} is not divisible by n_heads {n_heads}; change one of them."
            )
        self.d_model, self.n_levels, self.n_heads, self.n_points = d_model, n_levels, n_heads, n_points
        self.upcast = upcast
        self.sampling_offsets = nn.Linear(d_model, n_heads * n_levels * n_points * 2)
        self.attention_weights = nn.Linear(d_model, n_heads * n_levels * n_points)
        self.value_proj = nn.Linear(d_model, d_model)
        self.output_proj = nn.Linear(d_model, d_model)
        self.reset_parameters()

    def reset_parameters(self) -> None:
        """The reference initialisation: zero offset weights, a "ring" offset bias, uniform attention, Xavier values."""
        nn.init.zeros_(self.sampling_offsets.weight)
        bias = self.sampling_offsets.bias
        thetas = torch.arange(self.n_heads, dtype=torch.float32, device=bias.device) * (2.0 * math.pi / self.n_heads)
        ring = torch.stack([thetas.cos(), thetas.sin()], -1)
        ring = ring / ring.abs().max(-1, keepdim=True).values  # head h points along theta_h, on the unit square
        scale = torch.arange(1, self.n_points + 1, dtype=torch.float32, device=bias.device)  # point p at distance p+1
        grid = ring[:, None, None, :] * scale[None, None, :, None]  # (M, 1, P, 2)
        grid = grid.expand(self.n_heads, self.n_levels, self.n_points, 2)
        with torch.no_grad():
            bias.copy_(grid.reshape(-1).to(bias.dtype))
        nn.init.zeros_(self.attention_weights.weight)
        nn.init.zeros_(self.attention_weights.bias)
        for proj in (self.value_proj, self.output_proj):
            nn.init.xavier_uniform_(proj.weight)
            nn.init.zeros_(proj.bias)

    @classmethod
    def from_reference(cls, reference: nn.Module, upcast: bool = True) -> MSDeformAttn:
        """Build a copy of a Deformable-DETR / MMFuser ``MSDeformAttn`` or a transformers
        ``DeformableDetrMultiscaleDeformableAttention`` (same names, loaded strictly)."""
        module = cls(reference.d_model, reference.n_levels, reference.n_heads, reference.n_points, upcast=upcast)
        module.to(device=reference.value_proj.weight.device, dtype=reference.value_proj.weight.dtype)
        module.load_state_dict(reference.state_dict(), strict=True)
        return module

    def forward(
        self,
        query: torch.Tensor,
        reference_points: torch.Tensor,
        value_input: torch.Tensor,
        spatial_shapes: SpatialShapes | torch.Tensor,
        padding_mask: torch.Tensor | None = None,
    ) -> torch.Tensor:
        """Attend from ``query`` to ``value_input``.

        Args:
            query: ``(N, Lq, C)`` (add any positional embedding beforehand).
            reference_points: ``(N or 1, Lq, L or 1, 2)`` normalised ``(x, y)`` in ``[0, 1]``, or ``(..., 4)``
                boxes ``(cx, cy, w, h)``.
            value_input: ``(N, S, C)``, all levels flattened level-major.
            spatial_shapes: ``[(H_l, W_l)] * L`` (Python ints preferred; a tensor is read once).
            padding_mask: optional bool ``(N, S)``, True at padding positions (their values are zeroed).

        Returns:
            ``(N, Lq, C)``.
        """
        shapes = _as_shapes(spatial_shapes)
        n, lq, _ = query.shape
        if len(shapes) != self.n_levels:
            raise ValueError(f"MSDeformAttn was built for {self.n_levels} levels but got spatial_shapes {shapes}.")
        value = self.value_proj(value_input)
        if padding_mask is not None:
            value = value.masked_fill(padding_mask[..., None], 0.0)
        value = rearrange(value, "n s (m d) -> n s m d", m=self.n_heads)
        offsets = rearrange(
            self.sampling_offsets(query), "n q (m l p c) -> n q m l p c", m=self.n_heads, l=self.n_levels, c=2
        )
        logits = rearrange(self.attention_weights(query), "n q (m k) -> n q m k", m=self.n_heads)
        weights = rearrange(logits.softmax(-1), "n q m (l p) -> n q m l p", l=self.n_levels)
        if reference_points.shape[-1] == 2:
            # ref + offsets / (W, H) as the reference writes it, with both operands made contiguous over the
            # (level, point, xy) tail first: broadcasting them in place costs an element-wise loop of length 2
            normaliser = torch.tensor([(w, h) for h, w in shapes], device=query.device, dtype=offsets.dtype)
            tail = (self.n_levels, self.n_points, 2)
            normaliser = normaliser[:, None, :].expand(tail).contiguous()
            ref = reference_points[:, :, :, None, :].expand(-1, -1, *tail).contiguous()[:, :, None]
            locations = torch.addcdiv(ref, offsets, normaliser)
        elif reference_points.shape[-1] == 4:
            ref = reference_points[:, :, None, :, None]
            locations = ref[..., :2] + offsets / self.n_points * ref[..., 2:] * 0.5
        else:
            raise ValueError(
                f"reference_points must end in 2 (x, y) or 4 (cx, cy, w, h), got {reference_points.shape}."
            )
        out_dtype = value.dtype
        if self.upcast and value.dtype in (torch.float16, torch.bfloat16):
            value, locations, weights = value.float(), locations.float(), weights.float()
        out = ms_deform_attn_core(value, shapes, locations, weights)
        return self.output_proj(out.to(out_dtype))
