"""Runs one configured experiment end to end and keeps its run directory truthful.

``run(cfg)``: validate the config; lock the run directory (one process per run); skip the run if its directory holds
a finished run with the same config, evaluate it again if only the evaluation settings differ, continue it from its
last checkpoint if unfinished, refuse if the training config differs; build the world, the data and a seeded model;
train each declared stage (asserting the frozen/trainable table at its start, checkpointing trainable weights);
evaluate by generation per task; write ``efficiency.json``; record ``finished`` (or ``failed`` with the traceback,
or ``interrupted`` when a signal ended it). RELIABILITY.md lists what holds at every kill point.
"""

from __future__ import annotations

import dataclasses
import logging
import os
import time
import traceback
from collections.abc import Mapping
from contextlib import nullcontext
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import lightning as L
import torch
from lightning.fabric.utilities.rank_zero import _get_rank
from lightning.pytorch.callbacks import LearningRateMonitor
from omegaconf import DictConfig

from encoders.registry import ConfigError
from experiments.harness import build as _build
from experiments.harness import feature_cache, signals
from experiments.harness.build import build_data, build_model, build_world, component_specs, import_plugins
from experiments.harness.callbacks import (
    AtomicCheckpoint,
    JsonlLogger,
    PredictionCollector,
    Throughput,
    save_checkpoint_atomic,
)
from experiments.harness.threads import ThreadFollower, follow_load, thread_record
from experiments.harness.config import (
    EVAL_KEYS,
    RunConfig,
    config_dict,
    config_diff,
    config_hash,
    eval_hash,
    semantic_config,
    validate_config,
)
from experiments.harness.data import TaskData
from experiments.harness.datamodule import BridgeDataModule
from experiments.harness.efficiency import flops_per_sample, summarise
from experiments.harness.evaluation import prediction_records, score
from experiments.harness.faults import fault_point
from experiments.harness.gate_log import GateLog
from experiments.harness.module import CKPT_KEY, BridgeLitModule, read_checkpoint
from experiments.harness.objectives import lit_module_class
from experiments.harness.recovery import RECOVERY_POLICIES, final_usable, resume_point
from experiments.harness.rundir import (
    STATUS_FAILED,
    STATUS_FINISHED,
    STATUS_INTERRUPTED,
    STATUS_RUNNING,
    RunDir,
    RunRefused,
    git_info,
    now_iso,
    package_versions,
)
from experiments.harness.runlock import RunLock
from experiments.harness.signals import RunInterrupted
from experiments.harness.stages import apply_stage, count_params
from experiments.harness.trainer import BatchPlan, batch_plan, build_loggers, build_trainer, world_size_of

log = logging.getLogger(__name__)


@dataclass
class RunResult:
    """What :func:`run` returns: where the run is, how it ended, its final metrics."""

    run_dir: Path
    status: str
    metrics: dict[str, Any] = field(default_factory=dict)
    skipped: bool = False
    error: str | None = None


def is_global_zero() -> bool:
    rank = _get_rank()
    return rank is None or rank == 0


def _check_existing(rd: RunDir, run: RunConfig, digest: str) -> dict[str, Any] | None:
    """The previous record of ``rd`` when it may be resumed or skipped; raise when it belongs to another config."""
    if not rd.exists():
        return None
    previous = rd.read()
    if not run.resume:
        raise RunRefused(
            f"{rd.path} already holds a run (status {previous.get('status')}) and resume=false. "
            "Pick another run_dir, delete it, or set resume=true."
        )
    if previous.get("config_hash") != digest and config_hash(previous.get("config") or {}) != digest:
        diff = [k for k in config_diff(semantic_config(previous.get("config", {})), semantic_config(run))
                if k.split(".")[0] not in EVAL_KEYS]
        raise RunRefused(
            f"{rd.path} holds a run with a different config (differs at: {', '.join(diff[:8]) or '?'}). "
            "Pick another run_dir (run_dir=PATH) or delete the old one."
        )
    return previous


def run(cfg: RunConfig | DictConfig | Mapping[str, Any], run_dir: str | os.PathLike[str] | None = None) -> RunResult:
    """Run (or resume, re-evaluate, or skip) one experiment; see the module docstring. Raises what the run raised.

    The run directory is locked for the whole call (:class:`~experiments.harness.runlock.RunLock`); SIGTERM and
    SIGINT end it as ``interrupted`` (:class:`~experiments.harness.signals.RunInterrupted`).
    """
    config = validate_config(cfg)
    if config.resume_from_corrupt not in RECOVERY_POLICIES:
        raise ConfigError(
            f"resume_from_corrupt={config.resume_from_corrupt!r} is not one of {', '.join(RECOVERY_POLICIES)}: "
            "fail (stop, naming the damaged file), previous (resume from prev.ckpt), restart_stage."
        )
    rd = RunDir(run_dir if run_dir is not None else config.run_dir)
    import_plugins(config.plugins)
    zero = is_global_zero()
    with signals.interrupt_on_signals(), RunLock(rd.path) if zero else nullcontext():
        return _run_locked(config, rd, zero)


