"""Turning released records into bridgelab samples, shared by the real data sources.

A LLaVA conversation becomes ``{"text": user, "answer": assistant}`` when it is one exchange (the same shape as the
world's samples, so the collator renders it identically), else ``{"messages": [...]}`` with every assistant turn a
training target (LLaVA's masking); a conversation that ends on a user turn, or has no assistant turn, is an error.
An interleaved document (MMC4 / OBELICS: ``texts`` and ``images`` lists with gaps) becomes a plain document
``{"text": "... <image> ..."}`` trained on all its text. Every sample's ``meta`` carries ``id``, ``source`` and the
source's ``metric`` (how the evaluation scores its task) and, where given, ``answers`` (VQA-style reference answers).
:class:`LazySamples` is the lazy, map-style sequence the sources return, with ``skip_bad_samples``.
"""

from __future__ import annotations

import logging
import multiprocessing
from collections.abc import Callable, Mapping, Sequence
from typing import Any

from experiments.data.index import RecordError
from experiments.data.media import MediaError

log = logging.getLogger(__name__)

IMAGE_TOKEN = "<image>"  # the marker of one media item (llm_adapters.adapter.IMAGE_TOKEN)
ROLES = {"human": "user", "user": "user", "gpt": "assistant", "assistant": "assistant", "system": "system"}


class DataError(ValueError):
    """A broken sample (names the sample id, where it is, and what is wrong)."""


BAD_SAMPLE_ERRORS = (DataError, RecordError, MediaError)


def conversation_messages(conversations: Any, sample_id: Any, where: str) -> list[dict[str, str]]:
    """LLaVA ``conversations`` (``from``/``value``, or ``role``/``content``) -> chat messages."""
    if not isinstance(conversations, list) or not conversations:
        raise DataError(f"Sample {sample_id!r} ({where}) has no 'conversations' list")
    out = []
    for turn in conversations:
        role = turn.get("from", turn.get("role")) if isinstance(turn, Mapping) else None
        content = turn.get("value", turn.get("content")) if isinstance(turn, Mapping) else None
        if role not in ROLES or not isinstance(content, str):
            raise DataError(
                f"Sample {sample_id!r} ({where}): a turn needs 'from' in {sorted(ROLES)} and a string 'value'; "
                f"got {turn!r}"
            )
        out.append({"role": ROLES[role], "content": content})
    if out[-1]["role"] != "assistant":
        raise DataError(
            f"Sample {sample_id!r} ({where}) ends on a {out[-1]['role']} turn; the last turn must be the answer")
    return out


def check_markers(texts: Sequence[str], n_media: int, sample_id: Any, where: str) -> None:
    found = sum(t.count(IMAGE_TOKEN) for t in texts)
    if found != n_media:
        raise DataError(
            f"Sample {sample_id!r} ({where}) has {found} {IMAGE_TOKEN} marker(s) but {n_media} image/video item(s); "
            f"write one {IMAGE_TOKEN} per image where it belongs (a video counts as one item)."
        )


def conversation_sample(
    messages: list[dict[str, str]], images: list[Any], meta: dict[str, Any], sample_id: Any, where: str
) -> dict[str, Any]:
    """A sample from chat messages and decoded media (markers checked)."""
    check_markers([m["content"] for m in messages], len(images), sample_id, where)
    if len(messages) == 2 and messages[0]["role"] == "user":
        return {"text": messages[0]["content"], "answer": messages[1]["content"], "images": images, "meta": meta}
    return {"messages": messages, "images": images, "meta": meta}


def interleaved_text(texts: Sequence[str | None], images: Sequence[Any | None], sample_id: Any, where: str) -> str:
    """OBELICS layout (``texts[i]`` xor ``images[i]`` set) -> text with one marker per image, in place."""
    if len(texts) != len(images):
        raise DataError(
            f"Document {sample_id!r} ({where}): 'texts' has {len(texts)} entries but 'images' {len(images)}; "
            "the OBELICS layout needs equal lengths with null gaps"
        )
    parts = []
    for text, image in zip(texts, images):
        if image is not None:
            parts.append(IMAGE_TOKEN)
        if text is not None:
            parts.append(str(text))
    return " ".join(parts)


class LazySamples(Sequence):
    """A map-style sequence of samples made on access by ``make(i)``; bad samples skipped up to a budget.

    Args:
        size: number of samples.
        make: builds sample ``i`` (decodes its media).
        describe: ``describe(i)`` -> the sample's text fields and meta without decoding media (for evaluation
            records); ``None``: ``make``.
        skip_bad_samples: how many broken samples the run may skip (each logged with its id; the next sample is
            returned instead); 0 raises at the first. The count lives in shared memory, so DataLoader workers
            (forked or spawned) draw on one budget; a copy pickled any other way counts on its own.
    """

    def __init__(
        self,
        size: int,
        make: Callable[[int], dict[str, Any]],
        describe: Callable[[int], dict[str, Any]] | None = None,
        skip_bad_samples: int = 0,
    ) -> None:
        self.size = size
        self.make = make
        self.describe = describe or make
        self.skip_bad_samples = skip_bad_samples
        self.skipped: list[str] = []  # this process's skips, for the messages
        self._skips = _SharedCount()

    def __len__(self) -> int:
        return self.size

    def __getitem__(self, i: int) -> dict[str, Any]:  # type: ignore[override]
        if not -self.size <= i < self.size:
            raise IndexError(f"sample {i} out of range ({self.size} samples)")
        i %= self.size
        for attempt in range(self.size):
            j = (i + attempt) % self.size
            try:
                return self.make(j)
            except BAD_SAMPLE_ERRORS as err:
                taken = self._skips.take(self.skip_bad_samples)
                if taken is None:
                    if self.skip_bad_samples:
                        note = f"after skipping {self.skip_bad_samples} bad samples: data.skip_bad_samples"
                        err.args = (f"{err.args[0]} ({note})",)
                    raise
                self.skipped.append(str(err))
                log.warning("Skipping bad sample %d/%d: %s", taken, self.skip_bad_samples, err)
        raise DataError("Every sample is broken")

    def record(self, i: int) -> dict[str, Any]:
        """Sample ``i`` without its media (text, answer, meta)."""
        return self.describe(i)


class _SharedCount:
    """A counter in shared memory that DataLoader workers inherit (fork) or receive while being spawned."""

    def __init__(self) -> None:
        self._value = multiprocessing.Value("i", 0)

    def take(self, limit: int) -> int | None:
        """Count one more skip and return the new total, or ``None`` when ``limit`` is already reached."""
        with self._value.get_lock():
            if self._value.value >= limit:
                return None
            self._value.value += 1
            return self._value.value

    def __getstate__(self) -> dict[str, Any]:
        try:  # shared memory travels only to a process being started; elsewhere the copy counts on its own
            multiprocessing.context.assert_spawning(self)
            return {"value": self._value}
        except RuntimeError:
            return {"value": None, "count": self._value.value}

    def __setstate__(self, state: dict[str, Any]) -> None:
        self._value = state["value"] or multiprocessing.Value("i", state["count"])
