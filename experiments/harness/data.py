"""The data contract of the harness: a data source turns its config into training and evaluation samples by task.

A sample is a plain dict::

    {"text": "... <image> ... answer :", "images": [image or frame stack, ...], "answer": "red",
     "meta": {"question_type": "colour", "chance": 0.17, ...}}

``text`` holds one ``<image>`` placeholder per entry of ``images``. The model's collator appends ``answer`` as the
training target and uses ``text`` alone as the generation prompt. ``meta`` keys that the evaluation understands
(``question_type``, ``chance``, ``random_image``, ``text_ceiling``) flow into ``scores.json``.

Data sources are registered in :data:`DATA_SOURCES` by name (``data.name`` in the config); the embedded world
registers ``world``, ``experiments.data`` the real-data sources (``llava``, ``webdataset``, ``hf``, ``mixture``).
A user's source registers the same way from a module listed in ``plugins``.

A training task is either a map-style sequence (``len`` and ``task[i]``; lazy sources decode in ``__getitem__``, so
the index stays in memory and the pixels are made in DataLoader workers) or a :class:`SampleStream` (tar shards read
in order). ``TaskData.info[task]["metric"]`` and ``sample["meta"]["metric"]`` name how a task is scored.
"""

from __future__ import annotations

import abc
from collections.abc import Iterator, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

from encoders.registry import ConfigError, Registry

Sample = Mapping[str, Any]


@dataclass
class TaskData:
    """Samples of a run, by task.

    Attributes:
        train: training samples per task.
        eval: evaluation samples per task (held out).
        weights: sampling weight of each training task (``None``: equal).
        info: per-task facts reported beside scores (chance level, text-only ceiling, a description).
    """

    train: dict[str, Sequence[Sample]]
    eval: dict[str, Sequence[Sample]]
    weights: dict[str, float] | None = None
    info: dict[str, dict[str, Any]] = field(default_factory=dict)

    def select_train(self, tasks: Sequence[str] | None, where: str) -> dict[str, Sequence[Sample]]:
        if tasks is None:
            return dict(self.train)
        unknown = [t for t in tasks if t not in self.train]
        if unknown:
            raise ConfigError(f"'{where}' names unknown training tasks {unknown}; known: {', '.join(self.train)}.")
        return {t: self.train[t] for t in tasks}

    def select_eval(self, tasks: Sequence[str] | None, where: str) -> dict[str, Sequence[Sample]]:
        if tasks is None:
            return dict(self.eval)
        unknown = [t for t in tasks if t not in self.eval]
        if unknown:
            raise ConfigError(f"'{where}' names unknown evaluation tasks {unknown}; known: {', '.join(self.eval)}.")
        return {t: self.eval[t] for t in tasks}


class DataSource(abc.ABC):
    """Builds a run's :class:`TaskData` from its config.

    Args:
        config: the source's dataclass config (merged from ``data``).
        world: what ``world`` built (pretrained backbones, caches), or ``None`` when the run has no world.
    """

    def __init__(self, config: Any, world: Any = None) -> None:
        self.config = config
        self.world = world

    @abc.abstractmethod
    def build(self, seed: int) -> TaskData:
        """The samples for a run with data seed ``seed`` (deterministic)."""


class SampleStream(abc.ABC):
    """A training task read as a stream (tar shards, for example) rather than by index.

    The data is cut into ``parts`` disjoint parts that together cover it (shards, or samples when there are fewer
    shards than parts); the training stream reads part ``p`` in one DataLoader worker, epoch after epoch, and resumes
    by skipping the records a part had given out (undecoded, so skipping is cheap).
    """

    @abc.abstractmethod
    def records(self, part: int, parts: int, seed: int) -> Iterator[Any]:
        """Undecoded records of part ``part`` of ``parts``, epoch after epoch (an infinite iterator)."""

    @abc.abstractmethod
    def decode(self, record: Any) -> Sample:
        """A sample from one record (media decoded here, in the worker)."""

    def take(self, records: Iterator[Any], count: int) -> list[Sample]:
        """The next ``count`` samples of ``records``."""
        return [self.decode(next(records)) for _ in range(count)]


DATA_SOURCES: Registry[DataSource] = Registry("data", base=DataSource)