def _run_locked(config: RunConfig, rd: RunDir, zero: bool) -> RunResult:
    digest, eval_digest = config_hash(config), eval_hash(config)
    previous = _check_existing(rd, config, digest)
    reevaluate = False
    if previous is not None and previous.get("status") == STATUS_FINISHED:
        done_eval = previous.get("eval_hash") or eval_hash(previous.get("config") or {})
        if done_eval == eval_digest or not config.eval.enabled:
            log.info("Skipping %s: finished already", rd.path)
            return RunResult(rd.path, STATUS_FINISHED, previous.get("metrics", {}), skipped=True)
        log.info("%s: trained already; evaluating again with the new evaluation settings", rd.path)
        reevaluate = True
    started, started_clock = time.time(), time.monotonic()
    follow_load()  # the process-wide thread governor exists before the run's first record
    if zero:
        rd.update(
            name=config.name,
            status=STATUS_RUNNING,
            error=None,
            traceback=None,
            config=config_dict(config),
            config_hash=digest,
            eval_hash=eval_digest,
            seed=config.seed,
            tags=dict(config.tags),
            git=git_info(),
            versions=package_versions(),
            threads=thread_record(started_clock),
            host=os.uname().nodename,
            pid=os.getpid(),
            started=now_iso(),
            attempts=int((previous or {}).get("attempts", 0)) + 1,
        )
    try:
        metrics = _execute(config, rd, reevaluate=reevaluate)
    except BaseException as err:
        if zero:
            interrupted = isinstance(err, RunInterrupted)
            rd.update(
                status=STATUS_INTERRUPTED if interrupted else STATUS_FAILED,
                error=f"{type(err).__name__}: {err}",
                traceback=None if interrupted else traceback.format_exc(),
                duration_s=time.time() - started,
            )
            if interrupted:
                log.error("%s: %s; rerun the same command to resume it", rd.path, err)
                if signals.EXIT_ON_INTERRUPT:  # a sweep worker: the sweep is stopping, end this process
                    os._exit(err.exit_code)
        raise
    if zero:
        rd.update(status=STATUS_FINISHED, metrics=metrics, finished=now_iso(), duration_s=time.time() - started,
                  threads=thread_record(started_clock))
    return RunResult(rd.path, STATUS_FINISHED, metrics)


def _load_weights(module: BridgeLitModule, path: Path) -> None:
    checkpoint = read_checkpoint(path)
    module.on_load_checkpoint(checkpoint)
    module.load_state_dict(checkpoint["state_dict"], strict=False)
    module.apply_pending_rng()  # the next stage starts from the RNG state this stage ended with


