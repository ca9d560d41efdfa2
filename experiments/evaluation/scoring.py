"""Score a model on evaluation tasks without a trainer: generate or rank candidates, write predictions and scores.

:func:`evaluate_tasks` is what ``bridgelab eval`` runs on a rebuilt model, and what a notebook can call on a model it
holds. Per task it picks the metric (:func:`~experiments.evaluation.metrics.task_metric`), writes the rotations of
``circular_mc`` samples when the source gave none, predicts every sample (``mode="generate"``: greedy decoding in
batches; ``mode="loglikelihood"``: the most likely candidate, :mod:`experiments.evaluation.likelihood`), and writes
``eval/<task>/predictions.jsonl`` and ``scores.json`` into ``out`` (a :class:`~experiments.harness.rundir.RunDir`).
"""

from __future__ import annotations

import logging
from collections.abc import Mapping, Sequence
from typing import Any

import torch
from torch import nn

from encoders.registry import ConfigError
from experiments.evaluation.likelihood import choose
from experiments.evaluation.metrics import task_metric
from experiments.evaluation.metrics.choice import circular_rotations
from experiments.harness.evaluation import prediction_records, score
from experiments.harness.module import generate_answers
from experiments.harness.rundir import RunDir

log = logging.getLogger(__name__)

MODES = ("generate", "loglikelihood")


def check_mode(mode: str) -> str:
    if mode not in MODES:
        raise ConfigError(f"eval.mode={mode!r} is not a mode; use one of {', '.join(MODES)}.")
    return mode


def prepare_samples(samples: Sequence[Mapping[str, Any]], metric: str) -> list[Mapping[str, Any]]:
    """The samples to predict: as given, except ``circular_mc`` samples without ``circular_id``, expanded into
    their rotations (the original index is the ``circular_id``)."""
    samples = list(samples)
    if metric != "circular_mc" or all("circular_id" in (s.get("meta") or {}) for s in samples):
        return samples
    out: list[Mapping[str, Any]] = []
    for i, sample in enumerate(samples):
        out += [sample] if "circular_id" in (sample.get("meta") or {}) else circular_rotations(sample, i)
    return out


@torch.no_grad()
def predict(
    model: nn.Module, collate: Any, samples: Sequence[Mapping[str, Any]], mode: str, batch_size: int,
    max_new_tokens: int,
) -> list[dict[str, Any]]:
    """One ``{"index", "prediction", ...}`` per sample, in order."""
    check_mode(mode)
    if mode == "loglikelihood":
        return [{"index": i, **choose(model, collate, s)} for i, s in enumerate(samples)]
    device = next(model.parameters()).device
    out: list[dict[str, Any]] = []
    for start in range(0, len(samples), batch_size):
        chunk = list(samples[start : start + batch_size])
        texts = generate_answers(model, collate(chunk).to(device), max_new_tokens)
        out += [{"index": start + i, "prediction": t} for i, t in enumerate(texts)]
    return out


def evaluate_tasks(
    model: nn.Module,
    collate: Any,
    tasks: Mapping[str, Sequence[Mapping[str, Any]]],
    out: RunDir,
    *,
    info: Mapping[str, Mapping[str, Any]] | None = None,
    mode: str = "generate",
    batch_size: int = 64,
    max_new_tokens: int = 4,
    limit: int | None = None,
    extra: Mapping[str, Any] | None = None,
) -> dict[str, dict[str, Any]]:
    """Score ``model`` on each task and write its predictions and scores under ``out``; the scores by task.

    Args:
        collate: the generation collator of ``model``.
        tasks: evaluation samples by task name.
        info: per-task facts of the data (``metric``, reference levels, description) merged into ``scores.json``.
        mode: ``generate`` or ``loglikelihood``.
        limit: score at most this many samples per task (before circular expansion).
        extra: fields added to every ``scores.json`` (e.g. the checkpoint scored).
    """
    check_mode(mode)
    model.eval()
    results: dict[str, dict[str, Any]] = {}
    for task, pool in tasks.items():
        task_info = dict((info or {}).get(task, {}))
        base = list(pool)[:limit] if limit is not None else list(pool)
        metric = task_metric(task, task_info, base)
        samples = prepare_samples(base, metric)
        predictions = predict(model, collate, samples, mode, batch_size, max_new_tokens)
        records = prediction_records(samples, predictions, task, metric)
        scores = score(records, task, metric)
        scores["mode"] = mode
        scores.update({k: v for k, v in task_info.items() if k not in scores and v is not None})
        scores.update(dict(extra or {}))
        out.write_predictions(task, records)
        out.write_scores(task, scores)
        results[task] = scores
        log.info("%s: %s %s %.4f (n=%d, %s)", out.path.name, task, scores["metric"], scores["score"], scores["n"], mode)
    return results
