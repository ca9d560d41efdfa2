"""Rotary position embedding (RoPE) helpers that reuse the language model's own rotary module.

Hyper Attention's MI-RoPE (mPLUG-Owl3, BRIDGES.md 6.4) rotates the visual keys of image ``n`` by the phase of one
text position ``p_n``. Taking ``cos``/``sin`` from the LM's rotary embedding (``host.rotary_embedding()``, e.g.
``Qwen2RotaryEmbedding``) and rotating with the same half-split formula as ``transformers``'
``apply_rotary_pos_emb`` makes a visual key at ``p_n`` bit-identical to a text key at that position, whatever the
LM's ``rope_theta`` or scaling type.
"""

from __future__ import annotations

import torch
from torch import nn


def rotate_half(x: torch.Tensor) -> torch.Tensor:
    """``[x1, x2] -> [-x2, x1]`` over the last axis (the half-split convention of Llama/Qwen2 in ``transformers``)."""
    half = x.shape[-1] // 2
    return torch.cat((-x[..., half:], x[..., :half]), dim=-1)


def apply_rotary(x: torch.Tensor, cos: torch.Tensor, sin: torch.Tensor) -> torch.Tensor:
    """``x * cos + rotate_half(x) * sin``; ``cos``/``sin`` broadcast against ``x (..., Dh)``."""
    return (x * cos) + (rotate_half(x) * sin)


def rotary_cos_sin(rotary: nn.Module, positions: torch.Tensor, like: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """``cos, sin`` of shape ``(*positions.shape, Dh)`` from an HF rotary module at integer ``positions``.

    Args:
        rotary: the LM's rotary embedding, called as ``rotary(x, position_ids (1, N)) -> (cos, sin)``.
        positions: any-shaped integer positions.
        like: a tensor whose device and dtype the result takes (the keys to rotate).
    """
    flat = positions.reshape(1, -1).to(device=like.device, dtype=torch.long)
    cos, sin = rotary(like, flat)
    return cos.reshape(*positions.shape, -1), sin.reshape(*positions.shape, -1)


def rotate_at(rotary: nn.Module, x: torch.Tensor, positions: torch.Tensor) -> torch.Tensor:
    """Rotate ``x (N, ..., Dh)`` so every vector of item ``n`` gets the phase of position ``positions[n]``.

    ``positions (N,)``; all vectors of one item (e.g. every head and patch of image ``n``) share its phase.
    """
    cos, sin = rotary_cos_sin(rotary, positions, x)
    extra = (1,) * (x.dim() - 2)
    return apply_rotary(x, cos.view(x.shape[0], *extra, -1), sin.view(x.shape[0], *extra, -1))
