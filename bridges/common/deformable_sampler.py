"""Deformable bilinear sampling on CPU as one weighted gather: a faster stand-in for ``grid_sample`` there.

:func:`bridges.common.deformable.ms_deform_attn_core` samples every (sample, query, head, level, point) location
bilinearly and takes the attention-weighted sum. ``grid_sample`` does this in fwd+bwd with copies of the maps, grids
and samples around it, and its CPU backward scatters one value at a time. Here the same numbers (``align_corners=
False``, zero padding) come from three library kernels that work on whole rows of ``Dh`` channels:

* **Table**: every level is zero-padded by one cell on each side; the rows of ``(N, S_pad, M, Dh)`` are the table
  (sample, padded cell, head). A point whose top-left corner ``(x0, y0)`` lies in the padded map reads rows
  ``tl + M * (0, 1, Wp, Wp + 1)``: no clamping or masking per corner, outside corners read the zero padding. A point
  further out reads nothing (weight 0), as in ``grid_sample``.
* **Forward**: one ``F.embedding_bag`` over the ``4 * L * P`` corner rows of each (sample, query, head), weighted
  by bilinear weight x attention weight: the copies, the per-level loop and the weighted-sum matmul disappear.
* **Backward**: ``torch.sparse.sampled_addmm`` (a sampled dense-dense product on the forward's CSR pattern) gives
  the dot product of the output gradient with every corner row, from which the attention-weight and location
  gradients follow in closed form. The value gradient is the transposed gather: the points are sorted by their
  top-left row (an int32 sort) and one ``embedding_bag`` per corner sums their weighted output gradients, which
  are then added at the corner's offset.

The two steps are the custom operators ``bridgelab::ms_deform_sample`` and ``bridgelab::ms_deform_sample_backward``
so that ``torch.utils.flop_counter`` sees the sampling as one op (``bridges.common.deformable`` gives its formula),
as it sees ``grid_sample``. CPU and float32/float64 only (:func:`supported`); elsewhere the core uses
``grid_sample``.
"""

from __future__ import annotations

import warnings
from collections.abc import Sequence
from typing import Any

import torch
import torch.nn.functional as F
from torch import Tensor

#: dtypes the gather kernels (``embedding_bag``, ``sampled_addmm``) take on CPU.
SUPPORTED_DTYPES = (torch.float32, torch.float64)


def supported(*tensors: Tensor) -> bool:
    """Whether the gather sampler can take these tensors: all on CPU, all float32 or all float64."""
    dtype = tensors[0].dtype
    return dtype in SUPPORTED_DTYPES and all(t.device.type == "cpu" and t.dtype == dtype for t in tensors)


def _pairs(shapes: Sequence[int]) -> list[tuple[int, int]]:
    return [(int(shapes[i]), int(shapes[i + 1])) for i in range(0, len(shapes), 2)]


def _runs(levels: list[tuple[int, int]]) -> list[tuple[int, int, int, int]]:
    """Consecutive levels of one shape, handled together: ``(first level, count, H, W)`` per run."""
    runs: list[tuple[int, int, int, int]] = []
    for lvl, (h, w) in enumerate(levels):
        if runs and runs[-1][2:] == (h, w):
            runs[-1] = (runs[-1][0], runs[-1][1] + 1, h, w)
        else:
            runs.append((lvl, 1, h, w))
    return runs


def _run_rows(count: int, h: int, w: int, n: int, m: int) -> int:
    return n * count * (h + 2) * (w + 2) * m


def _index_dtype(levels: list[tuple[int, int]], n: int, m: int, entries: int) -> torch.dtype:
    rows = max(_run_rows(c, h, w, n, m) for _, c, h, w in _runs(levels))
    return torch.int32 if max(rows, entries) < 2**31 else torch.int64


