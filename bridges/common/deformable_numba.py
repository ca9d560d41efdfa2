"""Deformable bilinear sampling on CPU as compiled loops (numba): the fastest CPU path of ``ms_deform_attn_core``.

The composed paths pay per op: ``grid_sample`` copies maps, grids and samples around its kernel, and the gather
sampler (:mod:`bridges.common.deformable_sampler`) runs some 80 library calls over per-corner vectors, each one a
fresh allocation. Here one loop per direction visits every (sample, query, head, level, point) once, computes its
four bilinear corners in registers and reads or writes the ``Dh`` channels of each in place:

* **Forward**: ``out[n, q, m] += w * bilinear_c * value[n, corner_c, m]`` over the in-bounds corners.
* **Backward**: per point, the dot products ``d_c = grad[n, q, m] . value[n, corner_c, m]`` give the attention
  weight's gradient ``sum_c bilinear_c d_c`` and the location's (the bilinear weights' derivatives times ``W`` or
  ``H``); the value gradient is the transposed write ``grad_value[n, corner_c, m] += w * bilinear_c * grad``.

Numbers follow ``F.grid_sample(align_corners=False, padding_mode="zeros")``: pixel ``x = ((2 loc - 1) + 1) W / 2
- 0.5`` in the input's precision (points exactly on a pixel border take grid_sample's corner, hence its one-sided
gradient), a corner outside the map reads zero, and a non-finite location makes its sample's whole output NaN.
The loops are serial: one thread, whatever torch's thread count (the demo's bridges are small and the
benchmarks run at one thread; a ``prange`` over the ``(sample, head)`` pairs, which write disjoint rows of the
value gradient, would parallelise them without races).

Wrapped as the custom operators ``bridgelab::ms_deform_sample_compiled[_backward]`` so that
``torch.utils.flop_counter`` counts the sampling as one op (``bridges.common.deformable`` gives its formula). CPU
and float32/float64 only, and only where numba is installed (:func:`available`); elsewhere ``ms_deform_attn_core``
uses the gather sampler or ``grid_sample``. The kernels compile on first use (about 10 s per dtype, then cached on
disk next to this file, or under ``NUMBA_CACHE_DIR``).
"""

from __future__ import annotations

import functools
import importlib.util
from collections.abc import Sequence
from typing import Any

import numpy as np
import torch
from torch import Tensor

SUPPORTED_DTYPES = (torch.float32, torch.float64)


def available() -> bool:
    """Whether numba is installed, so the kernels can be compiled."""
    return importlib.util.find_spec("numba") is not None


def supported(*tensors: Tensor) -> bool:
    """Whether the compiled kernels can take these tensors: numba present, all on CPU, all float32 or all float64."""
    dtype = tensors[0].dtype
    return (
        available()
        and dtype in SUPPORTED_DTYPES
        and all(t.device.type == "cpu" and t.dtype == dtype for t in tensors)
    )


_IN_REACH, _OUTSIDE, _NON_FINITE = 0, 1, 2


def _pixel_frame(lx, ly, half_w, half_h, w, h, one, half):  # type: ignore[no-untyped-def]
    """A location's place on a ``h x w`` map, as grid_sample computes it: ``(state, x0, y0, fx, fy)``, the top-left
    corner and the fractions past it; ``state`` is ``_IN_REACH`` (some corner is on the map), ``_OUTSIDE`` (none
    is) or ``_NON_FINITE``."""
    px = ((lx + lx - one) + one) * half_w - half
    py = ((ly + ly - one) + one) * half_h - half
    if not (np.isfinite(px) and np.isfinite(py)):
        return _NON_FINITE, 0, 0, px, py
    if not (px >= -one and px < w and py >= -one and py < h):
        return _OUTSIDE, 0, 0, px, py
    fx0, fy0 = np.floor(px), np.floor(py)
    return _IN_REACH, int(fx0), int(fy0), px - fx0, py - fy0


# the loops call ``_pixel``: this plain function until ``_kernels`` compiles it, so that numba resolves the name to
# the compiled helper when it compiles the loops (and numba is imported only on first use)
_pixel = _pixel_frame


