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


class _Pool(Sequence):
    """A read-only view of an evaluation pool: the first ``limit`` samples, circular rotations written on access.

    Lazy sources decode media in ``__getitem__``; the view never holds more than one batch of decoded samples.
    """

    def __init__(self, pool: Sequence[Mapping[str, Any]], limit: int | None, metric: str) -> None:
        self.pool = pool
        size = len(pool) if limit is None else min(limit, len(pool))
        self.rows: list[tuple[int, int | None]] = [(i, None) for i in range(size)]
        if metric == "circular_mc" and size:
            self.rows = []
            for i in range(size):
                meta = pool[i].get("meta") or {}
                shifts = [None] if "circular_id" in meta else range(len(meta.get("options") or ()))
                self.rows += [(i, k) for k in shifts]

    def __len__(self) -> int:
        return len(self.rows)

    def __getitem__(self, j: int) -> Mapping[str, Any]:  # type: ignore[override]
        i, shift = self.rows[j]
        sample = self.pool[i]
        return sample if shift is None else circular_rotations(sample, i)[shift]


def prepare_samples(
    samples: Sequence[Mapping[str, Any]], metric: str, limit: int | None = None
) -> Sequence[Mapping[str, Any]]:
    """The samples to predict: the first ``limit``, with ``circular_mc`` samples that carry no ``circular_id``
    expanded into their rotations (the original index is the ``circular_id``); lazy, see :class:`_Pool`."""
    return _Pool(samples, limit, metric)


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
        chunk = [samples[i] for i in range(start, min(start + batch_size, len(samples)))]
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
        first = [pool[0]] if len(pool) else []
        metric = task_metric(task, task_info, first)
        samples = prepare_samples(pool, metric, limit)
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


def evaluate_in_run(run: Any, rd: RunDir, model: nn.Module, data: Any, collate: Any) -> dict[str, Any]:
    """The training run's own evaluation through :func:`evaluate_tasks` (used for ``eval.mode=loglikelihood``):
    the run's ``eval`` settings, metrics named as the runner names them (``eval/<task>/exact_match``, ...)."""
    tasks = data.select_eval(run.eval.tasks, "eval.tasks")
    results = evaluate_tasks(
        model, collate, tasks, rd, info=data.info, mode=run.eval.mode, batch_size=run.eval.batch_size,
        max_new_tokens=run.eval.max_new_tokens, limit=run.eval.limit,
    )
    metrics: dict[str, Any] = {}
    for task, scores in results.items():
        metrics[f"eval/{task}/exact_match"] = scores["exact_match"]
        metrics[f"eval/{task}/score"] = scores["score"]
    if results:
        values = [s["exact_match"] for s in results.values()]
        metrics["eval/mean_exact_match"] = sum(values) / len(values)
    return metrics