@torch.library.custom_op("bridgelab::ms_deform_sample", mutates_args=())
def ms_deform_sample(
    value: Tensor, locations: Tensor, weights: Tensor, shapes: list[int]
) -> tuple[Tensor, Tensor, Tensor, Tensor, Tensor, Tensor]:
    """Bilinear sampling + attention-weighted sum, and what the backward needs.

    Args:
        value: ``(N, S, M, Dh)``, levels flattened level-major, each row-major.
        locations: ``(N, Lq, M, L, P, 2)`` normalised ``(x, y)``, ``align_corners=False`` convention.
        weights: ``(N, Lq, M, L, P)`` attention weights.
        shapes: ``[H_0, W_0, H_1, W_1, ...]``.

    Returns:
        ``out (N, Lq, M * Dh)``, then for the backward, as flat buffers of one block per run of same-shape levels
        (``R = N * Lq * M`` bags, ``G`` levels in the run): the zero-padded value tables (run ``(N, G, H + 2, W + 2,
        M)`` rows of ``Dh``), the corner rows ``(R, G, P, 4)`` (int32 when they fit; local to the run's table), the
        fractional parts ``(2, R, G, P)``, the bilinear weights times validity ``(4, R, G, P)`` (corners ``00, 01,
        10, 11`` as ``dy dx``) and the attention weights times validity ``(R, G, P)``.
    """
    levels = _pairs(shapes)
    n, _, m, d = value.shape
    _, lq, _, n_levels, n_points, _ = locations.shape
    r = n * lq * m
    itype = _index_dtype(levels, n, m, r * n_levels * n_points * 4)
    loc, att = locations.reshape(r, n_levels, n_points, 2), weights.reshape(r, n_levels, n_points)
    runs = _runs(levels)
    table = value.new_empty(sum(_run_rows(c, h, w, n, m) for _, c, h, w in runs), d)
    points = r * n_levels * n_points
    index = torch.empty(4 * points, dtype=itype)
    frac, bilinear, attn = value.new_empty(2 * points), value.new_empty(4 * points), value.new_empty(points)
    out: Tensor | None = None
    row0 = cell0 = 0
    for lvl, count, h, w in runs:
        hp, wp, rows, size = h + 2, w + 2, _run_rows(count, h, w, n, m), r * count * n_points
        first = r * lvl * n_points
        tab = table[row0 : row0 + rows].view(n, count, hp, wp, m, d)
        for border in (tab[:, :, 0], tab[:, :, -1], tab[:, :, :, 0], tab[:, :, :, -1]):
            border.zero_()
        tab[:, :, 1:-1, 1:-1] = value[:, cell0 : cell0 + count * h * w].view(n, count, h, w, m, d)
        sl = slice(lvl, lvl + count)
        # pixel coordinates with grid_sample's own arithmetic (grid = 2 loc - 1, then (grid + 1) * W / 2 - 0.5), so
        # that points exactly on a pixel border (a kink: MMFuser's initial offsets are whole pixels) take the same
        # corner, hence the same one-sided gradient
        px = (loc[:, sl, :, 0] * 2).sub_(1).add_(1).mul_(w / 2).sub_(0.5)
        py = (loc[:, sl, :, 1] * 2).sub_(1).add_(1).mul_(h / 2).sub_(0.5)
        # top-left corner x0 in [-1, W - 1] (the padded map but for its last row/column); NaN is outside
        valid = ((px >= -1) & (px < w) & (py >= -1) & (py < h)).to(value.dtype)
        non_finite = (px - px).add_(py - py)  # NaN at NaN/inf locations, which grid_sample turns into NaN outputs
        px, py = px.nan_to_num_(0.0).mul_(valid), py.nan_to_num_(0.0).mul_(valid)  # outside: any cell, weight 0
        cx, cy = px.floor(), py.floor()
        run_frac = frac[2 * first : 2 * (first + size)].view(2, r, count, n_points)
        fx, fy = torch.sub(px, cx, out=run_frac[0]), torch.sub(py, cy, out=run_frac[1])
        a = torch.mul(att[:, sl], valid, out=attn[first : first + size].view(r, count, n_points)).add_(non_finite)
        # table row of the top-left corner: ((n, level, y, x) cell) * M + head, bags r = (n, q, head)
        base = (torch.arange(n * count, dtype=itype) * (hp * wp) + wp + 1).view(n, 1, 1, count, 1) * m  # + (1, 1): pad
        base = base + torch.arange(m, dtype=itype).view(1, 1, m, 1, 1)
        cell = torch.add(cx.to(itype), cy.to(itype), alpha=wp).view(n, lq, m, count, n_points)
        top_left = torch.add(base, cell, alpha=m).view(r, count, n_points)
        run_index = index[4 * first : 4 * (first + size)].view(r, count, n_points, 4)
        run_bilinear = bilinear[4 * first : 4 * (first + size)].view(4, r, count, n_points)
        weights_run = value.new_empty(r, count, n_points, 4)
        low_y, high_y, gx = (1 - fy) * valid, fy * valid, 1 - fx
        corners = ((0, low_y, gx), (m, low_y, fx), (wp * m, high_y, gx), ((wp + 1) * m, high_y, fx))
        for c, (shift, wy, wx) in enumerate(corners):
            torch.add(top_left, shift, out=run_index[..., c])
            torch.mul(torch.mul(wy, wx, out=run_bilinear[c]), a, out=weights_run[..., c])
        sampled = F.embedding_bag(
            run_index.view(r, -1) if r else run_index.view(0, count * n_points * 4),
            tab.view(-1, d),
            per_sample_weights=weights_run.view(r, -1) if r else weights_run.view(0, count * n_points * 4),
            mode="sum",
        )
        out = sampled if out is None else out.add_(sampled)
        row0, cell0 = row0 + rows, cell0 + count * h * w
    assert out is not None
    return out.view(n, lq, m * d), table, index, frac, bilinear, attn


