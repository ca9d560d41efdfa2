"""Vectorised rasteriser for the embedded world: flat tables of objects in, image tensors out.

Scenes are described in resolution-free coordinates (centre and half-size as fractions of the image side), so
the same scene renders consistently at 32x32 for the ViT and at 64x64 for a second expert. All objects of a
batch are rasterised at once (one pass per shape kind, never a Python loop over objects or images):

* shapes (square, circle, triangle, cross) are analytic masks on a ``supersample``-times finer grid, then
  average-pooled, which anti-aliases their edges;
* digits are the real 8x8 scikit-learn digits (``load_digits``), sampled bilinearly with ``grid_sample``;
* each mask tints its canvas towards the object's colour (objects of one image never overlap), then Gaussian
  pixel noise is added and values are clipped to [0, 1].
"""

from __future__ import annotations

from dataclasses import dataclass
from functools import lru_cache

import numpy as np
import torch
import torch.nn.functional as F

DIGIT = 4  # shape id used for digit objects (0..3 are SHAPES)

# Bright, well-separated colours (RGB in [0, 1]); order follows vocab.COLOURS.
PALETTE = np.array(
    [
        [0.92, 0.10, 0.10],  # red
        [0.10, 0.80, 0.15],  # green
        [0.15, 0.35, 1.00],  # blue
        [0.95, 0.95, 0.10],  # yellow
        [0.65, 0.15, 0.90],  # purple
        [1.00, 0.55, 0.00],  # orange
    ],
    dtype=np.float32,
)


@lru_cache(maxsize=1)
def digit_bank() -> tuple[torch.Tensor, np.ndarray]:
    """scikit-learn's bundled digits: images ``(1797, 1, 8, 8)`` float in [0, 1] and labels ``(1797,)``."""
    from sklearn.datasets import load_digits

    digits = load_digits()
    images = torch.from_numpy(digits.images.astype(np.float32) / 16.0).unsqueeze(1)
    return images, digits.target.astype(np.int64)


@dataclass
class ObjectTable:
    """Objects of a batch of canvases, one row each.

    Attributes:
        canvas: ``(n,)`` index of the canvas (image or video frame) each object is drawn on.
        shape: ``(n,)`` 0..3 for the shapes of ``vocab.SHAPES``, ``DIGIT`` for a digit.
        digit_row: ``(n,)`` row of :func:`digit_bank` for digits, -1 otherwise.
        rgb: ``(n, 3)`` colour.
        centre: ``(n, 2)`` ``(x, y)`` in [0, 1], y pointing down.
        half: ``(n,)`` half side length, as a fraction of the image side.
    """

    canvas: np.ndarray
    shape: np.ndarray
    digit_row: np.ndarray
    rgb: np.ndarray
    centre: np.ndarray
    half: np.ndarray

    def __len__(self) -> int:
        return len(self.canvas)


def _shape_masks(shape_id: int, u: torch.Tensor, v: torch.Tensor) -> torch.Tensor:
    """Boolean masks of one shape kind; ``u`` ``(n, 1, S)`` and ``v`` ``(n, S, 1)`` in object units."""
    au, av = u.abs(), v.abs()
    if shape_id == 0:  # square, area close to the circle's
        return (au <= 0.85) & (av <= 0.85)
    if shape_id == 1:  # circle
        return u * u + v * v <= 1.0
    if shape_id == 2:  # triangle, apex up (v points down)
        return (v <= 1.0) & (au <= (v + 1.0) / 2.0)
    if shape_id == 3:  # cross
        return ((au <= 0.3) & (av <= 1.0)) | ((av <= 0.3) & (au <= 1.0))
    raise ValueError(f"Unknown shape id {shape_id}")


def _coverage(table: ObjectTable, size: int, supersample: int) -> torch.Tensor:
    """Per-object coverage ``(n, size, size)`` in [0, 1]."""
    fine = size * supersample
    grid = (torch.arange(fine, dtype=torch.float32) + 0.5) / fine
    cx = torch.from_numpy(table.centre[:, 0]).float()[:, None, None]
    cy = torch.from_numpy(table.centre[:, 1]).float()[:, None, None]
    half = torch.from_numpy(table.half).float()[:, None, None]
    u = (grid[None, None, :] - cx) / half  # (n, 1, S)
    v = (grid[None, :, None] - cy) / half  # (n, S, 1)
    out = torch.empty(len(table), fine, fine)  # every row is written below: each object has one kind
    shape = torch.from_numpy(table.shape)
    for shape_id in range(4):
        idx = (shape == shape_id).nonzero().squeeze(1)
        if len(idx):
            out[idx] = _shape_masks(shape_id, u[idx], v[idx]).float()
    idx = (shape == DIGIT).nonzero().squeeze(1)
    if len(idx):
        bank, _ = digit_bank()
        bitmaps = bank[torch.from_numpy(table.digit_row)[idx]]  # (m, 1, 8, 8)
        uu, vv = torch.broadcast_tensors(u[idx], v[idx])
        sampled = F.grid_sample(bitmaps, torch.stack([uu, vv], dim=-1), mode="bilinear", align_corners=False)
        out[idx] = sampled[:, 0]
    if supersample > 1:
        out = F.avg_pool2d(out[:, None], supersample)[:, 0]
    return out


def render(
    table: ObjectTable,
    backgrounds: np.ndarray,
    size: int,
    *,
    noise_std: float,
    generator: torch.Generator,
    supersample: int = 2,
    chunk: int = 2048,
) -> torch.Tensor:
    """Draw the canvases: ``backgrounds`` ``(n_canvas, 3)`` -> images ``(n_canvas, 3, size, size)`` in [0, 1].

    ``generator`` draws the pixel noise, so the same table, size and generator state give identical images.
    Supersampling is only applied below 64 px, where edges would otherwise look jagged.
    """
    supersample = supersample if size < 64 else 1
    n_canvas = len(backgrounds)
    bg = torch.from_numpy(np.asarray(backgrounds, dtype=np.float32))
    images = bg[:, :, None, None].expand(n_canvas, 3, size, size).contiguous()
    for start in range(0, len(table), chunk):
        part = ObjectTable(*(getattr(table, f)[start : start + chunk] for f in table.__dataclass_fields__))
        cover = _coverage(part, size, supersample)  # (m, size, size)
        canvas = torch.from_numpy(part.canvas).long()
        tint = torch.from_numpy(part.rgb).float() - bg[canvas]  # (m, 3)
        images.index_add_(0, canvas, cover[:, None] * tint[:, :, None, None])
    if noise_std > 0:
        images += noise_std * torch.randn(images.shape, generator=generator)
    return images.clamp_(0.0, 1.0)
