"""Regroup batch-stacked media per sample, without Python loops, for cross-attention from text to media.

An :class:`~bridges.base.InjectionContext` holds the media of the whole batch stacked ``(N_media, T, D)`` with
``media_to_sample (N_media,)``. Text row ``b`` should only attend to its own media, so inject bridges pad them to
``(B, M, T, D)`` with ``M`` the largest media count of a sample; the padded slots are masked out. This costs
``B * M`` slots instead of the ``B * N_media`` of attending to every media of the batch.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
import torch.nn.functional as F


@dataclass(frozen=True)
class MediaSlots:
    """Where each media item goes in the padded per-sample layout.

    Attributes:
        sample: ``(N,)`` batch row of each media item.
        rank: ``(N,)`` index of each media item among its sample's media, in order of appearance.
        batch_size: ``B``.
        max_media: ``M``, the largest media count of one sample (0 when there are no media).
    """

    sample: torch.Tensor
    rank: torch.Tensor
    batch_size: int
    max_media: int

    @classmethod
    def build(cls, media_to_sample: torch.Tensor, batch_size: int, num_media: int | None = None) -> MediaSlots:
        """Slots for ``media_to_sample (N,)``; ``num_media`` (the memory's N) is checked against it when given."""
        sample = media_to_sample.long()
        if num_media is not None and num_media != sample.numel():
            raise ValueError(
                f"The visual memory holds {num_media} media items but media_to_sample has {sample.numel()}; "
                "one memory entry per <image> placeholder is expected."
            )
        if sample.numel() == 0:
            return cls(sample, sample, batch_size, 0)
        if int(sample.max()) >= batch_size or int(sample.min()) < 0:
            raise ValueError(
                f"media_to_sample holds rows {sample.tolist()} but the batch has {batch_size} rows; "
                "each media item must belong to a row of input_ids."
            )
        onehot = F.one_hot(sample, batch_size)  # (N, B)
        rank = (onehot.cumsum(0) - 1).gather(1, sample[:, None]).squeeze(1)
        return cls(sample, rank, batch_size, int(onehot.sum(0).max()))

    def pad(self, x: torch.Tensor) -> torch.Tensor:
        """``(N, ...) -> (B, M, ...)``, zeros in the empty slots."""
        out = x.new_zeros(self.batch_size, self.max_media, *x.shape[1:])
        out[self.sample, self.rank] = x
        return out

    def pad_mask(self, mask: torch.Tensor) -> torch.Tensor:
        """A query-to-media mask ``(B, Lq, N)`` (bool) -> ``(B, Lq, M)``; empty slots are False."""
        out = mask.new_zeros(mask.shape[0], mask.shape[1], self.max_media)
        out[self.sample, :, self.rank] = mask[self.sample, :, torch.arange(len(self.sample), device=mask.device)]
        return out
