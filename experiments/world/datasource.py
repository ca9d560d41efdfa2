"""The embedded world as a harness data source (registered as ``world`` in ``experiments.harness.DATA_SOURCES``).

``WorldData(config, world).build(seed)`` returns :class:`~experiments.harness.data.TaskData`: per task, a training
pool drawn with the run's ``seed`` and an evaluation pool drawn with the fixed ``eval_seed`` (every run of a sweep is
scored on the same samples). Each evaluation sample's meta carries ``text_ceiling`` (1.0 when the world LM answers it
right from the true captions, else 0.0), so the harness's ``scores.json`` reports the ceiling of that exact pool
beside ``chance`` and ``random_image`` (derived from ``choices`` and ``image_answers``). ``TaskData.info`` holds the
pool-level reference levels and a description of each task.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass, field
from typing import Any

from encoders.registry import merge_config
from experiments.harness.data import DATA_SOURCES, DataSource, TaskData
from experiments.world.ceilings import baselines, text_only_correct
from experiments.world.scenes import WorldConfig
from experiments.world.tasks import DESCRIPTIONS, TaskOptions, check_task, make_task_dataset

log = logging.getLogger(__name__)


@dataclass
class WorldDataConfig:
    """Which world tasks a run trains and evaluates on.

    Attributes:
        tasks: task names (``experiments.world.tasks.TASKS``).
        train_size: training samples per task (drawn with the run seed).
        eval_size: evaluation samples per task (drawn with ``eval_seed``).
        eval_seed: seed of the evaluation pools, fixed across runs.
        image_size: resolution of ``sample["images"]``.
        extra_image_sizes: further resolutions of the same scenes, in ``sample["images_by_size"]``.
        options: task settings (:class:`~experiments.world.tasks.TaskOptions`).
        eval_options: fields of ``options`` overridden for the evaluation pools (e.g. ``distractor_n: 8`` to test
            length generalisation).
        text_ceiling: score each evaluation sample with the world LM from its captions (needs the world's LM).
    """

    tasks: list[str] = field(default_factory=lambda: ["attribute", "compare"])
    train_size: int = 4000
    eval_size: int = 400
    eval_seed: int = 0
    image_size: int = 32
    extra_image_sizes: list[int] = field(default_factory=list)
    options: TaskOptions = field(default_factory=TaskOptions)
    eval_options: dict[str, Any] = field(default_factory=dict)
    text_ceiling: bool = True


@DATA_SOURCES.register("world", WorldDataConfig)
class WorldData(DataSource):
    """Training and evaluation pools of the embedded world's tasks."""

    config: WorldDataConfig

    def build(self, seed: int) -> TaskData:
        cfg = self.config
        for task in cfg.tasks:
            check_task(task)
        scenes = self.world.config.world if self.world is not None else WorldConfig()
        sizes = [cfg.image_size, *[s for s in cfg.extra_image_sizes if s != cfg.image_size]]
        eval_options = merge_config(TaskOptions, {**vars(cfg.options), **cfg.eval_options}, path="data.eval_options")
        lm = self.world.lm() if (cfg.text_ceiling and self.world is not None and self.world.lm_dir) else None
        if self.world is not None:
            untrained = [t for t in cfg.tasks if t not in self.world.config.lm.tasks]
            if untrained:
                log.warning(
                    "The world LM was not pretrained on the formats of %s (world.lm.tasks=%s): expect a low text-only "
                    "ceiling there; add them to world.lm.tasks (and steps, see world/full.yaml).",
                    untrained,
                    self.world.config.lm.tasks,
                )
        train, evaluation, info = {}, {}, {}
        for task in cfg.tasks:
            train[task] = make_task_dataset(
                task, "train", cfg.train_size, seed, image_sizes=sizes, options=cfg.options, world=scenes
            )
            pool = make_task_dataset(
                task, "test", cfg.eval_size, cfg.eval_seed, image_sizes=sizes, options=eval_options, world=scenes
            )
            info[task] = {"description": DESCRIPTIONS[task], **baselines(pool.samples)}
            if lm is not None:
                correct = text_only_correct(lm, pool.samples)
                for sample, ok in zip(pool.samples, correct):
                    sample.meta["text_ceiling"] = float(ok)
                info[task]["text_ceiling"] = sum(correct) / len(correct)
            evaluation[task] = pool
        return TaskData(train=train, eval=evaluation, info=info)