def _execute(run: RunConfig, rd: RunDir, reevaluate: bool = False) -> dict[str, Any]:
    if run.trainer.accelerator == "cpu":
        # Once a bridge fits well its gradients shrink into denormal floats, which x86 CPUs process 10-100x slower
        # (measured here: 50 ms -> 2 s per step late in a quick_ablation run). Flushing them to zero costs nothing.
        torch.set_flush_denormal(True)
    L.seed_everything(run.seed, workers=True, verbose=False)
    world = build_world(run)
    data = build_data(run, world)
    L.seed_everything(run.seed, workers=True, verbose=False)  # model init independent of data memoisation
    model = build_model(run, world)
    train_collate, eval_collate = _build.collators(model)
    cache_identity = (_build.spec_key(component_specs(run, world)[0]),)
    resolved = config_dict(run)
    zero = is_global_zero()
    if zero:
        rd.update(
            tasks={t: data.info.get(t, {}) for t in data.eval},
            world=getattr(world, "quality", None),
        )

    names = list(run.stages)
    earlier = {r["name"]: r for r in (rd.read().get("stages") or [])} if rd.exists() else {}
    saved: list[str] = []
    offset = 0
    stage_records: list[dict[str, Any]] = []
    stage_params: dict[str, dict[str, int]] = {}
    stage_perf: dict[str, dict[str, Any]] = {}
    plans: dict[str, dict[str, int]] = {}
    ever_trainable: set[int] = set()
    module: BridgeLitModule | None = None
    encoder_params = {id(p) for p in model.encoders.parameters()} if hasattr(model, "encoders") else set()
    check_bridge_options(model.bridge, run)
    for i, (name, stage) in enumerate(run.stages.items()):
        model.bridge.configure_stage(**stage.bridge_options)
        plan = apply_stage(model, name, stage)
        saved += [g for g in ("bridge", *plan.trainable_groups) if g not in saved]
        bplan = batch_plan(run, stage)
        plans[name] = bplan.as_dict()
        stage_params[name] = count_params(model)
        # the cache keys features by the encoders' config, so it holds the pretrained encoders' features: once a
        # stage has trained an encoder, later frozen stages must encode afresh
        identity = None if encoder_params & ever_trainable else cache_identity
        ever_trainable |= {id(p) for p in model.parameters() if p.requires_grad}
        module = lit_module_class(stage)(model, name, stage, plan, saved, resolved, run.eval.max_new_tokens)
        final = rd.final_checkpoint(name)
        record = {
            "name": name,
            "max_steps": stage.max_steps,
            "trainable_groups": list(plan.trainable_groups),
            "params": stage_params[name],
            "table": plan.as_records(),
            "batch": plans[name],
            "checkpoint": str(final.relative_to(rd.path)),
        }
        if final.exists() and final_usable(run, final, name):
            log.info("Stage '%s' finished earlier: loading %s", name, final)
            _load_weights(module, final)
            stage_perf[name] = dict(earlier.get(name, {}).get("perf", {}))
        else:
            ckpt, resume_step = resume_point(run, rd, name)
            if ckpt:
                log.info("Stage '%s': resuming from %s (step %d)", name, ckpt, resume_step)
            stage_perf[name] = _fit_stage(run, rd, module, data, stage, bplan, name, names[i + 1 :], offset,
                                          ckpt, resume_step, train_collate, eval_collate, identity)
        record["perf"] = stage_perf[name]
        stage_records.append(record)
        if zero:
            rd.update(stages=stage_records)
        offset += stage.max_steps

    assert module is not None
    metrics: dict[str, Any] = {}
    train_loss = [r["train/loss"] for r in rd.read_metrics() if "train/loss" in r]
    if train_loss:
        metrics["train/loss"] = train_loss[-1]
    flops = None
    if zero and run.efficiency.enabled and run.efficiency.flops and run.trainer.strategy != "fsdp":
        tasks = data.select_train(None, "data")
        flops = flops_per_sample(model, tasks, train_collate, next(model.parameters()).device)
    fault_point("eval.start")
    if run.eval.enabled:
        if zero:
            rd.clear_eval()  # results of other evaluation settings (a re-evaluation) must not mix with these
        metrics.update(_evaluate(run, rd, module, data, eval_collate))
    if zero and run.efficiency.enabled:
        rd.write_efficiency(
            summarise(model, stage_params, stage_perf, flops, plans, sum(p.numel() for p in model.parameters()
                                                                       if id(p) in ever_trainable))
        )
    return metrics


def check_bridge_options(bridge: Any, run: RunConfig) -> None:
    """Every stage's ``bridge_options`` are settings the bridge takes, checked before the first stage trains."""
    for name, stage in run.stages.items():
        unknown = sorted(set(stage.bridge_options) - set(bridge.stage_options))
        if unknown:
            takes = ", ".join(bridge.stage_options) or "none"
            raise ConfigError(
                f"stages.{name}.bridge_options has {unknown}, which bridge '{bridge.registry_name}' does not take "
                f"(its stage options: {takes})."
            )


