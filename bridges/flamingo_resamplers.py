"""The two resampler alternatives of Flamingo's ablation (paper Table 3, "Resampler": Perceiver vs MLP vs Transformer).

Flamingo's ablation swaps its Perceiver Resampler for "a MLP" and "a vanilla Transformer" of similar size and finds
both worse (3B: 66.6 and 66.7 overall vs 70.7) and *slower* (1.85 s and 1.81 s per step vs 1.74 s; BRIDGES.md 1.10,
[recall]). The paper gives no further detail of the two; what is built here, and why:

* :class:`MLPResampler`: a per-token residual MLP stack on the visual features (``x += FFW(x)``, ``depth`` times,
  then a LayerNorm). No mixing between tokens and **no token reduction**: the memory is all ``F * P`` visual tokens
  of a media item. A learned latent set is what reduces tokens, and without latents neither alternative can.
* :class:`TransformerResampler`: a plain pre-LN Transformer over the visual tokens themselves (self-attention and
  FFW, ``depth`` layers, no latents); its output is the ``F * P`` transformed visual tokens.

Both keep the rest of the Perceiver's interface (``(B, M, F, P, D) -> (B, M, T, D)``, optional learned frame
embeddings added per frame, ``flops(num_tokens)``), so the Flamingo bridge treats the three alike. Their longer
memory (``T = F * P`` instead of 64 latents) makes every gated cross-attention block read more keys, which is the
step-time increase the paper reports. Parameter counts: the Transformer has the Perceiver's layer sizes (one
LayerNorm fewer per layer and no latents); the MLP has the FFW half only.
"""

from __future__ import annotations

import torch
from einops import rearrange
from torch import nn

from bridges.common.attention import attend
from bridges.common.resampler import feed_forward


class _TokenStack(nn.Module):
    """Shared frame-embedding, flattening and final-norm logic of the two token-keeping resamplers."""

    def __init__(self, dim: int, max_num_frames: int | None) -> None:
        super().__init__()
        self.dim = dim
        self.frame_embs = nn.Parameter(torch.randn(max_num_frames, dim)) if max_num_frames else None
        self.norm = nn.LayerNorm(dim)

    def tokens(self, x: torch.Tensor) -> torch.Tensor:
        """``(B, M, F, P, D) -> (B*M, F*P, D)`` with the frame embeddings added."""
        if x.dim() != 5 or x.shape[-1] != self.dim:
            raise ValueError(
                f"{type(self).__name__} expects (B, M, F, P, {self.dim}) features, got {tuple(x.shape)}. "
                "Add singleton axes for single images (x[:, None, None]) or check the encoder width."
            )
        if self.frame_embs is not None:
            if x.shape[2] > self.frame_embs.shape[0]:
                raise ValueError(
                    f"{x.shape[2]} frames per media item but max_num_frames={self.frame_embs.shape[0]}; raise it."
                )
            x = x + self.frame_embs[: x.shape[2], None, :]
        return rearrange(x, "b m f p d -> (b m) (f p) d")

    def out(self, x: torch.Tensor, b: int, m: int) -> torch.Tensor:
        return rearrange(self.norm(x), "(b m) t d -> b m t d", b=b, m=m)


class MLPResampler(_TokenStack):
    """``(B, M, F, P, D) -> (B, M, F*P, D)``: ``depth`` residual per-token FFWs (LN, Linear, act, Linear), then LN."""

    def __init__(
        self, dim: int, depth: int, ff_mult: float, activation: str, max_num_frames: int | None = None
    ) -> None:
        super().__init__(dim, max_num_frames)
        self.depth, self.ff_mult = depth, ff_mult
        self.layers = nn.ModuleList(feed_forward(dim, ff_mult, activation) for _ in range(depth))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        b, m = x.shape[:2]
        h = self.tokens(x)
        for ff in self.layers:
            h = ff(h) + h
        return self.out(h, b, m)

    def flops(self, num_tokens: int) -> int:
        """Forward matmul FLOPs for one media item of ``num_tokens = F * P`` tokens."""
        return self.depth * 2 * 2 * num_tokens * self.dim * int(self.dim * self.ff_mult)


class SelfAttention(nn.Module):
    """Pre-LN multi-head self-attention over ``(B, S, D)``, bias-free projections (the Perceiver's style)."""

    def __init__(self, dim: int, heads: int, dim_head: int) -> None:
        super().__init__()
        self.heads = heads
        self.norm = nn.LayerNorm(dim)
        self.to_qkv = nn.Linear(dim, 3 * heads * dim_head, bias=False)
        self.to_out = nn.Linear(heads * dim_head, dim, bias=False)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """``(B, S, D) -> (B, S, D)`` (no residual)."""
        q, k, v = self.to_qkv(self.norm(x)).chunk(3, dim=-1)
        return self.to_out(attend(q, k, v, self.heads))


class TransformerResampler(_TokenStack):
    """``(B, M, F, P, D) -> (B, M, F*P, D)``: ``depth`` pre-LN Transformer layers over the visual tokens, then LN."""

    def __init__(
        self,
        dim: int,
        depth: int,
        heads: int,
        dim_head: int,
        ff_mult: float,
        activation: str,
        max_num_frames: int | None = None,
    ) -> None:
        super().__init__(dim, max_num_frames)
        self.depth, self.heads, self.dim_head, self.ff_mult = depth, heads, dim_head, ff_mult
        self.layers = nn.ModuleList(
            nn.ModuleList([SelfAttention(dim, heads, dim_head), feed_forward(dim, ff_mult, activation)])
            for _ in range(depth)
        )

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        b, m = x.shape[:2]
        h = self.tokens(x)
        for attn, ff in self.layers:
            h = attn(h) + h
            h = ff(h) + h
        return self.out(h, b, m)

    def flops(self, num_tokens: int) -> int:
        """Forward matmul FLOPs for one media item of ``num_tokens = F * P`` tokens (as the Perceiver's count)."""
        s, d, inner, ff = num_tokens, self.dim, self.heads * self.dim_head, int(self.dim * self.ff_mult)
        per_layer = 2 * s * d * 3 * inner + 2 * 2 * s * s * inner + 2 * s * inner * d + 2 * 2 * s * d * ff
        return self.depth * per_layer
