"""``data=mixture``: several data sources trained together with sampling weights, each keeping its own tasks.

::

    data:
      name: experiments.data.mixture:mixture
      mixture:
        m3w:   {weight: 1.0, name: experiments.data.shards:webdataset, urls: /data/m3w/{0000..0999}.tar}
        align: {weight: 0.2, name: experiments.data.llava:llava, path: blip_558k.json, image_folder: /data/558k}

A source that yields one task names it by its mixture key (``m3w``); one with several yields ``KEY/TASK``. A
source's weight is shared among its tasks in proportion to the source's own task weights (equal when it has none).
The weights are sampling weights of micro-batches (one source per micro-batch): Flamingo's per-dataset weights
(M3W 1.0, ALIGN 0.2, LTIP 0.2, VTP 0.03) weight losses of batches drawn from every source at each step, which
sampling in proportion approximates in expectation. Evaluation tasks and their ``info`` (metric, description) stay
with their source.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

from encoders.registry import ConfigError
from experiments.harness.data import DATA_SOURCES, DataSource, TaskData


@dataclass
class MixtureConfig:
    """``mixture``: by key, a source's data config (with its ``name``) plus an optional ``weight`` (default 1)."""

    mixture: dict[str, Any] = field(default_factory=dict)


@DATA_SOURCES.register("mixture", MixtureConfig)
class MixtureData(DataSource):
    """The union of several sources' tasks, weighted."""

    config: MixtureConfig

    def build(self, seed: int) -> TaskData:
        if not self.config.mixture:
            raise ConfigError("data.mixture is empty: give {key: {weight: W, name: SOURCE, ...}, ...}")
        train, evaluation, weights, info = {}, {}, {}, {}
        for key, spec in self.config.mixture.items():
            spec = dict(spec)
            weight = float(spec.pop("weight", 1.0))
            if weight < 0:
                raise ConfigError(f"data.mixture.{key}.weight must be >= 0, got {weight}")
            entry, config = DATA_SOURCES.make_config(spec, path=f"data.mixture.{key}")
            data = entry.cls(config, self.world).build(seed)
            single = len(data.train) == 1 and set(data.eval) <= set(data.train)
            rename = {t: key if single else f"{key}/{t}" for t in {*data.train, *data.eval}}
            own = {t: float((data.weights or {}).get(t, 1.0)) for t in data.train}
            total = sum(own.values()) or 1.0
            for task, samples in data.train.items():
                train[rename[task]] = samples
                weights[rename[task]] = weight * own[task] / total
            for task, samples in data.eval.items():
                evaluation[rename[task]] = samples
            for task, facts in data.info.items():
                info[rename.get(task, task)] = {**facts, "mixture": key}
        return TaskData(train=train, eval=evaluation, weights=weights, info=info)
