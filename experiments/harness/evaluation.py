"""Scoring of a task's predictions: its metric (:mod:`experiments.evaluation`), exact match, per question type.

Predictions and scores are kept apart: ``eval/<task>/predictions.jsonl`` holds what the model said, and
:func:`score` recomputes ``scores.json`` from it alone, so a new metric never needs a new inference pass. The
metric is the task's (``metric=``, else the records' ``meta["metric"]``, else exact match).
"""

from __future__ import annotations

from collections import defaultdict
from collections.abc import Iterable, Mapping, Sequence
from typing import Any

from experiments.evaluation.metrics import get_metric, sample_value, score_records, task_metric
from experiments.evaluation.metrics.exact import exact_match, normalize_answer

__all__ = ["exact_match", "normalize_answer", "prediction_records", "reference_levels", "score"]

# sample meta keys that name a sub-category of a task (the first one present is used for per-type scores)
CATEGORY_KEYS = ("qtype", "question_type", "category")
# per-sample reference levels a data source may attach to sample meta; averaged into scores.json when present
REFERENCE_KEYS = ("chance", "random_image", "text_ceiling")


def prediction_records(
    samples: Sequence[Mapping[str, Any]], predictions: Iterable[Mapping[str, Any]], task: str,
    metric: str | None = None,
) -> list[dict[str, Any]]:
    """Join model outputs (``index``, ``prediction``, optional extras such as ``option_logprobs``) with their
    samples into ``predictions.jsonl`` records; ``correct`` is the record's value under the task's metric
    (exact match by default; ``None`` for corpus metrics such as captioning)."""
    metric = metric or task_metric(task, None, samples)
    out = []
    for pred in predictions:
        sample = samples[int(pred["index"])]
        answer = str(sample.get("answer", ""))
        meta = {k: v for k, v in dict(sample.get("meta") or {}).items() if _jsonable(v)}
        meta = {**reference_levels(meta, answer), **meta}
        record = {
            "index": int(pred["index"]),
            "task": task,
            "prompt": sample.get("text", ""),
            "prediction": pred["prediction"],
            "answer": answer,
            "meta": meta,
        }
        record["correct"] = sample_value(record, metric)
        record.update({k: v for k, v in pred.items() if k not in record})
        out.append(record)
    return out


_SCALARS = (str, int, float, bool, type(None))


def _jsonable(value: Any) -> bool:
    if isinstance(value, _SCALARS):
        return True
    return isinstance(value, (list, tuple)) and all(isinstance(v, _SCALARS) for v in value)


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


def score(records: Sequence[Mapping[str, Any]], task: str = "", metric: str | None = None) -> dict[str, Any]:
    """``scores.json`` from prediction records: the metric's scores (``metric``, ``score`` and its own keys),
    exact match, both per question type, sample counts.

    Everything is recomputed from ``prediction``, ``answer`` and ``meta``, never read from ``correct``.
    """
    n = len(records)
    metric = get_metric(metric).name if metric else task_metric(task, None, records)
    correct = [exact_match(str(r["prediction"]), str(r["answer"])) for r in records]
    out: dict[str, Any] = {"task": task, "n": n}
    if n:
        out.update(score_records(records, metric))
    else:
        out.update({"metric": metric, "score": float("nan")})
    out["exact_match"] = (sum(correct) / n) if n else float("nan")
    by: dict[str, list[int]] = defaultdict(list)
    for i, r in enumerate(records):
        meta = r.get("meta") or {}
        key = next((k for k in CATEGORY_KEYS if k in meta), None)
        if key is not None:
            by[str(meta[key])].append(i)
    if by:
        out["per_type"] = {}
        for name, rows in sorted(by.items()):
            part = [records[i] for i in rows]
            entry: dict[str, Any] = {"exact_match": sum(correct[i] for i in rows) / len(rows), "n": len(rows)}
            if metric != "exact_match":
                entry["score"] = score_records(part, metric)["score"]
            out["per_type"][name] = entry
    for key in REFERENCE_KEYS:
        values = [r["meta"][key] for r in records if isinstance((r.get("meta") or {}).get(key), (int, float))]
        if values:
            out[key] = sum(values) / len(values)
    return out