def _forward_loops(value, locations, weights, heights, widths, starts, consts, out):  # type: ignore[no-untyped-def]
    """``out (N, Lq, M, Dh)`` = the sum of the sampled, weighted values. ``consts``: ``[1, 0.5, H_l / 2, W_l / 2,
    ...]`` in the inputs' dtype, so that float32 inputs are computed in float32 as grid_sample does."""
    n, lq, m, n_levels, n_points = weights.shape
    dh = value.shape[3]
    one, half = consts[0], consts[1]
    for pair in range(n * m):
        b = pair // m
        head = pair - b * m
        acc = np.empty(dh, dtype=value.dtype)  # a local accumulator vectorises better than writes through out
        for q in range(lq):
            acc[:] = 0
            for lvl in range(n_levels):
                h, w, start = heights[lvl], widths[lvl], starts[lvl]
                half_h, half_w = consts[2 + 2 * lvl], consts[3 + 2 * lvl]
                for p in range(n_points):
                    lx, ly = locations[b, q, head, lvl, p, 0], locations[b, q, head, lvl, p, 1]
                    state, x0, y0, fx, fy = _pixel(lx, ly, half_w, half_h, w, h, one, half)
                    if state == _NON_FINITE:
                        acc[:] = np.nan
                    if state != _IN_REACH:
                        continue
                    a = weights[b, q, head, lvl, p]
                    for dy in range(2):
                        y = y0 + dy
                        if y < 0 or y >= h:
                            continue
                        wy = fy if dy else one - fy
                        for dx in range(2):
                            x = x0 + dx
                            if x < 0 or x >= w:
                                continue
                            coef = (wy * (fx if dx else one - fx)) * a
                            cell = start + y * w + x
                            for c in range(dh):
                                acc[c] += coef * value[b, cell, head, c]
            out[b, q, head] = acc


def _backward_loops(  # type: ignore[no-untyped-def]
    grad, value, locations, weights, heights, widths, starts, consts, grad_value, grad_loc, grad_w
):
    """Gradients of :func:`_forward_loops` into the zero-filled ``grad_value``, ``grad_loc``, ``grad_w``."""
    n, lq, m, n_levels, n_points = weights.shape
    dh = value.shape[3]
    one, half = consts[0], consts[1]
    zero = one - one
    for pair in range(n * m):
        b = pair // m
        head = pair - b * m
        g = np.empty(dh, dtype=value.dtype)
        for q in range(lq):
            g[:] = grad[b, q, head]
            for lvl in range(n_levels):
                h, w, start = heights[lvl], widths[lvl], starts[lvl]
                half_h, half_w = consts[2 + 2 * lvl], consts[3 + 2 * lvl]
                for p in range(n_points):
                    lx, ly = locations[b, q, head, lvl, p, 0], locations[b, q, head, lvl, p, 1]
                    state, x0, y0, fx, fy = _pixel(lx, ly, half_w, half_h, w, h, one, half)
                    if state == _NON_FINITE:  # its output is NaN: so are these gradients
                        grad_w[b, q, head, lvl, p] = np.nan
                        grad_loc[b, q, head, lvl, p, 0] = np.nan
                        grad_loc[b, q, head, lvl, p, 1] = np.nan
                    if state != _IN_REACH:
                        continue
                    a = weights[b, q, head, lvl, p]
                    d00 = d01 = d10 = d11 = zero
                    for dy in range(2):
                        y = y0 + dy
                        if y < 0 or y >= h:
                            continue
                        wy = fy if dy else one - fy
                        for dx in range(2):
                            x = x0 + dx
                            if x < 0 or x >= w:
                                continue
                            coef = (wy * (fx if dx else one - fx)) * a
                            cell = start + y * w + x
                            dot = zero
                            for c in range(dh):
                                dot += g[c] * value[b, cell, head, c]
                                grad_value[b, cell, head, c] += coef * g[c]
                            if dy:
                                if dx:
                                    d11 = dot
                                else:
                                    d10 = dot
                            elif dx:
                                d01 = dot
                            else:
                                d00 = dot
                    gx, gy = one - fx, one - fy
                    grad_w[b, q, head, lvl, p] = gy * gx * d00 + gy * fx * d01 + fy * gx * d10 + fy * fx * d11
                    mixed = d11 - d10 - d01 + d00
                    grad_loc[b, q, head, lvl, p, 0] = ((d01 - d00) + fy * mixed) * (a * (half_w + half_w))
                    grad_loc[b, q, head, lvl, p, 1] = ((d10 - d00) + fx * mixed) * (a * (half_h + half_h))


@functools.cache
def _kernels() -> dict[str, Any]:
    """The compiled loops, built on first use (numba imports only then); compiled code is cached on disk."""
    import numba

    # reassociation lets the channel loops' sums use SIMD lanes (a different summation order, within rounding); no
    # "nnan"/"ninf": non-finite values must propagate as in grid_sample
    options = {"cache": True, "boundscheck": False, "fastmath": {"reassoc", "contract"}}
    global _pixel
    _pixel = numba.njit(inline="always", **options)(_pixel_frame)
    return {"forward": numba.njit(**options)(_forward_loops), "backward": numba.njit(**options)(_backward_loops)}


