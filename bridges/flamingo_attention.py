"""Flamingo's masked cross-attention pieces: the per-forward media memory and mask, the attention, IDEFICS' MLP.

Used by :class:`bridges.flamingo.GatedXAttnDenseBlock` (BRIDGES.md 1.3-1.5); parameter names follow OpenFlamingo
(``norm``, ``to_q``, ``to_kv``, ``to_out``) and IDEFICS (``gate_proj``, ``up_proj``, ``down_proj``).
"""

from __future__ import annotations

import torch
from einops import repeat
from torch import nn

from bridges.base import InjectionContext
from bridges.common.attention import attend
from bridges.common.media import MediaSlots

_NORMS = ("layernorm", "rmsnorm")


def _norm(kind: str, dim: int, eps: float) -> nn.Module:
    if kind == "layernorm":
        return nn.LayerNorm(dim, eps=eps)
    if kind == "rmsnorm":
        return nn.RMSNorm(dim, eps=eps)
    raise ValueError(f"Unknown norm '{kind}'. Use one of {_NORMS}.")


def media_and_mask(
    ctx: InjectionContext, batch_size: int, mode: str
) -> tuple[torch.Tensor | None, torch.Tensor | None]:
    """Per-sample padded memory ``(B, M*R, Dv)`` and query mask ``(B, L_q, M*R)``, built once per forward.

    Both are cached in ``ctx.extras`` (shared by every block), keyed by the memory and query-position tensors.
    Returns ``(None, None)`` when the batch holds no media.
    """
    if ctx.memory.shape[0] == 0:
        return None, None
    cached = ctx.extras.get("flamingo.media")
    if cached is None or cached[0] is not ctx.memory:
        slots = MediaSlots.build(ctx.media_to_sample, batch_size, ctx.memory.shape[0])
        cached = (ctx.memory, slots, slots.pad(ctx.memory).flatten(1, 2))
        ctx.extras["flamingo.media"] = cached
    _, slots, media = cached
    masked = ctx.extras.get(f"flamingo.mask.{mode}")
    if masked is None or masked[0] is not ctx.query_positions:
        mask = slots.pad_mask(ctx.media_mask(mode))
        masked = (ctx.query_positions, repeat(mask, "b l m -> b l (m r)", r=ctx.memory.shape[1]))
        ctx.extras[f"flamingo.mask.{mode}"] = masked
    return media, masked[1]


class GatedMLP(nn.Module):
    """IDEFICS' SwiGLU MLP, ``down(silu(gate(x)) * up(x))``, bias-free, with its parameter names."""

    def __init__(self, dim: int, hidden: int) -> None:
        super().__init__()
        self.gate_proj = nn.Linear(dim, hidden, bias=False)
        self.up_proj = nn.Linear(dim, hidden, bias=False)
        self.down_proj = nn.Linear(hidden, dim, bias=False)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.down_proj(nn.functional.silu(self.gate_proj(x)) * self.up_proj(x))


class MaskedCrossAttention(nn.Module):
    """Text queries ``(B, L, D)`` attend to padded media ``(B, S, Dv)`` under a bool mask ``(B, L, S)``.

    Parameter names follow OpenFlamingo (``norm``, ``to_q``, ``to_kv``, ``to_out``); all projections bias-free.
    """

    def __init__(self, dim: int, dim_visual: int, heads: int, dim_head: int, norm: str, eps: float, fused_kv: bool):
        super().__init__()
        inner = heads * dim_head
        self.heads, self.fused_kv = heads, fused_kv
        self.norm = _norm(norm, dim, eps)
        self.to_q = nn.Linear(dim, inner, bias=False)
        if fused_kv:
            self.to_kv = nn.Linear(dim_visual, 2 * inner, bias=False)
        else:
            self.to_k = nn.Linear(dim_visual, inner, bias=False)
            self.to_v = nn.Linear(dim_visual, inner, bias=False)
        self.to_out = nn.Linear(inner, dim, bias=False)

    def kv(self, media: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """``(B, S, Dv) -> k, v (B, S, H*Dh)``."""
        if self.fused_kv:
            k, v = self.to_kv(media).chunk(2, dim=-1)
            return k, v
        return self.to_k(media), self.to_v(media)

    def forward(self, x: torch.Tensor, kv: tuple[torch.Tensor, torch.Tensor], mask: torch.Tensor) -> torch.Tensor:
        """Rows whose mask is all False return exactly 0 (``attend`` zeroes them, ``to_out`` has no bias)."""
        return self.to_out(attend(self.to_q(self.norm(x)), kv[0], kv[1], self.heads, mask=mask))
