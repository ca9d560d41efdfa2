"""Flamingo's Perceiver Resampler: a fixed set of learned latents that reads any number of visual tokens.

Shared by the ``perceiver`` prefix bridge and the ``flamingo`` inject bridge. Follows OpenFlamingo
(``open_flamingo/src/helpers.py``, BRIDGES.md 1.2) and keeps its parameter names, so an OpenFlamingo
``perceiver.*`` state dict loads with ``load_state_dict``; IDEFICS weights load through
:meth:`PerceiverResampler.load_idefics_state_dict`.

Per layer (``depth`` times), on latents ``l`` and media tokens ``x``:

1. ``x_n = LN_media(x)``, ``l_n = LN_latents(l)``;
2. ``q = W_q l_n``; ``k, v`` from ``[x_n ; l_n]`` (the latents also attend to themselves), bias-free;
3. ``l = l + W_out · softmax(q kᵀ / sqrt(Dh)) v``;
4. ``l = l + W_2 · act(W_1 · LN(l))`` (bias-free).

Then a final LayerNorm. Optional learned frame embeddings (added per frame before frames and space are
flattened) and media-time embeddings (added per media index), both ``N(0, 1)``-initialised as in OpenFlamingo.

Differences between the references are switches here:

* ``activation``: ``"gelu"`` (OpenFlamingo, the default), ``"squared_relu"`` (Flamingo paper), ``"relu"`` (IDEFICS);
* ``fused_kv``: one ``to_kv`` Linear split K-then-V (OpenFlamingo) or separate ``to_k`` / ``to_v`` (IDEFICS);
* ``qk_norm``: per-head LayerNorms on q and k before the scores (IDEFICS ``qk_layer_norms_perceiver``).
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Literal

import torch
import torch.nn.functional as F
from einops import rearrange
from torch import nn

from bridges.common.attention import attend

Activation = Literal["gelu", "squared_relu", "relu"]


class SquaredReLU(nn.Module):
    """``relu(x) ** 2``, the Flamingo paper's feed-forward activation (from Primer, So et al. 2021)."""

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return F.relu(x).square()


def make_activation(name: str) -> nn.Module:
    """The feed-forward activation module for ``"gelu"``, ``"squared_relu"`` or ``"relu"``."""
    table = {"gelu": nn.GELU, "squared_relu": SquaredReLU, "relu": nn.ReLU}
    if name not in table:
        raise ValueError(f"Unknown activation '{name}'. Use one of {sorted(table)}.")
    return table[name]()


def feed_forward(dim: int, mult: float, activation: str) -> nn.Sequential:
    """``LN -> Linear(dim, mult*dim) -> act -> Linear(mult*dim, dim)``, bias-free; indices 0/1/3 as OpenFlamingo."""
    inner = int(dim * mult)
    return nn.Sequential(
        nn.LayerNorm(dim),
        nn.Linear(dim, inner, bias=False),
        make_activation(activation),
        nn.Linear(inner, dim, bias=False),
    )


class PerceiverAttention(nn.Module):
    """Latents attend to ``[media; latents]`` (one step of the resampler)."""

    def __init__(self, dim: int, heads: int, dim_head: int, fused_kv: bool = True, qk_norm: bool = False) -> None:
        super().__init__()
        self.heads, self.dim_head, self.fused_kv = heads, dim_head, fused_kv
        inner = heads * dim_head
        self.norm_media = nn.LayerNorm(dim)
        self.norm_latents = nn.LayerNorm(dim)
        self.to_q = nn.Linear(dim, inner, bias=False)
        if fused_kv:
            self.to_kv = nn.Linear(dim, 2 * inner, bias=False)
        else:
            self.to_k = nn.Linear(dim, inner, bias=False)
            self.to_v = nn.Linear(dim, inner, bias=False)
        self.q_norm = nn.LayerNorm(dim_head) if qk_norm else None
        self.k_norm = nn.LayerNorm(dim_head) if qk_norm else None
        self.to_out = nn.Linear(inner, dim, bias=False)

    def _head_norm(self, t: torch.Tensor, norm: nn.LayerNorm | None) -> torch.Tensor:
        if norm is None:
            return t
        return rearrange(norm(rearrange(t, "b l (h d) -> b l h d", h=self.heads)), "b l h d -> b l (h d)")

    def forward(self, x: torch.Tensor, latents: torch.Tensor) -> torch.Tensor:
        """``x (B, S, D)`` media tokens, ``latents (B, R, D)`` -> attention output ``(B, R, D)`` (no residual)."""
        x = self.norm_media(x)
        latents = self.norm_latents(latents)
        kv_input = torch.cat((x, latents), dim=1)
        if self.fused_kv:
            k, v = self.to_kv(kv_input).chunk(2, dim=-1)
        else:
            k, v = self.to_k(kv_input), self.to_v(kv_input)
        q = self._head_norm(self.to_q(latents), self.q_norm)
        k = self._head_norm(k, self.k_norm)
        return self.to_out(attend(q, k, v, self.heads))


