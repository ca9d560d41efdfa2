"""bridgelab experiments: the Lightning harness, the embedded world, configs, sweeps and results.

Public API (imported lazily, so ``import experiments`` stays cheap)::

    experiments.run(cfg, run_dir=None) -> RunResult     # one run: train its stages, evaluate, write the run dir
    experiments.load_run(run_dir) -> LoadedRun          # rebuild the trained model for inference
    experiments.compose(overrides) -> DictConfig        # the Hydra config tree from Python
    experiments.load_config(overrides) -> RunConfig     # composed and validated
    experiments.load_runs(path) -> pandas.DataFrame     # results of many runs (experiments.analysis)
"""

from __future__ import annotations

import importlib
from typing import Any

_EXPORTS = {
    "run": "experiments.harness.runner",
    "RunResult": "experiments.harness.runner",
    "load_run": "experiments.harness.loading",
    "LoadedRun": "experiments.harness.loading",
    "compose": "experiments.harness.config",
    "load_config": "experiments.harness.config",
    "validate_config": "experiments.harness.config",
    "RunConfig": "experiments.harness.config",
    "StageConfig": "experiments.harness.config",
    "RunDir": "experiments.harness.rundir",
    "TaskData": "experiments.harness.data",
    "DATA_SOURCES": "experiments.harness.data",
    "load_runs": "experiments.analysis",
}

__all__ = sorted(_EXPORTS)


def __getattr__(name: str) -> Any:
    if name not in _EXPORTS:
        raise AttributeError(f"module 'experiments' has no attribute '{name}'")
    return getattr(importlib.import_module(_EXPORTS[name]), name)
