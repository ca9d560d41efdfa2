"""Multi-head attention on top of ``F.scaled_dot_product_attention``, written once for every bridge.

Bridges own their projections (their weight layouts must match the papers' checkpoints); this module only
splits heads, applies masks and calls SDPA, so every bridge gets the fused kernels on GPU.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from einops import rearrange


def split_heads(x: torch.Tensor, heads: int) -> torch.Tensor:
    """``(B, L, H*Dh) -> (B, H, L, Dh)``."""
    return rearrange(x, "b l (h d) -> b h l d", h=heads)


def merge_heads(x: torch.Tensor) -> torch.Tensor:
    """``(B, H, L, Dh) -> (B, L, H*Dh)``."""
    return rearrange(x, "b h l d -> b l (h d)")


def attend(
    q: torch.Tensor,
    k: torch.Tensor,
    v: torch.Tensor,
    heads: int,
    mask: torch.Tensor | None = None,
    scale: float | None = None,
    dropout: float = 0.0,
) -> torch.Tensor:
    """Scaled dot-product attention over already-projected, head-merged tensors.

    Args:
        q: ``(B, Lq, H*Dh)``; k, v: ``(B, Lk, H*Dh)`` (v may have another head width).
        mask: bool ``(B, Lq, Lk)`` / ``(B, 1 or H, Lq, Lk)`` (True = may attend) or an additive float mask.
            A query row whose mask is all False returns zeros (not NaN), which is what masked cross-attention
            needs for text tokens that have no media to look at.

    Returns:
        ``(B, Lq, H*Dv)``.
    """
    qh, kh, vh = split_heads(q, heads), split_heads(k, heads), split_heads(v, heads)
    empty_rows = None
    if mask is not None:
        if mask.dim() == 3:
            mask = mask[:, None]
        if mask.dtype == torch.bool:
            empty_rows = ~mask.any(-1, keepdim=True)  # (B, 1|H, Lq, 1)
            if empty_rows.any():
                mask = mask | empty_rows  # attend somewhere harmless, then zero the row below
            else:
                empty_rows = None
    out = F.scaled_dot_product_attention(qh, kh, vh, attn_mask=mask, dropout_p=dropout, scale=scale)
    if empty_rows is not None:
        out = out.masked_fill(empty_rows, 0.0)
    return merge_heads(out)
