"""Prefix splicing: replace every ``<image>`` placeholder by its media item's visual tokens, for a whole batch at once.

Each placeholder of sample ``b`` widens to ``T`` positions, so rows grow by different amounts; the shorter rows are
filled on the padding side (left for generation batches, so the last position stays the last real token). One
scatter moves the text tokens and one scatter places the visual tokens: no loop over samples or media items.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Literal

import torch

IGNORE_INDEX = -100


@dataclass
class SpliceOutput:
    """The LM input after splicing.

    Attributes:
        inputs_embeds: ``(B, L', D)``.
        attention_mask: ``(B, L')`` 1 on text and visual tokens, 0 on padding.
        position_ids: ``(B, L')`` ``cumsum(mask) - 1``, 0 on padding (the rule HF ``generate`` uses).
        labels: ``(B, L')`` with ``-100`` on visual tokens and padding, or ``None``.
        media_starts: ``(N_media,)`` index of each media item's first visual token in the spliced sequence.
        text_index: ``(B, L)`` index of each original token in the spliced sequence (placeholders: their first
            visual token).
    """

    inputs_embeds: torch.Tensor
    attention_mask: torch.Tensor
    position_ids: torch.Tensor
    labels: torch.Tensor | None
    media_starts: torch.Tensor
    text_index: torch.Tensor


def positions_from_mask(attention_mask: torch.Tensor) -> torch.Tensor:
    """Position ids ``(B, L)`` counting only real tokens, 0 on padding (same rule as HF ``generate``)."""
    positions = attention_mask.long().cumsum(-1) - 1
    return positions.masked_fill(attention_mask == 0, 0)


def detect_padding_side(attention_mask: torch.Tensor) -> Literal["left", "right"]:
    """``left`` when every row ends on a real token and some row starts with padding, else ``right``."""
    if bool((attention_mask[:, -1] != 0).all()) and bool((attention_mask[:, 0] == 0).any()):
        return "left"
    return "right"


def check_placeholder_counts(
    input_ids: torch.Tensor, media_to_sample: torch.Tensor, image_token_id: int
) -> torch.Tensor:
    """Check one ``<image>`` placeholder per media item in every row; return the placeholder mask ``(B, L)``.

    Raises:
        ValueError: naming the first sample whose placeholder count differs from its media count, with both counts,
            or when ``media_to_sample`` is not sorted (media must be stacked in order of appearance).
    """
    batch = input_ids.shape[0]
    is_image = input_ids == image_token_id
    found = is_image.sum(1)
    if media_to_sample.numel() and (
        bool((media_to_sample[1:] < media_to_sample[:-1]).any())
        or int(media_to_sample.min()) < 0
        or int(media_to_sample.max()) >= batch
    ):
        raise ValueError(
            f"media_to_sample must be non-decreasing batch rows in [0, {batch}) (media stacked in order of "
            f"appearance); got {media_to_sample.tolist()}"
        )
    expected = torch.bincount(media_to_sample, minlength=batch)
    bad = (found != expected).nonzero()
    if bad.numel():
        b = int(bad[0])
        raise ValueError(
            f"Sample {b} has {int(found[b])} <image> placeholder(s) (token id {image_token_id}) but "
            f"{int(expected[b])} media item(s); every media item needs exactly one placeholder in its text "
            f"(totals: {int(found.sum())} placeholders, {media_to_sample.numel()} media)."
        )
    return is_image


def splice_visual_tokens(
    inputs_embeds: torch.Tensor,
    input_ids: torch.Tensor,
    attention_mask: torch.Tensor,
    visual: torch.Tensor,
    media_to_sample: torch.Tensor,
    image_token_id: int,
    labels: torch.Tensor | None = None,
    padding_side: Literal["left", "right", "auto"] = "auto",
) -> SpliceOutput:
    """Replace each ``<image>`` placeholder with its media item's ``T`` visual tokens, across the batch.

    Args:
        inputs_embeds: ``(B, L, D)`` text embeddings of ``input_ids`` (placeholder rows are discarded).
        input_ids: ``(B, L)`` with one ``image_token_id`` per media item.
        attention_mask: ``(B, L)``.
        visual: ``(N_media, T, D)`` visual tokens, media in order of appearance (batch row, then position).
        media_to_sample: ``(N_media,)`` non-decreasing batch row of each media item.
        image_token_id: the placeholder id.
        labels: optional ``(B, L)`` targets; visual positions get ``-100``.
        padding_side: where rows that grew less are filled; ``auto`` keeps the input's own padding side.

    Returns:
        :class:`SpliceOutput` with ``L' = max_b(L + n_b (T - 1))``.
    """
    if visual.shape[0] != media_to_sample.shape[0]:
        raise ValueError(
            f"{visual.shape[0]} media items of visual tokens but media_to_sample lists {media_to_sample.shape[0]}"
        )
    if visual.shape[-1] != inputs_embeds.shape[-1]:
        raise ValueError(f"Visual tokens have width {visual.shape[-1]}, the LM embeddings {inputs_embeds.shape[-1]}")
    is_image = check_placeholder_counts(input_ids, media_to_sample, image_token_id)
    batch, length, dim = inputs_embeds.shape
    num_tokens = visual.shape[1]
    device = inputs_embeds.device
    if padding_side == "auto":
        padding_side = detect_padding_side(attention_mask)

    width = torch.where(is_image, num_tokens, 1)  # (B, L)
    row_len = width.sum(1)  # (B,)
    out_len = int(row_len.max()) if batch else 0
    start = width.cumsum(1) - width  # (B, L) new index of each token (first visual token for placeholders)
    if padding_side == "left":
        start = start + (out_len - row_len)[:, None]

    rows = torch.arange(batch, device=device)[:, None].expand(batch, length)
    keep = ~is_image
    text_rows, text_cols = rows[keep], start[keep]
    media_rows, media_cols = is_image.nonzero(as_tuple=True)  # row-major = order of appearance
    media_starts = start[media_rows, media_cols]  # (N,)
    vis_cols = media_starts[:, None] + torch.arange(num_tokens, device=device)  # (N, T)
    vis_rows = media_rows[:, None].expand_as(vis_cols)

    embeds = inputs_embeds.new_zeros(batch, out_len, dim)
    embeds = embeds.index_put((text_rows, text_cols), inputs_embeds[keep])
    embeds = embeds.index_put((vis_rows.reshape(-1), vis_cols.reshape(-1)), visual.reshape(-1, dim).to(embeds.dtype))

    mask = attention_mask.new_zeros(batch, out_len)
    mask = mask.index_put((text_rows, text_cols), attention_mask[keep])
    mask = mask.index_put((vis_rows.reshape(-1), vis_cols.reshape(-1)), attention_mask.new_ones(()))

    new_labels = None
    if labels is not None:
        new_labels = labels.new_full((batch, out_len), IGNORE_INDEX)
        new_labels = new_labels.index_put((text_rows, text_cols), labels[keep])

    return SpliceOutput(
        inputs_embeds=embeds,
        attention_mask=mask,
        position_ids=positions_from_mask(mask),
        labels=new_labels,
        media_starts=media_starts,
        text_index=start,
    )
