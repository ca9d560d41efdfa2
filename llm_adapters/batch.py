"""The one batch type for single images, interleaved multi-image documents and video.

Media of the whole batch are stacked in order of appearance, ``(N_media, F, C, H, W)``, and ``media_to_sample``
says which row each belongs to; there is no padding to the largest image count, so a sample with 400 images and a
sample with one image batch together cheaply. ``input_ids`` carry exactly one ``<image>`` placeholder per media
item, where the media sits in the text.
"""

from __future__ import annotations

from dataclasses import dataclass, fields, replace
from typing import Any

import torch


@dataclass
class MultimodalBatch:
    """A collated batch.

    Attributes:
        input_ids: ``(B, L)`` token ids with one ``<image>`` placeholder per media item.
        attention_mask: ``(B, L)`` 1 for real tokens, 0 for padding (left padding for generation batches).
        pixel_values: ``(N_media, F, C, H, W)`` for one encoder, or a dict ``{encoder name: tensor}`` when each
            encoder has its own transform; F = 1 for images.
        media_to_sample: ``(N_media,)`` long, the batch row of each media item (non-decreasing).
        labels: ``(B, L)`` targets, -100 on prompt, padding and placeholder positions; ``None`` for inference.
        instruction_ids / instruction_mask: ``(B, L_i)`` optional instruction text per sample, for
            instruction-aware bridges (InstructBLIP's Q-Former).
        meta: free-form per-sample records (task, answer, ids) carried along for evaluation.
    """

    input_ids: torch.Tensor
    attention_mask: torch.Tensor
    pixel_values: torch.Tensor | dict[str, torch.Tensor]
    media_to_sample: torch.Tensor
    labels: torch.Tensor | None = None
    instruction_ids: torch.Tensor | None = None
    instruction_mask: torch.Tensor | None = None
    meta: list[dict[str, Any]] | None = None

    @property
    def batch_size(self) -> int:
        return self.input_ids.shape[0]

    @property
    def num_media(self) -> int:
        return self.media_to_sample.shape[0]

    @property
    def num_frames(self) -> int:
        pv = self.pixel_values
        first = next(iter(pv.values())) if isinstance(pv, dict) else pv
        return first.shape[1]

    def pixels_for(self, encoder_name: str) -> torch.Tensor:
        """``(N_media, F, C, H, W)`` for ``encoder_name`` (the single tensor when there is one transform)."""
        pv = self.pixel_values
        if isinstance(pv, dict):
            if encoder_name not in pv:
                raise KeyError(f"Batch has pixel_values for {sorted(pv)}, not for encoder '{encoder_name}'")
            return pv[encoder_name]
        return pv

    def to(self, device: torch.device | str) -> MultimodalBatch:
        def move(value: Any) -> Any:
            if isinstance(value, torch.Tensor):
                return value.to(device)
            if isinstance(value, dict):
                return {k: move(v) for k, v in value.items()}
            return value

        return replace(self, **{f.name: move(getattr(self, f.name)) for f in fields(self) if f.name != "meta"})
