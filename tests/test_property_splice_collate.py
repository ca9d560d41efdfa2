"""Property-based tests (hypothesis) of the two functions every batch goes through: the collator and the splice.

Random image counts per sample (zero included), placeholder positions and text lengths, both padding sides and
several visual token counts; the invariants: counts (one placeholder per media item, sequence lengths), label
masking (never on a placeholder, a visual token or padding) and order (media in order of appearance, text order
kept around them).
"""

from __future__ import annotations

import functools
from collections.abc import Mapping
from typing import Any

import torch
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from llm_adapters.splice import IGNORE_INDEX, splice_visual_tokens

IMAGE_ID, PAD_ID, DIM = 99, 0, 3
SETTINGS = settings(max_examples=40, deadline=None, suppress_health_check=[HealthCheck.too_slow])


@st.composite
def rows(draw: Any) -> list[tuple[list[int], list[bool]]]:
    """1-4 rows: each a token list with 0-4 placeholders at random places, and which tokens carry a label."""
    out = []
    for _ in range(draw(st.integers(1, 4))):
        text = draw(st.lists(st.integers(1, 50), min_size=0, max_size=10))
        images = draw(st.integers(0, 4))
        tokens = list(text)
        for _ in range(images):
            tokens.insert(draw(st.integers(0, len(tokens))), IMAGE_ID)
        if not tokens:
            tokens = [7]
        supervised = [draw(st.booleans()) and t != IMAGE_ID for t in tokens]
        out.append((tokens, supervised))
    return out


@SETTINGS
@given(batch=rows(), num_tokens=st.integers(1, 5), left=st.booleans())
def test_splice_keeps_counts_masks_and_order(batch: list[tuple[list[int], list[bool]]], num_tokens: int,
                                             left: bool) -> None:
    width = max(len(tokens) for tokens, _ in batch)
    ids = torch.full((len(batch), width), PAD_ID)
    mask = torch.zeros_like(ids)
    labels = torch.full_like(ids, IGNORE_INDEX)
    for b, (tokens, supervised) in enumerate(batch):
        sl = slice(width - len(tokens), width) if left else slice(0, len(tokens))
        ids[b, sl], mask[b, sl] = torch.tensor(tokens), 1
        labels[b, sl] = torch.tensor([t if s else IGNORE_INDEX for t, s in zip(tokens, supervised, strict=True)])
    counts = [tokens.count(IMAGE_ID) for tokens, _ in batch]
    media_to_sample = torch.repeat_interleave(torch.arange(len(batch)), torch.tensor(counts))
    embeds = ids[..., None].float().expand(-1, -1, DIM).clone()  # a token's embedding is its id
    n_media = int(media_to_sample.numel())
    # media m, token t -> value 1000 + 10 m + t: which media item and which of its tokens lands where
    visual = (1000 + 10 * torch.arange(n_media)[:, None] + torch.arange(num_tokens)[None, :]).float()
    visual = visual[..., None].expand(-1, -1, DIM).clone()
    side = "left" if left else "right"
    out = splice_visual_tokens(embeds, ids, mask, visual, media_to_sample, IMAGE_ID, labels, side)

    grown = [len(tokens) + c * (num_tokens - 1) for (tokens, _), c in zip(batch, counts, strict=True)]
    length = width + max(c * (num_tokens - 1) for c in counts)  # L' = L + max_b n_b (T - 1), padding kept
    assert out.inputs_embeds.shape == (len(batch), length, DIM)
    assert out.attention_mask.sum(1).tolist() == grown
    media = 0
    for b, (tokens, supervised) in enumerate(batch):
        real = out.attention_mask[b] == 1
        got = out.inputs_embeds[b, real, 0].tolist()
        expected, expected_labels = [], []
        for token, sup in zip(tokens, supervised, strict=True):
            if token == IMAGE_ID:
                assert int(out.media_starts[media]) == int(real.nonzero()[len(expected)])
                expected += [1000 + 10 * media + t for t in range(num_tokens)]
                expected_labels += [IGNORE_INDEX] * num_tokens
                media += 1
            else:
                expected.append(token)
                expected_labels.append(token if sup else IGNORE_INDEX)
        assert got == expected  # text order kept, each media item's tokens in place of its placeholder
        assert out.labels[b, real].tolist() == expected_labels  # no label on a visual token
        assert bool((out.labels[b, ~real] == IGNORE_INDEX).all())  # nor on padding
        padding = (~real).nonzero().flatten().tolist()
        if padding:  # padding sits on the requested side only
            assert padding == (list(range(len(padding))) if left else list(range(grown[b], length)))
        assert out.position_ids[b, real].tolist() == list(range(grown[b]))
    assert media == n_media


@functools.lru_cache(maxsize=1)
def collator() -> Any:
    from llm_adapters import MultimodalCollator, build_multimodal_lm

    model = build_multimodal_lm("tiny_vit", {"name": "mlp", "projector": "linear"}, "tiny_llama")
    return MultimodalCollator.for_model(model, train=True), model.image_token_id


WORDS = ["red", "square", "left", "of", "the", "blue", "circle", "two", "is", "what"]


@st.composite
def samples(draw: Any) -> list[dict[str, Any]]:
    """1-4 samples with 0-3 images each, markers at random word positions, a short answer."""
    out = []
    for _ in range(draw(st.integers(1, 4))):
        words = draw(st.lists(st.sampled_from(WORDS), min_size=1, max_size=8))
        n = draw(st.integers(0, 3))
        for _ in range(n):
            words.insert(draw(st.integers(0, len(words))), "<image>")
        # each image a constant level, unique in the batch: its place in pixel_values tells the order
        out.append({"text": " ".join(words), "answer": draw(st.sampled_from(WORDS)), "images": [None] * n})
    level = 0
    for sample in out:
        for i in range(len(sample["images"])):
            level += 1
            sample["images"][i] = torch.full((3, 32, 32), level / 20)
    return out


@SETTINGS
@given(batch=samples())
def test_collate_keeps_counts_masks_and_order(batch: list[dict[str, Any]]) -> None:
    collate, image_id = collator()
    out = collate(batch)
    counts = [len(s["images"]) for s in batch]
    assert (out.input_ids == image_id).sum(1).tolist() == counts  # one placeholder per image, per sample
    assert out.media_to_sample.tolist() == [b for b, c in enumerate(counts) for _ in range(c)]
    pixels = out.pixel_values
    assert pixels.shape[:2] == (sum(counts), 1)
    transform = collate.transforms
    if isinstance(transform, Mapping):
        transform = next(iter(transform.values()))
    images = [img for s in batch for img in s["images"]]
    if images:  # media in order of appearance: sample by sample, left to right
        assert torch.allclose(pixels[:, 0], transform(torch.stack(images)))
    labels, mask = out.labels, out.attention_mask
    assert bool((labels[out.input_ids == image_id] == IGNORE_INDEX).all())
    assert bool((labels[mask == 0] == IGNORE_INDEX).all())
    supervised = labels != IGNORE_INDEX
    assert bool((labels[supervised] == out.input_ids[supervised]).all())  # labels are the tokens they sit on
    assert bool(supervised.any(1).all())  # every sample supervises its answer
    for b in range(len(batch)):  # supervision only after the last placeholder (on the answer turn)
        places = (out.input_ids[b] == image_id).nonzero()
        if places.numel():
            assert int(supervised[b].nonzero().min()) > int(places.max())