def _fit_stage(
    run: RunConfig,
    rd: RunDir,
    module: BridgeLitModule,
    data: TaskData,
    stage: Any,
    bplan: BatchPlan,
    name: str,
    later: list[str],
    offset: int,
    ckpt: Path | None,
    resume_step: int,
    train_collate: Any,
    eval_collate: Any,
    cache_identity: tuple[Any, ...] | None = (),
) -> dict[str, Any]:
    jsonl = JsonlLogger(rd, name, offset, resume_step, tuple(later))
    datamodule = BridgeDataModule(
        data.select_train(stage.tasks, f"stages.{name}.tasks"),
        {},
        train_collate,
        eval_collate,
        micro_batch_size=bplan.micro,
        accumulation=bplan.accumulation,
        seed=run.seed,
        num_workers=run.train.num_workers,
        task_weights=data.weights,
    )
    throughput = Throughput(bplan.micro, bplan.world_size, run.efficiency.skip_steps)
    callbacks = [AtomicCheckpoint(rd.last_checkpoint(name), run.train.checkpoint_every_n_steps, jsonl), throughput]
    callbacks.append(GateLog())  # gate/<attn|ff>/layer<i> = |tanh(alpha)| per gated layer, for bridges with gates
    callbacks.append(ThreadFollower())  # torch's threads follow the machine's load (BRIDGELAB_THREADS)
    loggers = [jsonl, *build_loggers(run.trainer.loggers, rd.path, name)]
    if len(loggers) > 1 or run.trainer.loggers:
        callbacks.append(LearningRateMonitor(logging_interval="step"))
    trainer = build_trainer(
        run, max_steps=stage.max_steps, plan=bplan, grad_clip=stage.grad_clip, callbacks=callbacks,
        loggers=loggers, model=module.model,
    )
    use_cache = cache_identity is not None and run.train.cache_features and bplan.world_size == 1
    with feature_cache.cached_encoders(module.model, cache_identity) if use_cache else nullcontext(False) as cached:
        trainer.fit(module, datamodule=datamodule, ckpt_path=str(ckpt) if ckpt else None, weights_only=False)
    jsonl.flush()  # every record of the stage is on disk before final.ckpt says the stage is done
    save_checkpoint_atomic(trainer, rd.final_checkpoint(name))
    fault_point("stage.final")
    if trainer.is_global_zero:
        rd.last_checkpoint(name).unlink(missing_ok=True)
        rd.previous_checkpoint(name).unlink(missing_ok=True)
    perf: dict[str, Any] = dict(throughput.result)
    for key, value in trainer.callback_metrics.items():  # what comes back from spawned processes
        if key.startswith("perf/"):
            perf.setdefault(key[len("perf/") :], float(value))
    perf["feature_cache"] = bool(cached)
    return perf


def _evaluate(
    run: RunConfig, rd: RunDir, module: BridgeLitModule, data: TaskData, eval_collate: Any
) -> dict[str, Any]:
    if run.eval.mode != "generate":  # candidate ranking (experiments.evaluation.scoring), in-process on rank 0
        if run.trainer.strategy.startswith("fsdp"):
            raise ConfigError("eval.mode=loglikelihood runs on one process; score an FSDP run with bridgelab eval.")
        from experiments.evaluation.scoring import evaluate_in_run

        return evaluate_in_run(run, rd, module.model, data, eval_collate) if is_global_zero() else {}
    tasks = data.select_eval(run.eval.tasks, "eval.tasks")
    datamodule = BridgeDataModule(
        {}, tasks, eval_collate, eval_collate, micro_batch_size=1, seed=run.seed,
        eval_batch_size=run.eval.batch_size, num_workers=run.train.num_workers, eval_limit=run.eval.limit,
    )
    # Every DDP rank holds the whole model, so rank 0 alone evaluates (no process spawning per task); only sharded
    # models (FSDP) generate with all ranks.
    sharded = run.trainer.strategy.startswith("fsdp")
    world = world_size_of(run.trainer) if sharded else 1
    if not sharded and not is_global_zero():
        return {}
    eval_run = run if sharded else dataclasses.replace(
        run, trainer=dataclasses.replace(run.trainer, devices=1, num_nodes=1, strategy="auto")
    )
    metrics: dict[str, Any] = {}
    for task, dataset in datamodule.eval_sets.items():
        collector = PredictionCollector(rd.eval_dir(task))
        trainer = build_trainer(
            eval_run, max_steps=0, plan=BatchPlan(1, 1, 1, world), callbacks=[collector, ThreadFollower()],
            model=module.model
        )
        trainer.predict(module, dataloaders=datamodule.eval_dataloader(task), return_predictions=False)
        if not is_global_zero():
            continue
        records = prediction_records(dataset.samples, collector.gather(world), task)
        scores = score(records, task)
        scores.update({k: v for k, v in data.info.get(task, {}).items() if k not in scores and v is not None})
        rd.write_predictions(task, records)
        rd.write_scores(task, scores)
        metrics[f"eval/{task}/exact_match"] = scores["exact_match"]
        log.info("%s: %s exact match %.3f (n=%d)", rd.path.name, task, scores["exact_match"], scores["n"])
    if metrics:
        values = [v for k, v in metrics.items() if k.endswith("/exact_match")]
        metrics["eval/mean_exact_match"] = sum(values) / len(values)
    return metrics


def checkpoint_config(path: str | os.PathLike[str]) -> dict[str, Any]:
    """The resolved run config stored in a checkpoint."""
    return read_checkpoint(path)[CKPT_KEY]["config"]
