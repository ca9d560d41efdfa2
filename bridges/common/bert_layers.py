"""BERT-style post-LN layers and the Q-Former stack built from them (BLIP-2, Li et al. 2023; LAVIS ``Qformer.py``,
transformers ``Blip2QFormerModel`` / ``InstructBlipQFormerModel``).

Every sub-layer is post-LN: ``LayerNorm(x + dropout(sublayer(x)))`` with eps 1e-12 at BERT scale. Projections are
fused where one input feeds several of them (self-attention ``qkv``, cross-attention ``kv``); the reference's
separate ``query``/``key``/``value`` weights are concatenated on import (see ``bridges.qformer``).
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import nn

from bridges.common.attention import attend


@dataclass(frozen=True)
class BertSpec:
    """Sizes shared by every layer of one BERT stack."""

    dim: int
    heads: int
    intermediate: int
    eps: float = 1e-12
    dropout: float = 0.1
    attention_dropout: float = 0.1

    def __post_init__(self) -> None:
        if self.dim % self.heads:
            raise ValueError(f"hidden size {self.dim} is not divisible by {self.heads} heads")


class BertSelfAttention(nn.Module):
    """``(B, L, D) -> (B, L, D)``: ``LN(x + dropout(out(MHA(x))))``; ``mask`` bool ``(B, L, L)`` or ``(B, 1, L)``."""

    def __init__(self, spec: BertSpec) -> None:
        super().__init__()
        self.spec = spec
        self.qkv = nn.Linear(spec.dim, 3 * spec.dim)
        self.out = nn.Linear(spec.dim, spec.dim)
        self.norm = nn.LayerNorm(spec.dim, eps=spec.eps)
        self.dropout = nn.Dropout(spec.dropout)

    def forward(self, x: torch.Tensor, mask: torch.Tensor | None = None) -> torch.Tensor:
        q, k, v = self.qkv(x).chunk(3, dim=-1)
        p = self.spec.attention_dropout if self.training else 0.0
        ctx = attend(q, k, v, self.spec.heads, mask=mask, dropout=p)
        return self.norm(x + self.dropout(self.out(ctx)))


class BertCrossAttention(nn.Module):
    """``(B, Lq, D), (B, P, Dv) -> (B, Lq, D)``: queries attend to the image features (K/V ``Dv -> D``)."""

    def __init__(self, spec: BertSpec, kv_dim: int) -> None:
        super().__init__()
        self.spec = spec
        self.q = nn.Linear(spec.dim, spec.dim)
        self.kv = nn.Linear(kv_dim, 2 * spec.dim)
        self.out = nn.Linear(spec.dim, spec.dim)
        self.norm = nn.LayerNorm(spec.dim, eps=spec.eps)
        self.dropout = nn.Dropout(spec.dropout)

    def forward(self, x: torch.Tensor, context: torch.Tensor, mask: torch.Tensor | None = None) -> torch.Tensor:
        k, v = self.kv(context).chunk(2, dim=-1)
        p = self.spec.attention_dropout if self.training else 0.0
        ctx = attend(self.q(x), k, v, self.spec.heads, mask=mask, dropout=p)
        return self.norm(x + self.dropout(self.out(ctx)))


class BertFFN(nn.Module):
    """``(B, L, D) -> (B, L, D)``: ``LN(x + dropout(fc2(GELU(fc1(x)))))`` (exact GELU, as BERT)."""

    def __init__(self, spec: BertSpec) -> None:
        super().__init__()
        self.fc1 = nn.Linear(spec.dim, spec.intermediate)
        self.fc2 = nn.Linear(spec.intermediate, spec.dim)
        self.norm = nn.LayerNorm(spec.dim, eps=spec.eps)
        self.dropout = nn.Dropout(spec.dropout)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.norm(x + self.dropout(self.fc2(F.gelu(self.fc1(x)))))


def bert_init(module: nn.Module, std: float = 0.02) -> None:
    """BERT's initialisation (``BertPreTrainedModel._init_weights``): N(0, 0.02) weights, zero biases, unit LN."""
    if isinstance(module, (nn.Linear, nn.Embedding)):
        nn.init.normal_(module.weight, 0.0, std)
        if isinstance(module, nn.Linear) and module.bias is not None:
            nn.init.zeros_(module.bias)
        if isinstance(module, nn.Embedding) and module.padding_idx is not None:
            with torch.no_grad():
                module.weight[module.padding_idx].zero_()
    elif isinstance(module, nn.LayerNorm):
        nn.init.ones_(module.weight)
        nn.init.zeros_(module.bias)


class QFormerLayer(nn.Module):
    """One Q-Former layer over ``[queries; text]``: self-attention over all positions, cross-attention to the
    image for the query positions only (if this is a cross layer), then the query FFN on the queries and the text
    FFN on the text (LAVIS ``BertLayer``; transformers ``Blip2QFormerLayer``)."""

    def __init__(self, spec: BertSpec, kv_dim: int, cross: bool, text: bool) -> None:
        super().__init__()
        self.self_attn = BertSelfAttention(spec)
        self.cross_attn = BertCrossAttention(spec, kv_dim) if cross else None
        self.ffn_query = BertFFN(spec)
        self.ffn_text = BertFFN(spec) if text else None

    def forward(
        self, x: torch.Tensor, num_queries: int, mask: torch.Tensor | None, image: torch.Tensor | None
    ) -> torch.Tensor:
        h = self.self_attn(x, mask)
        queries, text = h[:, :num_queries], h[:, num_queries:]
        if num_queries:
            if self.cross_attn is not None:
                if image is None:
                    raise ValueError("This Q-Former layer cross-attends to the image: pass image features")
                queries = self.cross_attn(queries, image)
            queries = self.ffn_query(queries)
        if not text.shape[1]:
            return queries
        if self.ffn_text is None:
            raise ValueError("This Q-Former has no text layers; build it with text=True to feed text tokens")
        text = self.ffn_text(text)
        return torch.cat([queries, text], dim=1) if num_queries else text


