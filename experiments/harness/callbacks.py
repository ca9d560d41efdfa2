"""Callbacks and the logger that write the run directory: metrics.jsonl, atomic checkpoints, throughput, predictions."""

from __future__ import annotations

import os
import resource
import time
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import lightning as L
import torch
from lightning.pytorch.callbacks import BasePredictionWriter, Callback
from lightning.pytorch.loggers import Logger
from lightning.pytorch.utilities import rank_zero_only

from experiments.harness.faults import fault_point
from experiments.harness.rundir import PREVIOUS_CHECKPOINT, RunDir, disk_error, read_jsonl, write_jsonl_atomic


class JsonlLogger(Logger):
    """Appends ``{"stage", "step", "global_step", "time", <metrics>}`` records to ``metrics.jsonl``.

    The file is rewritten atomically (at most once a second, and at every checkpoint and at the end). Records that
    a resumed stage will produce again (steps after the checkpoint it resumes from, and any later stage) are
    dropped when the logger is created (a record of step s comes from the batch that optimiser step s consumes).
    """

    def __init__(self, run_dir: RunDir, stage: str, step_offset: int = 0, resume_step: int = 0,
                 later_stages: tuple[str, ...] = ()) -> None:
        super().__init__()
        self.run_dir = run_dir
        self.stage = stage
        self.step_offset = step_offset
        previous = read_jsonl(run_dir.metrics_file)
        self._records = [
            r
            for r in previous
            if r.get("stage") not in later_stages and not (r.get("stage") == stage and r.get("step", 0) >= resume_step)
        ]
        # Only a process that dropped or logged records writes the file: the parent of a ddp_spawn run must not
        # overwrite what its rank-0 child wrote.
        self._dirty = len(self._records) != len(previous)
        self._last_flush = 0.0
        self.flush()

    @property
    def name(self) -> str:
        return "jsonl"

    @property
    def version(self) -> str:
        return self.stage

    @rank_zero_only
    def log_hyperparams(self, params: Any, *args: Any, **kwargs: Any) -> None:
        pass

    @rank_zero_only
    def log_metrics(self, metrics: Mapping[str, float], step: int | None = None) -> None:
        step = int(step or 0)
        values = {k: float(v) for k, v in metrics.items()}
        last = self._records[-1] if self._records else {}
        if last.get("stage") == self.stage and last.get("step") == step:  # e.g. the LR monitor, then the loss
            last.update(values)
        else:
            record = {"stage": self.stage, "step": step, "global_step": self.step_offset + step, "time": time.time()}
            self._records.append({**record, **values})
        self._dirty = True
        if time.monotonic() - self._last_flush > 1.0:
            self.flush()

    @rank_zero_only
    def flush(self) -> None:
        if self._dirty:
            write_jsonl_atomic(self.run_dir.metrics_file, self._records)
            self._dirty = False
            self._last_flush = time.monotonic()

    @rank_zero_only
    def save(self) -> None:
        self.flush()

    @rank_zero_only
    def finalize(self, status: str) -> None:
        self.flush()


def save_checkpoint_atomic(trainer: L.Trainer, path: Path) -> None:
    """``trainer.save_checkpoint`` to a temporary name, then ``os.replace`` (rank 0), then a barrier.

    Raises:
        OSError: the write failed (a full disk, no permission), with the checkpoint's path in the message.
    """
    tmp = path.with_name(f".{path.name}.tmp")
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        trainer.save_checkpoint(str(tmp), weights_only=False)
        if trainer.is_global_zero:
            os.replace(tmp, path)
    except OSError as err:
        if trainer.is_global_zero and tmp.exists():
            tmp.unlink()
        raise disk_error(err, path, "write the checkpoint") from err
    trainer.strategy.barrier("bridgelab_checkpoint")