def _level_arrays(shapes: Sequence[int], dtype: torch.dtype) -> tuple[np.ndarray, ...]:
    """Heights, widths and first rows of the levels (int64), and the kernels' ``consts`` in ``dtype``."""
    heights = np.asarray(shapes[0::2], dtype=np.int64)
    widths = np.asarray(shapes[1::2], dtype=np.int64)
    starts = np.concatenate([[0], np.cumsum(heights * widths)[:-1]]).astype(np.int64)
    halves = np.stack([heights, widths], 1).reshape(-1) / 2  # H / 2 and W / 2 are exact in either dtype
    consts = np.concatenate([[1.0, 0.5], halves]).astype(torch.empty(0, dtype=dtype).numpy().dtype)
    return heights, widths, starts, consts


def _run(name: str, *arrays: Any) -> None:
    _kernels()[name](*arrays)


@torch.library.custom_op("bridgelab::ms_deform_sample_compiled", mutates_args=())
def ms_deform_sample_compiled(value: Tensor, locations: Tensor, weights: Tensor, shapes: list[int]) -> Tensor:
    """``value (N, S, M, Dh)``, ``locations (N, Lq, M, L, P, 2)``, ``weights (N, Lq, M, L, P)``, ``shapes [H_0,
    W_0, ...]`` -> ``(N, Lq, M * Dh)``."""
    n, _, m, d = value.shape
    lq = locations.shape[1]
    out = value.new_empty(n, lq, m, d)  # every row is written
    if out.numel():
        arrays = (value.detach().numpy(), locations.detach().numpy(), weights.detach().numpy())
        _run("forward", *arrays, *_level_arrays(shapes, value.dtype), out.numpy())
    return out.view(n, lq, m * d)


@ms_deform_sample_compiled.register_fake
def _(value: Tensor, locations: Tensor, weights: Tensor, shapes: list[int]) -> Tensor:
    n, _, m, d = value.shape
    return value.new_empty(n, locations.shape[1], m * d)


@torch.library.custom_op("bridgelab::ms_deform_sample_compiled_backward", mutates_args=())
def ms_deform_sample_compiled_backward(
    grad: Tensor, value: Tensor, locations: Tensor, weights: Tensor, shapes: list[int]
) -> tuple[Tensor, Tensor, Tensor]:
    """Gradients of :func:`ms_deform_sample_compiled` w.r.t. value, locations and weights."""
    n, _, m, d = value.shape
    grad_value = torch.zeros_like(value)
    grad_loc, grad_w = torch.zeros_like(locations), torch.zeros_like(weights)
    if weights.numel():
        g = grad.reshape(n, grad.shape[1], m, d).contiguous()
        arrays = (g.detach().numpy(), value.detach().numpy(), locations.detach().numpy(), weights.detach().numpy())
        grads = (grad_value.numpy(), grad_loc.numpy(), grad_w.numpy())
        _run("backward", *arrays, *_level_arrays(shapes, value.dtype), *grads)
    return grad_value, grad_loc, grad_w


@ms_deform_sample_compiled_backward.register_fake
def _(grad: Tensor, value: Tensor, locations: Tensor, weights: Tensor, shapes: list[int]) -> tuple[Tensor, ...]:
    return torch.empty_like(value), torch.empty_like(locations), torch.empty_like(weights)


class _CompiledSample(torch.autograd.Function):
    """Autograd around the two ops; saves the (contiguous) inputs, nothing else."""

    @staticmethod
    def forward(ctx: Any, value: Tensor, locations: Tensor, weights: Tensor, shapes: list[int]) -> Tensor:
        value, locations, weights = value.contiguous(), locations.contiguous(), weights.contiguous()
        ctx.save_for_backward(value, locations, weights)
        ctx.shapes = shapes
        return torch.ops.bridgelab.ms_deform_sample_compiled(value, locations, weights, shapes)

    @staticmethod
    def backward(ctx: Any, grad_out: Tensor) -> tuple[Tensor | None, ...]:
        grads = torch.ops.bridgelab.ms_deform_sample_compiled_backward(grad_out, *ctx.saved_tensors, ctx.shapes)
        return (*(grad if need else None for grad, need in zip(grads, ctx.needs_input_grad[:3])), None)


def compiled_sample(value: Tensor, shapes: Sequence[tuple[int, int]], locations: Tensor, weights: Tensor) -> Tensor:
    """``ms_deform_attn_core`` through the compiled kernels: ``value (N, S, M, Dh)``, ``locations (N, Lq, M, L,
    P, 2)``, ``weights (N, Lq, M, L, P)`` -> ``(N, Lq, M * Dh)``. Inputs must pass :func:`supported`."""
    flat = [int(v) for hw in shapes for v in hw]
    with torch.autocast("cpu", enabled=False):
        return _CompiledSample.apply(value, locations, weights, flat)
