"""The Hydra application behind ``bridgelab train`` and ``bridgelab sweep``.

One job = one run directory. In a single run it is ``run_dir``; in a multirun (sweep) it is
``run_dir/<the job's overrides>`` (``hydra.sweep.subdir``), so ``run_dir=PATH`` puts a run or a sweep's runs in PATH.
A sweep member that fails is recorded in its run directory (status ``failed`` with the traceback) and the sweep goes
on; rerunning the sweep skips finished members and resumes unfinished ones from their last checkpoint.

With ``launcher=local`` (Hydra's basic launcher) every member runs in this process one after another, so they share
imports, the world's pretrained backbones and the sample pools (see ``experiments.harness.build``). With
``launcher=joblib`` each of ``n_jobs`` worker processes shares them between the members it runs, and starts from its
share of the cores (``experiments.harness.threads.share_cores``).
"""

from __future__ import annotations

import logging
import os
import sys
import traceback
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import hydra
from hydra.core.hydra_config import HydraConfig
from hydra.types import RunMode
from omegaconf import DictConfig, OmegaConf

from experiments.harness import bar_slot, signals, threads
from encoders.registry import ConfigError
from experiments.harness.config import cli_wins, compose, first_values, is_sweep_value, validate_config
from experiments.harness.rundir import STATUS_FAILED, RunDir, RunRefused, now_iso
from experiments.harness.runner import RunResult, run

log = logging.getLogger("bridgelab")

# Run directories of the jobs of this process that failed (a sweep with failed members exits non-zero).
FAILED: list[str] = []
# ... and those refused (their directory holds another run; nothing in it was changed).
REFUSED: list[str] = []


def _job_overrides() -> list[str]:
    return list(HydraConfig.get().overrides.task)


def hydra_task(cfg: DictConfig) -> dict[str, Any]:
    """Run one Hydra job; in a multirun, record failures instead of raising so the other members go on."""
    hc = HydraConfig.get()
    multirun = hc.mode == RunMode.MULTIRUN
    run_dir = hc.runtime.output_dir
    cfg = OmegaConf.to_container(cfg, resolve=False)  # type: ignore[assignment]
    cfg = OmegaConf.create(cfg)
    cli_wins(cfg, _job_overrides(), list(hc.runtime.choices.keys()))
    tags = dict(cfg.get("tags") or {})
    tags.setdefault("overrides", _job_overrides())
    cfg.tags = tags
    if multirun and "joblib" in str(hc.launcher.get("_target_", "")):
        signals.stop_with_parent()  # a worker process: stop (recorded interrupted) when the sweep's process dies
        n_jobs = int(hc.launcher.get("n_jobs") or 1)
        threads.share_cores(n_jobs)  # the workers split the cores between them
        bar_slot.claim(n_jobs)  # and the terminal: one line each for their progress bars
        keep_worker_caches()
    try:
        result: RunResult = run(cfg, run_dir=run_dir)
    except RunRefused:
        REFUSED.append(run_dir)
        raise  # the directory holds another run: touch nothing, stop the sweep, exit non-zero
    except Exception as err:  # noqa: BLE001 - a failing member must not stop the sweep
        record_failure(run_dir, cfg, err)
        FAILED.append(run_dir)
        if not multirun:
            raise
        log.error("Run %s failed: %s: %s (recorded in its run.json)", run_dir, type(err).__name__, err)
        return {"run_dir": run_dir, "status": "failed", "error": f"{type(err).__name__}: {err}"}
    if result.skipped:
        log.info("%s: finished earlier, skipped", run_dir)
    return {"run_dir": str(result.run_dir), "status": result.status, "metrics": result.metrics}


def keep_worker_caches() -> None:
    """Stop loky from recycling this worker as "leaking" memory.

    loky measures a worker's memory after its first task and replaces the worker once it has grown by 300 MB
    (``process_executor._MAX_MEMORY_LEAK_SIZE``). A sweep worker grows on purpose: the sample pools of each new seed
    and the frozen encoders' features (``feature_cache``, bounded) are kept for the members that follow, and a
    replacement worker has to rebuild them, world backbones included (measured 2026-12-01: 5 workers replaced in the
    demo's first 11 runs). The check reads this module global in the worker after every task, so raising it here
    (once the first task runs) keeps the worker and its caches.
    """
    try:
        from joblib.externals.loky import process_executor
    except ImportError:  # pragma: no cover - joblib ships loky; nothing to do without it
        return
    process_executor._MAX_MEMORY_LEAK_SIZE = max(process_executor._MAX_MEMORY_LEAK_SIZE, 2**62)


def record_failure(run_dir: str, cfg: DictConfig, err: BaseException) -> None:
    """Make sure a failed job says so in its run directory, even when it failed before the run started (an invalid
    config): ``run`` records failures itself once it has validated the config. An existing ``run.json`` is never
    rewritten here: it belongs to a run that this job did not start (it may be finished), or ``run`` recorded the
    failure already."""
    rd = RunDir(run_dir)
    if rd.exists():
        return
    try:
        config = OmegaConf.to_container(cfg, resolve=True)
    except Exception:  # noqa: BLE001 - an unresolvable config is kept as written
        config = OmegaConf.to_container(cfg, resolve=False)
    rd.update(status=STATUS_FAILED, error=f"{type(err).__name__}: {err}", traceback=traceback.format_exc(),
              config=config, started=now_iso())