class PerceiverResampler(nn.Module):
    """``(B, M, F, P, D)`` visual tokens -> ``(B, M, num_latents, D)``, one latent set per media item.

    ``B`` samples, ``M`` media items per sample, ``F`` frames per media item, ``P`` tokens per frame. Media items are
    independent (``M`` is a batch-like axis); the frames of one item are flattened into one context, so a video
    yields ``num_latents`` tokens whatever its length (Flamingo paper; BRIDGES.md 1.6).

    Args:
        dim: token width ``D`` (input and output; OpenFlamingo uses the vision width, 1024 for ViT-L).
        depth: number of (attention, feed-forward) layers. OpenFlamingo 6, paper 6.
        heads, dim_head: attention heads and head width. OpenFlamingo 8 x 64, paper 16 x 128.
        num_latents: latents ``R`` per media item. 64 in both.
        ff_mult: feed-forward width multiplier. 4 in both (IDEFICS: 4 x vision width).
        activation: ``"gelu"`` (OpenFlamingo), ``"squared_relu"`` (paper), ``"relu"`` (IDEFICS).
        fused_kv: one ``to_kv`` projection (OpenFlamingo) or separate ``to_k``/``to_v`` (IDEFICS).
        max_num_frames: if set, learned ``frame_embs (max_num_frames, D)`` added per frame (paper's video path).
        max_num_media: if set, learned ``media_time_embs (max_num_media, 1, D)`` added per media index ``m``.
        qk_norm: per-head LayerNorm on q and k (IDEFICS ``qk_layer_norms_perceiver``).
    """

    def __init__(
        self,
        dim: int,
        depth: int = 6,
        heads: int = 8,
        dim_head: int = 64,
        num_latents: int = 64,
        ff_mult: float = 4,
        activation: Activation = "gelu",
        fused_kv: bool = True,
        max_num_frames: int | None = None,
        max_num_media: int | None = None,
        qk_norm: bool = False,
    ) -> None:
        super().__init__()
        make_activation(activation)  # validate early
        self.dim, self.depth, self.heads, self.dim_head = dim, depth, heads, dim_head
        self.num_latents, self.ff_mult, self.qk_norm = num_latents, ff_mult, qk_norm
        self.max_num_frames, self.max_num_media = max_num_frames, max_num_media
        self.latents = nn.Parameter(torch.randn(num_latents, dim))
        self.frame_embs = nn.Parameter(torch.randn(max_num_frames, dim)) if max_num_frames else None
        self.media_time_embs = nn.Parameter(torch.randn(max_num_media, 1, dim)) if max_num_media else None
        self.layers = nn.ModuleList(
            nn.ModuleList(
                [PerceiverAttention(dim, heads, dim_head, fused_kv, qk_norm), feed_forward(dim, ff_mult, activation)]
            )
            for _ in range(depth)
        )
        self.norm = nn.LayerNorm(dim)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """``x (B, M, F, P, D)`` -> ``(B, M, num_latents, D)``."""
        if x.dim() != 5 or x.shape[-1] != self.dim:
            raise ValueError(
                f"PerceiverResampler expects (B, M, F, P, {self.dim}) features, got {tuple(x.shape)}. "
                "Add singleton axes for single images (x[:, None, None]) or check the encoder width."
            )
        b, m, f = x.shape[:3]
        if self.frame_embs is not None:
            if f > self.frame_embs.shape[0]:
                raise ValueError(f"{f} frames per media item but max_num_frames={self.frame_embs.shape[0]}; raise it.")
            x = x + self.frame_embs[:f, None, :]
        x = rearrange(x, "b m f p d -> b m (f p) d")
        if self.media_time_embs is not None:
            if m > self.media_time_embs.shape[0]:
                raise ValueError(f"{m} media items per sample but max_num_media={self.media_time_embs.shape[0]}.")
            x = x + self.media_time_embs[:m]
        x = rearrange(x, "b m s d -> (b m) s d")
        # a copy, not an expanded view: views of a parameter made under no_grad trip torch's module tracker
        latents = self.latents.repeat(b * m, 1, 1)
        for attn, ff in self.layers:
            latents = attn(x, latents) + latents
            latents = ff(latents) + latents
        return rearrange(self.norm(latents), "(b m) r d -> b m r d", b=b, m=m)

    def flops(self, num_tokens: int) -> int:
        """Forward FLOPs (2 x multiply-adds) for one media item with ``num_tokens = F * P`` context tokens.

        Counts the matmuls (projections, scores, attention-weighted sum, feed-forward); norms and activations are
        negligible and left out, as ``torch.utils.flop_counter`` does.
        """
        r, d, inner, ff = self.num_latents, self.dim, self.heads * self.dim_head, int(self.dim * self.ff_mult)
        kv_len = num_tokens + r
        per_layer = (
            2 * r * d * inner  # q
            + 2 * kv_len * d * 2 * inner  # k, v
            + 2 * 2 * r * kv_len * inner  # scores and attn @ v
            + 2 * r * inner * d  # out
            + 2 * 2 * r * d * ff  # feed-forward
        )
        return self.depth * per_layer

    # ---- weight import -------------------------------------------------------------------------------------------

    @classmethod
    def from_idefics(cls, module: nn.Module) -> PerceiverResampler:
        """Build a resampler equal to a ``transformers`` ``IdeficsPerceiverResampler`` (ReLU, separate K/V)."""
        ref_mlp = module.blocks[0][1]
        resampler = cls(
            dim=module.embed_dim,
            depth=len(module.blocks),
            heads=module.n_heads,
            dim_head=module.head_dim,
            num_latents=module.n_latents,
            ff_mult=module.intermediate_dim / module.embed_dim,
            activation="relu",
            fused_kv=False,
            qk_norm=bool(module.qk_layer_norms),
        ).to(device=ref_mlp.fc.weight.device, dtype=ref_mlp.fc.weight.dtype)
        resampler.load_idefics_state_dict(module.state_dict())
        return resampler

    def load_idefics_state_dict(self, state_dict: Mapping[str, torch.Tensor]) -> None:
        """Load IDEFICS perceiver weights (``IdeficsPerceiverResampler.state_dict()``, prefix stripped).

        Name mapping (IDEFICS -> ours), per layer ``i``::

            latents                               -> latents
            blocks.i.0.context_layer_norm         -> layers.i.0.norm_media
            blocks.i.0.latents_layer_norm         -> layers.i.0.norm_latents
            blocks.i.0.q_proj / k_proj / v_proj   -> layers.i.0.to_q / to_k / to_v   (fused: to_kv = cat(k, v))
            blocks.i.0.q_layer_norm / k_layer_norm-> layers.i.0.q_norm / k_norm
            blocks.i.0.output_proj                -> layers.i.0.to_out
            blocks.i.1.ln / fc / c_proj           -> layers.i.1.0 / 1 / 3
            layer_norm                            -> norm

        The activation is not a weight: build with ``activation="relu"`` to reproduce IDEFICS outputs.
        """
        fused = self.layers[0][0].fused_kv if self.depth else False
        renames = {
            "context_layer_norm": "norm_media",
            "latents_layer_norm": "norm_latents",
            "q_proj": "to_q",
            "k_proj": "to_k",
            "v_proj": "to_v",
            "q_layer_norm": "q_norm",
            "k_layer_norm": "k_norm",
            "output_proj": "to_out",
            "ln": "0",
            "fc": "1",
            "c_proj": "3",
        }
        out: dict[str, torch.Tensor] = {}
        for name, tensor in state_dict.items():
            parts = name.split(".")
            if parts[0] == "blocks":
                parts = ["layers", parts[1], parts[2], renames.get(parts[3], parts[3]), *parts[4:]]
            elif parts[0] == "layer_norm":
                parts[0] = "norm"
            out[".".join(parts)] = tensor
        if fused:
            for i in range(self.depth):
                k, v = (out.pop(f"layers.{i}.0.to_{n}.weight") for n in "kv")
                out[f"layers.{i}.0.to_kv.weight"] = torch.cat((k, v), dim=0)
        missing, unexpected = self.load_state_dict(out, strict=False)
        allowed_missing = {"frame_embs", "media_time_embs"}  # IDEFICS has neither; they keep their init
        missing = [k for k in missing if k not in allowed_missing]
        if missing or unexpected:
            raise ValueError(
                f"IDEFICS perceiver weights do not fit this resampler: missing {missing}, unexpected {unexpected}. "
                "Build it with the reference's depth, qk_norm and sizes (or use PerceiverResampler.from_idefics)."
            )
