"""Exact match on short answers: lower case, punctuation dropped, whitespace collapsed, then string equality."""

from __future__ import annotations

import re
import string
from collections.abc import Mapping, Sequence
from typing import Any

_PUNCT = re.compile(f"[{re.escape(string.punctuation)}]")
_SPACE = re.compile(r"\s+")


def normalize_answer(text: str) -> str:
    """Lower case, punctuation dropped, whitespace collapsed (``" Top-left. "`` -> ``"top left"``)."""
    return _SPACE.sub(" ", _PUNCT.sub(" ", text.lower())).strip()


def exact_match(prediction: str, answer: str) -> bool:
    return normalize_answer(prediction) == normalize_answer(answer)


def sample(record: Mapping[str, Any]) -> float:
    return float(exact_match(str(record["prediction"]), str(record["answer"])))


def score(records: Sequence[Mapping[str, Any]]) -> dict[str, Any]:
    return {"exact_match": sum(sample(r) for r in records) / len(records) if records else float("nan")}


def _metrics() -> list[Any]:
    from experiments.evaluation.metrics import Metric

    return [Metric("exact_match", "exact_match", score, sample)]


METRICS = _metrics()