class QFormer(nn.Module):
    """Learned queries + BERT embeddings + the layer stack: what transformers splits into ``query_tokens`` and
    ``Blip2QFormerModel`` (or ``InstructBlipQFormerModel`` when ``text=True``).

    The queries get no position embedding; text tokens get word + absolute position embeddings (positions from 0)
    and are appended after the queries; the embedding LayerNorm and dropout then apply to the whole sequence, the
    queries included (LAVIS ``BertEmbeddings``; transformers ``qformer.layernorm`` / ``embeddings.layernorm``).

    Args:
        num_queries: learned query count, initialised N(0, ``query_init_std``) as LAVIS.
        spec: layer sizes.
        num_layers: depth; layer ``l`` cross-attends to the image iff ``l % cross_attention_freq == 0``.
        kv_dim: image feature width ``Dv``.
        text: keep word/position embeddings and the text FFNs (stage 1, InstructBLIP); ``False`` is the slim
            stage-2 Q-Former of BLIP-2.
    """

    def __init__(
        self,
        num_queries: int,
        spec: BertSpec,
        num_layers: int,
        kv_dim: int,
        cross_attention_freq: int = 2,
        text: bool = False,
        vocab_size: int = 30522,
        max_positions: int = 512,
        pad_token_id: int = 0,
        query_init_std: float = 0.02,
    ) -> None:
        super().__init__()
        if cross_attention_freq < 1:
            raise ValueError(f"cross_attention_freq must be >= 1, got {cross_attention_freq}")
        self.num_queries = num_queries
        self.query_tokens = nn.Parameter(torch.empty(1, num_queries, spec.dim))
        self.word_embeddings = nn.Embedding(vocab_size, spec.dim, padding_idx=pad_token_id) if text else None
        self.position_embeddings = nn.Embedding(max_positions, spec.dim) if text else None
        self.embed_norm = nn.LayerNorm(spec.dim, eps=spec.eps)
        self.embed_dropout = nn.Dropout(spec.dropout)
        self.layers = nn.ModuleList(
            QFormerLayer(spec, kv_dim, cross=i % cross_attention_freq == 0, text=text) for i in range(num_layers)
        )
        self.apply(bert_init)
        with torch.no_grad():
            self.query_tokens.normal_(0.0, query_init_std)

    def copy_text_ffn_to_query(self) -> None:
        """Initialise each query FFN as a copy of the text FFN of its layer (LAVIS ``Blip2Qformer.__init__``)."""
        with torch.no_grad():
            for layer in self.layers:
                if layer.ffn_text is not None:
                    layer.ffn_query.load_state_dict(layer.ffn_text.state_dict())

    @property
    def has_text(self) -> bool:
        return self.word_embeddings is not None

    def embed(self, batch: int, input_ids: torch.Tensor | None, use_queries: bool) -> torch.Tensor:
        """``dropout(LN([queries; word + position embeddings]))``, ``(B, Q + L, D)``.

        LayerNorm acts per position, so the queries are normalised once and then expanded over the batch.
        """
        parts = [self.embed_norm(self.query_tokens).expand(batch, -1, -1)] if use_queries else []
        if input_ids is not None:
            if self.word_embeddings is None or self.position_embeddings is None:
                raise ValueError("This Q-Former has no text embeddings; build it with text=True to feed text tokens")
            length = input_ids.shape[1]
            if length > self.position_embeddings.num_embeddings:
                raise ValueError(
                    f"Text of {length} tokens exceeds max_position_embeddings="
                    f"{self.position_embeddings.num_embeddings}; truncate it"
                )
            positions = torch.arange(length, device=input_ids.device)
            parts.append(self.embed_norm(self.word_embeddings(input_ids) + self.position_embeddings(positions)))
        return self.embed_dropout(torch.cat(parts, dim=1) if len(parts) > 1 else parts[0])

    def forward(
        self,
        image: torch.Tensor | None,
        input_ids: torch.Tensor | None = None,
        attention_mask: torch.Tensor | None = None,
        use_queries: bool = True,
    ) -> torch.Tensor:
        """Run the stack and return every position, ``(B, Q + L, D)`` (``Q = 0`` when ``use_queries=False``).

        Args:
            image: ``(B, P, Dv)`` features for the cross-attention (needed whenever queries are used).
            input_ids: ``(B, L)`` text ids, appended after the queries.
            attention_mask: ``None`` (everything sees everything), a ``(B, L)`` padding mask of the text (1 = token;
                the queries are always visible), or a bool ``(B, S, S)`` mask over the whole sequence ``S = Q + L``
                (True = may attend), for the stage-1 objectives.
        """
        if input_ids is None and (image is None or not use_queries):
            raise ValueError("Give image features (with the queries), text ids, or both")
        batch = (image if image is not None else input_ids).shape[0]  # type: ignore[union-attr]
        x = self.embed(batch, input_ids, use_queries)
        num_queries = self.num_queries if use_queries else 0
        mask = attention_mask
        if mask is not None and mask.dim() == 2:
            keys = torch.cat([mask.new_ones(batch, num_queries), mask], dim=1).bool()
            mask = keys[:, None, :]  # (B, 1, S): padding on the keys only
        for layer in self.layers:
            x = layer(x, num_queries, mask, image)
        return x