@hydra.main(version_base="1.3", config_path="../configs", config_name="config")
def _hydra_main(cfg: DictConfig) -> Any:
    return hydra_task(cfg)


def preflight(overrides: Sequence[str]) -> DictConfig:
    """Compose and validate the config (a sweep: its first member) before Hydra starts, so that a typo fails at once
    with the key's path and the valid keys (Hydra alone would only say that it cannot override the key)."""
    cfg = compose(first_values(overrides), with_hydra=True)
    run = validate_config(cfg)
    for key, value in (("run_dir", run.run_dir), ("hydra.run.dir", cfg.hydra.run.dir),
                       ("hydra.sweep.dir", cfg.hydra.sweep.dir)):
        path = Path(str(value))
        blocked = next((p for p in (path, *path.parents) if p.exists() and not p.is_dir()), None)
        if blocked is not None:
            raise ConfigError(
                f"{key}={value} cannot be a run directory: {blocked} is a file, not a directory. "
                "Fix: pick another run_dir=PATH, or move the file away."
            )
    return cfg


def sweep_dirname_override(overrides: Sequence[str], cfg: DictConfig) -> str:
    """An override that names each sweep member's directory by the keys that vary only (``bridge=mlp,seed=0``):
    the command line's fixed overrides join the configured ``override_dirname.exclude_keys``, except a key the
    config itself sweeps (``seed=2`` of a sweep over seeds 0, 1, 2 keeps ``seed=2`` in the name, so the member lands
    where the full sweep puts it)."""
    excluded = list(cfg.hydra.job.config.override_dirname.exclude_keys)
    swept = set(cfg.hydra.sweeper.get("params") or {})
    for override in overrides:
        key, sep, value = override.partition("=")
        key = key.lstrip("+~")
        fixed = sep and not is_sweep_value(value) and key not in swept
        if fixed and key not in excluded and not key.startswith("hydra"):
            excluded.append(key)
    quoted = ",".join(f"'{k}'" for k in excluded)
    return f"hydra.job.config.override_dirname.exclude_keys=[{quoted}]"


def launch(overrides: Sequence[str], multirun: bool = False, program: str = "bridgelab") -> int:
    """Run the Hydra app with ``overrides`` (``multirun``: a sweep), as if they were given on the command line.

    Returns the exit status: 0, or 1 when a job failed (a sweep goes on past failed members, then reports them) or
    was refused (its directory holds a run of another config; Hydra prints why and the sweep stops there).

    Raises:
        ConfigError: the composed config is invalid (checked before any run starts).
    """
    overrides = list(overrides)
    FAILED.clear()
    REFUSED.clear()
    started = now_iso()
    sweep_root: str | None = None
    if not any(o.startswith("-") for o in overrides):  # --cfg, --help, --info: let Hydra answer
        cfg = preflight(overrides)
        if multirun or cfg.hydra.mode == RunMode.MULTIRUN:
            overrides.append(sweep_dirname_override(overrides, cfg))
            sweep_root = str(cfg.hydra.sweep.dir)
            if not os.path.isabs(sweep_root):
                # launcher=joblib reuses its worker processes across sweeps, and a worker resolves a relative
                # directory against its own working directory (where it was started), not this process's
                sweep_root = os.path.abspath(sweep_root)
                overrides.append(f"hydra.sweep.dir='{sweep_root}'")
    argv = [program, *(["--multirun"] if multirun else []), *overrides]
    saved = sys.argv
    sys.argv = argv
    record = Path(sweep_root or ".", "multirun.yaml")  # Hydra rewrites it at every sweep start
    previous = record.read_bytes() if sweep_root and record.exists() else None
    members_before = _member_files(sweep_root) if previous is not None else {}
    code = 0
    try:
        _hydra_main()
    except SystemExit as err:  # Hydra reports a job's exception itself and exits 1
        code = int(err.code or 0) if not isinstance(err.code, str) else 1
    finally:
        sys.argv = saved
    failed = sorted(set(FAILED) | set(failed_since(sweep_root, started) if sweep_root else []))
    if failed:
        log.error("%d run(s) failed: %s (see their run.json)", len(failed), ", ".join(failed))
        code = code or 1
    # a refused sweep leaves its root as it was, too; with launcher=joblib the refusal happened in a worker, so
    # "refused" is read off the run directories: this sweep wrote none of their run.json files
    if code and previous is not None and (REFUSED or _member_files(sweep_root) == members_before):
        record.write_bytes(previous)
    return code


def failed_since(root: str, since: str) -> list[str]:
    """Run directories under ``root`` recorded as failed at or after ``since`` (ISO time): the members that failed
    in worker processes (``launcher=joblib``), whose outcome does not come back to this process."""
    found = []
    for path in Path(root).glob("**/run.json"):
        try:
            record = RunDir(path.parent).read()
        except (OSError, ValueError):
            continue
        if record.get("status") == STATUS_FAILED and str(record.get("updated", "")) >= since:
            found.append(str(path.parent))
    return found


def _member_files(root: str | None) -> dict[str, tuple[int, int]]:
    """``(mtime_ns, size)`` of every ``run.json`` under a sweep root: equal before and after = no member written."""
    return {str(p): (p.stat().st_mtime_ns, p.stat().st_size) for p in Path(root or ".").glob("**/run.json")}
