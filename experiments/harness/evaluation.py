"""Evaluation by generation: exact match on short answers, per task and per question type.

Predictions and scores are kept apart: ``eval/<task>/predictions.jsonl`` holds what the model said, and
:func:`score` recomputes ``scores.json`` from it alone, so a new metric never needs a new inference pass.
"""

from __future__ import annotations

import re
import string
from collections import defaultdict
from collections.abc import Iterable, Mapping, Sequence
from typing import Any

_PUNCT = re.compile(f"[{re.escape(string.punctuation)}]")
_SPACE = re.compile(r"\s+")

# sample meta keys that name a sub-category of a task (the first one present is used for per-type scores)
CATEGORY_KEYS = ("qtype", "question_type", "category")
# per-sample reference levels a data source may attach to sample meta; averaged into scores.json when present
REFERENCE_KEYS = ("chance", "random_image", "text_ceiling")


def normalize_answer(text: str) -> str:
    """Lower case, punctuation dropped, whitespace collapsed (``" Top-left. "`` -> ``"top left"``)."""
    return _SPACE.sub(" ", _PUNCT.sub(" ", text.lower())).strip()


def exact_match(prediction: str, answer: str) -> bool:
    return normalize_answer(prediction) == normalize_answer(answer)


def prediction_records(
    samples: Sequence[Mapping[str, Any]], predictions: Iterable[Mapping[str, Any]], task: str
) -> list[dict[str, Any]]:
    """Join model outputs (``index``, ``prediction``) with their samples into ``predictions.jsonl`` records."""
    out = []
    for pred in predictions:
        sample = samples[int(pred["index"])]
        answer = str(sample.get("answer", ""))
        meta = {k: v for k, v in dict(sample.get("meta") or {}).items() if _jsonable(v)}
        meta = {**reference_levels(meta, answer), **meta}
        out.append(
            {
                "index": int(pred["index"]),
                "task": task,
                "prompt": sample.get("text", ""),
                "prediction": pred["prediction"],
                "answer": answer,
                "correct": exact_match(str(pred["prediction"]), answer),
                "meta": meta,
            }
        )
    return out


_SCALARS = (str, int, float, bool, type(None))


def _jsonable(value: Any) -> bool:
    return isinstance(value, _SCALARS) or (isinstance(value, (list, tuple)) and all(isinstance(v, _SCALARS) for v in value))


def reference_levels(meta: Mapping[str, Any], answer: str) -> dict[str, float]:
    """Per-sample baselines derivable from meta: ``chance`` (1 / number of ``choices``) and ``random_image``
    (the share of ``image_answers`` equal to the answer: answering about a uniformly drawn image)."""
    out: dict[str, float] = {}
    choices = meta.get("choices")
    if isinstance(choices, (list, tuple)) and choices:
        out["chance"] = 1.0 / len(choices)
    per_image = meta.get("image_answers")
    if isinstance(per_image, (list, tuple)) and per_image and any(a is not None for a in per_image):
        out["random_image"] = sum(a is not None and exact_match(str(a), answer) for a in per_image) / len(per_image)
    return out


def score(records: Sequence[Mapping[str, Any]], task: str = "") -> dict[str, Any]:
    """``scores.json`` from prediction records: exact match overall and per question type, sample counts.

    Correctness is recomputed from ``prediction`` and ``answer``, not read from the records.
    """
    n = len(records)
    correct = [exact_match(str(r["prediction"]), str(r["answer"])) for r in records]
    out: dict[str, Any] = {"task": task, "n": n, "exact_match": (sum(correct) / n) if n else float("nan")}
    by: dict[str, list[bool]] = defaultdict(list)
    for r, ok in zip(records, correct):
        meta = r.get("meta") or {}
        key = next((k for k in CATEGORY_KEYS if k in meta), None)
        if key is not None:
            by[str(meta[key])].append(ok)
    if by:
        out["per_type"] = {k: {"exact_match": sum(v) / len(v), "n": len(v)} for k, v in sorted(by.items())}
    for key in REFERENCE_KEYS:
        values = [r["meta"][key] for r in records if isinstance((r.get("meta") or {}).get(key), (int, float))]
        if values:
            out[key] = sum(values) / len(values)
    return out
