"""The Lightning harness: configs, stages, the one LightningModule, data, trainer, evaluation, run directories.

Public entry points (also re-exported by :mod:`experiments`): :func:`run` (one configured run), :func:`load_run`
(rebuild a trained model from its run directory), :func:`compose` / :func:`load_config` (the Hydra config tree from
Python), :class:`RunConfig`, :class:`StageConfig`, :class:`TaskData` / :data:`DATA_SOURCES` (the data contract).
"""

from experiments.harness.config import RunConfig, StageConfig, compose, load_config, validate_config
from experiments.harness.data import DATA_SOURCES, DataSource, TaskData
from experiments.harness.loading import LoadedRun, load_run
from experiments.harness.rundir import RunDir
from experiments.harness.runner import RunResult, run

__all__ = [
    "DATA_SOURCES",
    "DataSource",
    "LoadedRun",
    "RunConfig",
    "RunDir",
    "RunResult",
    "StageConfig",
    "TaskData",
    "compose",
    "load_config",
    "load_run",
    "run",
    "validate_config",
]
