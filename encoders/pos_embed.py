"""Resampling a learned absolute position table to a new patch grid (ViT at a new input resolution).

Bicubic interpolation of the patch part, prefix rows (CLS) kept as they are: what timm, open_clip and HF's
``interpolate_pos_encoding`` do, and what Eagle does to run CLIP-L/14-336 at 448 px.
"""

from __future__ import annotations

import torch
from timm.layers import resample_abs_pos_embed


def resize_position_table(
    table: torch.Tensor, old_grid: tuple[int, int], new_grid: tuple[int, int], num_prefix: int
) -> torch.Tensor:
    """``(num_prefix + h*w, D)`` -> ``(num_prefix + h'*w', D)``, row-major grid order on both sides."""
    expected = num_prefix + old_grid[0] * old_grid[1]
    if table.shape[0] != expected:
        raise ValueError(
            f"Position table has {table.shape[0]} rows; expected {expected} for {num_prefix} prefix + grid {old_grid}"
        )
    resized = resample_abs_pos_embed(
        table.unsqueeze(0).float(), new_size=list(new_grid), old_size=list(old_grid), num_prefix_tokens=num_prefix
    )
    return resized.squeeze(0).to(table.dtype)
