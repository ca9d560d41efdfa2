"""The metric registry: one :class:`Metric` per name a task may choose (see :mod:`experiments.evaluation`).

A metric reads prediction records (``predictions.jsonl`` rows: ``prediction``, ``answer``, ``meta``) and returns
its scores as a dict whose ``primary`` key is the headline number. Metrics scored per sample also give each record
its own value (the ``correct`` field of ``predictions.jsonl``); corpus metrics (captioning) do not.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from typing import Any

from encoders.registry import ConfigError

Record = Mapping[str, Any]


@dataclass(frozen=True)
class Metric:
    """A named way to score a task.

    Attributes:
        name: the name tasks choose it by (``info[task]["metric"]``).
        primary: the key of :attr:`score`'s result that is the task's headline number.
        score: records -> ``{primary: value, ...}``.
        sample: record -> its own value (``None`` for corpus-level metrics).
    """

    name: str
    primary: str
    score: Callable[[Sequence[Record]], dict[str, Any]]
    sample: Callable[[Record], float] | None = None


METRICS: dict[str, Metric] = {}
DEFAULT_METRIC = "exact_match"


def register_metric(metric: Metric) -> Metric:
    """Add ``metric`` to :data:`METRICS` (a user's plug-in module may add its own)."""
    if metric.name in METRICS and METRICS[metric.name] is not metric:
        raise ValueError(f"A metric named '{metric.name}' is registered already; pick another name.")
    METRICS[metric.name] = metric
    return metric


def get_metric(name: str) -> Metric:
    if name not in METRICS:
        raise ConfigError(f"Unknown metric '{name}'. Known metrics: {', '.join(sorted(METRICS))}.")
    return METRICS[name]


def task_metric(task: str, info: Mapping[str, Any] | None, samples: Sequence[Mapping[str, Any]] = ()) -> str:
    """The metric name of ``task``: ``info["metric"]``, else the samples' ``meta["metric"]``, else exact match."""
    if info and info.get("metric"):
        return str(get_metric(str(info["metric"])).name)
    named = {str((s.get("meta") or {}).get("metric")) for s in samples if (s.get("meta") or {}).get("metric")}
    if len(named) > 1:
        raise ConfigError(
            f"Task '{task}': its samples name different metrics {sorted(named)}; one task has one metric. "
            "Split the task, or set info[task]['metric']."
        )
    return get_metric(named.pop()).name if named else DEFAULT_METRIC


def score_records(records: Sequence[Record], metric: str) -> dict[str, Any]:
    """``{"metric", "score", **the metric's keys}`` for ``records``."""
    entry = get_metric(metric)
    values = entry.score(records)
    return {"metric": entry.name, "score": values[entry.primary], **values}


def sample_value(record: Record, metric: str) -> float | None:
    """One record's own value under ``metric`` (``None`` for corpus metrics)."""
    entry = get_metric(metric)
    return None if entry.sample is None else entry.sample(record)


def _register_builtins() -> None:
    from experiments.evaluation.metrics import caption, choice, exact, vqa

    for module in (exact, vqa, choice, caption):
        for metric in module.METRICS:
            register_metric(metric)


_register_builtins()