@ms_deform_sample.register_fake
def _(value: Tensor, locations: Tensor, weights: Tensor, shapes: list[int]) -> tuple[Tensor, ...]:
    levels = _pairs(shapes)
    n, _, m, d = value.shape
    _, lq, _, n_levels, n_points, _ = locations.shape
    points = n * lq * m * n_levels * n_points
    rows = sum(_run_rows(c, h, w, n, m) for _, c, h, w in _runs(levels))
    return (
        value.new_empty(n, lq, m * d),
        value.new_empty(rows, d),
        value.new_empty(4 * points, dtype=_index_dtype(levels, n, m, 4 * points)),
        value.new_empty(2 * points),
        value.new_empty(4 * points),
        value.new_empty(points),
    )


@torch.library.custom_op("bridgelab::ms_deform_sample_backward", mutates_args=())
def ms_deform_sample_backward(
    grad: Tensor,
    table: Tensor,
    index: Tensor,
    frac: Tensor,
    bilinear: Tensor,
    attn: Tensor,
    shapes: list[int],
    n_points: int,
    need_value: bool,
    need_geometry: bool,
) -> tuple[Tensor, Tensor, Tensor]:
    """Gradients of :func:`ms_deform_sample`'s ``out (N, Lq, M * Dh)`` w.r.t. value ``(N, S, M, Dh)``, locations
    ``(N, Lq, M, L, P, 2)`` and weights ``(N, Lq, M, L, P)``; zeros for those not needed."""
    levels = _pairs(shapes)
    n, lq = grad.shape[:2]
    n_levels, d = len(levels), table.shape[1]
    m = grad.shape[2] // d
    r = n * lq * m
    g = grad.reshape(r, d).contiguous()
    # every cell is written below when there are points (each run's cells are one torch.add's output)
    grad_value = (table.new_empty if need_value and r else table.new_zeros)(n, sum(h * w for h, w in levels), m, d)
    make = table.new_empty if need_geometry else table.new_zeros
    grad_loc, grad_w = make(r, n_levels, n_points, 2), make(r, n_levels, n_points)
    row0 = cell0 = 0
    for lvl, count, h, w in _runs(levels):
        rows, size, first = _run_rows(count, h, w, n, m), r * count * n_points, r * lvl * n_points
        tab = table[row0 : row0 + rows]
        idx = index[4 * first : 4 * (first + size)].view(r, count, n_points, 4)
        b = bilinear[4 * first : 4 * (first + size)].view(4, r, count, n_points)
        a = attn[first : first + size].view(r, count, n_points)
        if need_geometry and r:
            dots = _corner_dots(g, tab, idx)  # (R, G, P, 4)
            d00, d01, d10, d11 = dots.unbind(-1)
            out_w = torch.mul(b[0], d00, out=grad_w[:, lvl : lvl + count])
            for c, dc in ((1, d01), (2, d10), (3, d11)):
                out_w.addcmul_(b[c], dc)
            frac_run = frac[2 * first : 2 * (first + size)].view(2, r, count, n_points)
            mixed = d11 - d10 - d01 + d00
            scale = a * w  # d x / d loc_x = W (d y / d loc_y = H)
            grad_x = torch.addcmul(d01 - d00, frac_run[1], mixed)
            torch.mul(grad_x, scale, out=grad_loc[:, lvl : lvl + count, :, 0])
            grad_y = torch.addcmul(d10 - d00, frac_run[0], mixed)
            torch.mul(grad_y, scale.mul_(h / w), out=grad_loc[:, lvl : lvl + count, :, 1])
        if need_value and r:
            cells = grad_value[:, cell0 : cell0 + count * h * w].view(n, count, h, w, m, d)
            _scatter_value_grad(cells, g, idx, b * a, rows)
        row0, cell0 = row0 + rows, cell0 + count * h * w
    shape = (n, lq, m, n_levels, n_points)
    return grad_value, grad_loc.view(*shape, 2), grad_w.view(shape)


def _corner_dots(g: Tensor, table: Tensor, index: Tensor) -> Tensor:
    """``g (R, Dh)`` . the table row of every corner in ``index (R, G, P, 4)`` -> ``(R, G, P, 4)``.

    A sampled dense-dense product (``torch.sparse.sampled_addmm``) on the CSR pattern of the corner rows.
    """
    r = index.shape[0]
    per_row = index[0].numel()
    crow = torch.arange(0, r * per_row + 1, per_row, dtype=index.dtype)
    with warnings.catch_warnings():  # "sparse CSR support is in beta": its CPU sampled_addmm is what is used here
        warnings.filterwarnings("ignore", message=".*Sparse CSR tensor support is in beta.*")
        pattern = torch.sparse_csr_tensor(
            crow, index.view(-1), g.new_zeros(index.numel()), size=(r, table.shape[0]), check_invariants=False
        )
    return torch.sparse.sampled_addmm(pattern, g, table.t(), beta=0.0).values().view(index.shape)