class AtomicCheckpoint(Callback):
    """Saves ``last.ckpt`` every ``every_n_steps`` optimiser steps (0: never mid-stage), in step with the metrics.

    Lightning logs the scalars of an optimiser step after ``on_train_batch_end``, where the checkpoint of that step
    is taken. So the checkpoint is written under a pending name there and becomes ``last.ckpt`` only at the next
    batch start, after the metrics file was flushed with that step's records. Whenever ``last.ckpt`` holds step s,
    ``metrics.jsonl`` therefore holds every record of the steps before s (a resume from s drops the later ones and
    logs them again), at every point a process can be killed.
    """

    def __init__(self, path: Path, every_n_steps: int, metrics: JsonlLogger | None = None) -> None:
        self.path = Path(path)
        self.pending = self.path.with_name(f".{self.path.name}.pending")
        self.previous = self.path.with_name(PREVIOUS_CHECKPOINT)
        self.every_n_steps = every_n_steps
        self.metrics = metrics
        self._saved_at = -1
        self._pending_step: int | None = None
        for leftover in (self.pending, self.pending.with_name(f".{self.pending.name}.tmp")):
            if leftover.exists():  # written by a process killed before it could commit: never a resume point
                leftover.unlink()

    def on_train_start(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        self._saved_at = trainer.global_step  # a resumed stage starts at its checkpoint: do not write it again

    def on_train_batch_end(self, trainer: L.Trainer, pl_module: L.LightningModule, *args: Any) -> None:
        step = trainer.global_step
        if step == self._saved_at:
            return
        fault_point("train.step", step)
        if self.every_n_steps <= 0 or step == 0 or step % self.every_n_steps:
            return
        if step >= (trainer.max_steps if trainer.max_steps > 0 else step + 1):
            return  # the runner saves the stage's final checkpoint
        fault_point("checkpoint.saving", step)
        save_checkpoint_atomic(trainer, self.pending)
        self._saved_at = step
        self._pending_step = step
        fault_point("checkpoint.written", step)

    def on_train_batch_start(self, trainer: L.Trainer, pl_module: L.LightningModule, *args: Any) -> None:
        self.commit(trainer)

    def on_train_end(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        self.commit(trainer)

    def commit(self, trainer: L.Trainer) -> None:
        """Flush the metrics, then make the pending checkpoint ``last.ckpt`` (rank 0)."""
        if self._pending_step is None:
            return
        step, self._pending_step = self._pending_step, None
        if self.metrics is not None:
            self.metrics.flush()
        if trainer.is_global_zero:
            try:  # the step before stays as prev.ckpt (resume_from_corrupt=previous); a kill between the renames
                if self.path.exists():  # leaves prev.ckpt alone, which the runner resumes from
                    os.replace(self.path, self.previous)
                os.replace(self.pending, self.path)
            except OSError as err:
                raise disk_error(err, self.path, "commit the checkpoint") from err
        fault_point("checkpoint.committed", step)


def peak_memory_mb() -> dict[str, float]:
    """Peak accelerator memory (CUDA, allocated by tensors) and peak resident memory of this process."""
    out = {"peak_rss_mb": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024.0}
    if torch.cuda.is_available() and torch.cuda.is_initialized():
        out["peak_gpu_mem_mb"] = torch.cuda.max_memory_allocated() / 2**20
    return out


class Throughput(Callback):
    """Training samples/s over all ranks, skipping the first ``skip_steps`` optimiser steps; peak memory.

    Results land in ``trainer.callback_metrics`` under ``perf/*`` (they survive ``ddp_spawn``) and in
    :attr:`result`.
    """

    def __init__(self, samples_per_micro_batch: int, world_size: int, skip_steps: int = 3) -> None:
        self.samples = samples_per_micro_batch * world_size
        self.skip_steps = skip_steps
        self.result: dict[str, float] = {}
        self._t0: float | None = None
        self._count = 0
        self._start = 0.0
        self._skip_at = 0

    def on_train_start(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        self._start = time.perf_counter()
        self._t0 = None
        self._count = 0
        self._skip_at = trainer.global_step + self.skip_steps
        if torch.cuda.is_available() and torch.cuda.is_initialized():
            torch.cuda.reset_peak_memory_stats()

    def on_train_batch_end(self, trainer: L.Trainer, pl_module: L.LightningModule, *args: Any) -> None:
        if self._t0 is None:
            if trainer.global_step >= self._skip_at:
                self._t0 = time.perf_counter()
            return
        self._count += 1
        elapsed = time.perf_counter() - self._t0
        if elapsed > 0:
            self.result["samples_per_s"] = self._count * self.samples / elapsed
        # callback_metrics come back from ddp_spawn children; logging them once, at the last step, is enough (a
        # ``self.log`` costs ~1 ms on CPU: every step it was 1.5% of a demo step, benchmarks/overhead.py).
        last = trainer.should_stop or 0 < trainer.max_steps <= trainer.global_step
        if last and "samples_per_s" in self.result:
            self.result.update(peak_memory_mb())
            for key, value in self.result.items():
                pl_module.log(f"perf/{key}", value, logger=False, rank_zero_only=True)

    def on_train_end(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        self.result["train_time_s"] = time.perf_counter() - self._start
        self.result.update(peak_memory_mb())


class PredictionCollector(BasePredictionWriter):
    """Keeps each rank's predictions; with several ranks also writes them to part files for rank 0 to merge."""

    def __init__(self, part_dir: Path) -> None:
        super().__init__(write_interval="batch")
        self.part_dir = Path(part_dir)
        self.records: list[dict[str, Any]] = []

    def on_predict_start(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        self.records = []

    def write_on_batch_end(self, trainer: L.Trainer, pl_module: L.LightningModule, prediction: Any, *args: Any) -> None:
        self.records.extend(prediction)

    def on_predict_epoch_end(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        if trainer.world_size > 1:
            write_jsonl_atomic(self.part_dir / f".predictions.rank{trainer.global_rank}.jsonl", self.records)
            trainer.strategy.barrier("bridgelab_predictions")

    def gather(self, world_size: int) -> list[dict[str, Any]]:
        """All ranks' records, de-duplicated by sample index and sorted (part files removed)."""
        records = list(self.records)
        if world_size > 1:
            records = []
            for part in sorted(self.part_dir.glob(".predictions.rank*.jsonl")):
                records += read_jsonl(part)
                part.unlink()
        unique = {int(r["index"]): r for r in records}
        return [unique[i] for i in sorted(unique)]
