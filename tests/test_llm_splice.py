"""Prefix splicing: equality with a hand-built ``inputs_embeds``, padding sides, count errors, every LM family."""

from __future__ import annotations

import pytest
import torch

from llm_adapters import build_lm
from llm_adapters.splice import positions_from_mask, splice_visual_tokens

FAMILIES = ["tiny_llama", "tiny_qwen2", "tiny_mistral", "tiny_gpt2", "tiny_opt", "tiny_mpt"]
T = 3


def make_rows(image_id: int, counts: list[int], lengths: list[int], pad_side: str = "right", vocab: int = 300):
    """Random text rows with ``counts[b]`` placeholders at random places; returns ids, mask and labels ``(B, L)``."""
    gen = torch.Generator().manual_seed(1)
    rows = []
    for count, length in zip(counts, lengths, strict=True):
        ids = torch.randint(3, vocab, (length,), generator=gen)
        ids[torch.randperm(length, generator=gen)[:count]] = image_id
        rows.append(ids)
    width = max(lengths)
    input_ids = torch.zeros(len(rows), width, dtype=torch.long)
    mask = torch.zeros_like(input_ids)
    for b, ids in enumerate(rows):
        sl = slice(width - len(ids), width) if pad_side == "left" else slice(0, len(ids))
        input_ids[b, sl], mask[b, sl] = ids, 1
    labels = torch.where((mask == 1) & (input_ids != image_id), input_ids, -100)
    return input_ids, mask, labels


def hand_built(embeds, input_ids, mask, labels, visual, image_id, pad_side):
    """The reference: a plain loop over samples and tokens."""
    rows, media = [], 0
    for b in range(input_ids.shape[0]):
        e, m, lab = [], [], []
        for i in range(input_ids.shape[1]):
            if input_ids[b, i] == image_id:
                e += list(visual[media])
                m += [1] * T
                lab += [-100] * T
                media += 1
            else:
                e.append(embeds[b, i])
                m.append(int(mask[b, i]))
                lab.append(int(labels[b, i]))
        rows.append((e, m, lab))
    width = max(len(r[0]) for r in rows)
    out_e = embeds.new_zeros(len(rows), width, embeds.shape[-1])
    out_m = torch.zeros(len(rows), width, dtype=torch.long)
    out_l = torch.full((len(rows), width), -100)
    for b, (e, m, lab) in enumerate(rows):
        sl = slice(width - len(e), width) if pad_side == "left" else slice(0, len(e))
        out_e[b, sl] = torch.stack(e)
        out_m[b, sl] = torch.tensor(m)
        out_l[b, sl] = torch.tensor(lab)
    return out_e, out_m, out_l


@pytest.mark.parametrize("preset", FAMILIES)
@pytest.mark.parametrize("pad_side", ["right", "left"])
def test_splice_equals_hand_built(preset: str, pad_side: str) -> None:
    lm = build_lm(preset)
    image_id = lm.add_special_tokens(["<image>"])["<image>"]
    counts = [0, 1, 3]  # samples with zero, one and three images
    input_ids, mask, labels = make_rows(image_id, counts, [7, 9, 8], pad_side)
    media_to_sample = torch.repeat_interleave(torch.arange(3), torch.tensor(counts))
    visual = torch.randn(sum(counts), T, lm.info.hidden_size)
    embeds = lm.embed(input_ids)

    out = splice_visual_tokens(embeds, input_ids, mask, visual, media_to_sample, image_id, labels=labels)
    ref_e, ref_m, ref_l = hand_built(embeds, input_ids, mask, labels, visual, image_id, pad_side)

    assert torch.equal(out.inputs_embeds, ref_e)
    assert torch.equal(out.attention_mask, ref_m)
    assert torch.equal(out.labels, ref_l)
    assert torch.equal(out.position_ids, positions_from_mask(ref_m))
    assert out.inputs_embeds.shape[1] == input_ids.shape[1] + 3 * (T - 1)  # L + max_b n_b (T - 1)
    if pad_side == "left":
        assert bool((out.attention_mask[:, -1] == 1).all())
    # media_starts point at each media's first visual token
    flat = out.inputs_embeds[media_to_sample, out.media_starts]
    assert torch.equal(flat, visual[:, 0])

    lm.eval()
    got = lm(inputs_embeds=out.inputs_embeds, attention_mask=out.attention_mask, position_ids=out.position_ids)
    ref = lm(inputs_embeds=ref_e, attention_mask=ref_m, position_ids=positions_from_mask(ref_m))
    assert torch.equal(got.logits, ref.logits)


def test_splice_is_differentiable_in_visual_and_text() -> None:
    input_ids, mask, _ = make_rows(999, [2, 1], [6, 5])
    visual = torch.randn(3, T, 8, requires_grad=True)
    embeds = torch.randn(2, 6, 8, requires_grad=True)
    out = splice_visual_tokens(embeds, input_ids, mask, visual, torch.tensor([0, 0, 1]), 999)
    out.inputs_embeds.sum().backward()
    assert torch.equal(visual.grad, torch.ones_like(visual))
    expected = (input_ids != 999).float()[..., None].expand_as(embeds)  # padding rows are carried over too
    assert torch.equal(embeds.grad, expected)


@pytest.mark.parametrize("placeholders, media, sample", [([1, 1], [1, 2], 1), ([2, 0], [1, 0], 0)])
def test_count_mismatch_names_both_counts_and_sample(placeholders, media, sample) -> None:
    input_ids, mask, _ = make_rows(999, placeholders, [6, 6])
    media_to_sample = torch.repeat_interleave(torch.arange(2), torch.tensor(media))
    visual = torch.randn(len(media_to_sample), T, 8)
    with pytest.raises(ValueError) as err:
        splice_visual_tokens(torch.randn(2, 6, 8), input_ids, mask, visual, media_to_sample, 999)
    msg = str(err.value)
    assert f"Sample {sample} has {placeholders[sample]} <image> placeholder" in msg
    assert f"but {media[sample]} media item" in msg


def test_unsorted_media_to_sample_rejected() -> None:
    input_ids, mask, _ = make_rows(999, [1, 1], [4, 4])
    with pytest.raises(ValueError, match="non-decreasing"):
        splice_visual_tokens(torch.randn(2, 4, 8), input_ids, mask, torch.randn(2, T, 8), torch.tensor([1, 0]), 999)