def _scatter_value_grad(cells: Tensor, g: Tensor, index: Tensor, corner_weights: Tensor, rows: int) -> None:
    """Write into ``cells (N, G, H, W, M, Dh)`` the weighted output gradients ``g (R, Dh)`` gathered at each cell.

    A transposed gather: the points sorted by top-left table row, then per corner an ``embedding_bag`` whose bags
    are the run's table rows (``G_c[row]`` = sum of ``w_c * g`` over the points whose top-left is that row); the
    value at padded cell ``(y, x)`` gets ``G_00[y, x] + G_01[y, x - 1] + G_10[y - 1, x] + G_11[y - 1, x - 1]``.
    ``index (R, G, P, 4)``, ``corner_weights (4, R, G, P)``.
    """
    per_bag = index.shape[1] * index.shape[2]
    keys = index[..., 0].reshape(-1)
    order = torch.sort(keys, stable=True).indices
    counts = torch.bincount(keys, minlength=rows)  # bag ``row`` starts after every point of a smaller row
    offsets = (counts.cumsum(0) - counts).to(index.dtype)
    bag_input = (order // per_bag).to(index.dtype)  # the point's bag r, i.e. its row of g
    weights = corner_weights.reshape(4, -1).index_select(1, order)
    n, count, h, w = cells.shape[:4]
    padded = (n, count, h + 2, w + 2, *cells.shape[4:])
    # one corner at a time, each freed before the next: four live padded tables would be fresh pages (page
    # faults) on every call, while one freed and reallocated at the same size is reused by the allocator
    for c, (dy, dx) in enumerate(((0, 0), (0, 1), (1, 0), (1, 1))):
        part = F.embedding_bag(bag_input, g, offsets, mode="sum", per_sample_weights=weights[c]).view(padded)
        shifted = part[:, :, 1 - dy : h + 1 - dy, 1 - dx : w + 1 - dx]
        cells.copy_(shifted) if c == 0 else cells.add_(shifted)
        del part, shifted


@ms_deform_sample_backward.register_fake
def _(
    grad: Tensor,
    table: Tensor,
    index: Tensor,
    frac: Tensor,
    bilinear: Tensor,
    attn: Tensor,
    shapes: list[int],
    n_points: int,
    need_value: bool,
    need_geometry: bool,
) -> tuple[Tensor, Tensor, Tensor]:
    levels = _pairs(shapes)
    n, lq = grad.shape[:2]
    m = grad.shape[2] // table.shape[1]
    s = sum(h * w for h, w in levels)
    return (
        table.new_empty(n, s, m, table.shape[1]),
        table.new_empty(n, lq, m, len(levels), n_points, 2),
        table.new_empty(n, lq, m, len(levels), n_points),
    )


class _GatherSample(torch.autograd.Function):
    """Autograd around the two ops. Not ``torch.library.register_autograd``: its generated Function materialises a
    zero gradient for each of the forward op's five saved outputs on every backward (~a table's worth of memset)."""

    @staticmethod
    def forward(ctx: Any, value: Tensor, locations: Tensor, weights: Tensor, shapes: list[int]) -> Tensor:
        out, *saved = torch.ops.bridgelab.ms_deform_sample(value, locations, weights, shapes)
        ctx.save_for_backward(*saved)
        ctx.shapes, ctx.n_points = shapes, locations.shape[4]
        return out

    @staticmethod
    def backward(ctx: Any, grad_out: Tensor) -> tuple[Tensor | None, ...]:
        need_value, need_loc, need_w = ctx.needs_input_grad[:3]
        grads = torch.ops.bridgelab.ms_deform_sample_backward(
            grad_out, *ctx.saved_tensors, ctx.shapes, ctx.n_points, need_value, need_loc or need_w
        )
        return (grads[0] if need_value else None, grads[1] if need_loc else None, grads[2] if need_w else None, None)


def gather_sample(value: Tensor, shapes: Sequence[tuple[int, int]], locations: Tensor, weights: Tensor) -> Tensor:
    """``ms_deform_attn_core`` through the gather kernels: ``value (N, S, M, Dh)``, ``locations (N, Lq, M, L, P, 2)``,
    ``weights (N, Lq, M, L, P)`` -> ``(N, Lq, M * Dh)``. Inputs must pass :func:`supported`."""
    flat = [int(v) for hw in shapes for v in hw]
    with torch.autocast("cpu", enabled=False):
        return _GatherSample.apply(value, locations, weights, flat)
