"""Decoupled rows for new tokens: train the ``<image>`` / ``<|endofchunk|>`` rows while the old vocabulary stays frozen.

IDEFICS keeps the original embedding frozen and appends a small trainable table for the added tokens
(``DecoupledEmbedding`` / ``DecoupledLinear``). We do the same with one twist: the embedding matrix is first resized
as usual (so the HF config, ``generate`` and ``save_pretrained`` keep working), then the rows of the chosen token ids
are *overridden* by a separate parameter ``rows (K, D)``. The override works for any ids, including tokens the
tokenizer already had. Gradients reach only ``rows``; the base rows of those ids are shadowed (never read) until
:meth:`TokenRowsEmbedding.merge` writes ``rows`` back, which :meth:`LMAdapter.save_pretrained` does.

The output head gets the same treatment (:class:`TokenRowsHead`), sharing ``rows`` with the embedding when the LM
ties its input and output embeddings.
"""

from __future__ import annotations

import torch
from torch import nn


class TokenRowsEmbedding(nn.Module):
    """``base`` embedding with the rows of ``token_ids`` replaced by the trainable parameter ``rows``.

    Args:
        base: the (resized) input embedding ``(V, D)``.
        token_ids: ``(K,)`` ids whose rows are decoupled.
    """

    def __init__(self, base: nn.Embedding, token_ids: torch.Tensor) -> None:
        super().__init__()
        self.base = base
        self.register_buffer("token_ids", token_ids.clone().long(), persistent=False)
        self.rows = nn.Parameter(base.weight.detach()[token_ids].clone())

    @property
    def weight(self) -> torch.Tensor:
        """The effective ``(V, D)`` matrix (for code that reads ``get_input_embeddings().weight``)."""
        return self.base.weight.index_copy(0, self.token_ids, self.rows.to(self.base.weight.dtype))

    @property
    def num_embeddings(self) -> int:
        return self.base.num_embeddings

    @property
    def embedding_dim(self) -> int:
        return self.base.embedding_dim

    def forward(self, input_ids: torch.Tensor) -> torch.Tensor:
        """``(B, L) -> (B, L, D)``."""
        out = self.base(input_ids)
        hit = input_ids[..., None] == self.token_ids  # (B, L, K)
        new_row = self.rows.to(out.dtype)[hit.int().argmax(-1)]  # (B, L, D), garbage where no hit
        return torch.where(hit.any(-1, keepdim=True), new_row, out)

    @torch.no_grad()
    def merge(self) -> nn.Embedding:
        """Write ``rows`` into ``base`` and return ``base`` (the plain embedding to save or unwrap to)."""
        self.base.weight[self.token_ids] = self.rows.to(self.base.weight.dtype)
        return self.base


class TokenRowsHead(nn.Module):
    """Output head whose logits for ``token_ids`` come from the decoupled ``rows`` (and bias, if the head has one).

    Args:
        base: the (resized) output projection ``(V, D)``.
        token_ids: ``(K,)``.
        rows: share this parameter (tied embeddings) instead of creating one.
    """

    def __init__(self, base: nn.Linear, token_ids: torch.Tensor, rows: nn.Parameter | None = None) -> None:
        super().__init__()
        self.base = base
        self.register_buffer("token_ids", token_ids.clone().long(), persistent=False)
        self.rows = rows if rows is not None else nn.Parameter(base.weight.detach()[token_ids].clone())
        self.tied = rows is not None

    @property
    def weight(self) -> torch.Tensor:
        return self.base.weight.index_copy(0, self.token_ids, self.rows.to(self.base.weight.dtype))

    def forward(self, hidden: torch.Tensor) -> torch.Tensor:
        """``(..., D) -> (..., V)``."""
        logits = self.base(hidden)
        new = hidden @ self.rows.to(hidden.dtype).T
        if self.base.bias is not None:
            new = new + self.base.bias[self.token_ids]
        # in place: the linear saves its input and weight for backward, not its output, and a (B, L, V) copy is costly
        return logits.index_copy_(-1, self.token_ids, new.to(logits.dtype))

    @torch.no_grad()
    def merge(self) -> nn.Linear:
        self.base.weight[self.token_ids] = self.rows.to(self.base.weight.dtype)
        return self.base
