"""The Lightning ``Trainer`` from config: devices, strategy, precision, loggers, gradient accumulation.

The effective batch size (samples per optimiser step over all devices) is the setting; gradient accumulation
follows from it, the micro-batch size and the world size (devices x nodes), and must divide exactly.
"""

from __future__ import annotations

import logging
import warnings
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import lightning as L
import torch
from lightning.pytorch.callbacks import Callback, TQDMProgressBar
from lightning.pytorch.loggers import Logger

from encoders.registry import ConfigError
from experiments.harness import bar_slot
from experiments.harness.config import RunConfig, StageConfig, TrainerConfig

log = logging.getLogger(__name__)

# Frozen encoders sit in eval mode on purpose; one Trainer per stage and per evaluated task would otherwise repeat
# Lightning's start-up banner (accelerator, tips) many times in a sweep.
warnings.filterwarnings("ignore", message=r".*module\(s\) in eval mode at the start of training.*")
warnings.filterwarnings("ignore", message=r".*isinstance\(treespec, LeafSpec\).*")
for _name in ("lightning.pytorch.utilities.rank_zero", "lightning.fabric.utilities.rank_zero"):
    logging.getLogger(_name).setLevel(logging.WARNING)

LOGGER_NAMES = ("csv", "tensorboard", "wandb", "mlflow")


@dataclass(frozen=True)
class BatchPlan:
    """How the effective batch is split: ``effective == micro x accumulation x world_size``."""

    effective: int
    micro: int
    accumulation: int
    world_size: int

    def as_dict(self) -> dict[str, int]:
        return dict(self.__dict__)


def world_size_of(trainer_cfg: TrainerConfig) -> int:
    """Processes the trainer will run (devices x nodes), resolving ``auto``/-1 as Lightning would."""
    devices = trainer_cfg.devices
    if isinstance(devices, (list, tuple)):
        count = len(devices)
    elif isinstance(devices, str) and devices.isdigit():
        count = int(devices)
    elif isinstance(devices, int) and devices > 0:
        count = devices
    else:  # "auto" or -1: every visible device of the accelerator
        if trainer_cfg.accelerator in ("gpu", "cuda") or (
            trainer_cfg.accelerator == "auto" and torch.cuda.is_available()
        ):
            count = max(1, torch.cuda.device_count())
        else:
            count = 1
    return count * trainer_cfg.num_nodes


def batch_plan(run: RunConfig, stage: StageConfig, world_size: int | None = None) -> BatchPlan:
    """Derive the micro-batch size and the gradient accumulation of ``stage``."""
    world = world_size or world_size_of(run.trainer)
    effective = stage.effective_batch_size or run.train.effective_batch_size
    micro = run.train.micro_batch_size
    if micro is None:
        if effective % world:
            raise ConfigError(
                f"effective batch size {effective} is not divisible by the world size {world}; "
                "change train.effective_batch_size or set train.micro_batch_size."
            )
        micro = effective // world
    if effective % (micro * world):
        raise ConfigError(
            f"effective batch size {effective} is not a multiple of micro_batch_size {micro} x world size {world}; "
            "change train.effective_batch_size or train.micro_batch_size."
        )
    return BatchPlan(effective, micro, effective // (micro * world), world)


def build_loggers(names: Sequence[str], run_dir: Path, stage: str) -> list[Logger]:
    """The optional loggers (the JSONL metrics logger is added by the runner)."""
    out: list[Logger] = []
    for name in names:
        if name == "csv":
            from lightning.pytorch.loggers import CSVLogger

            out.append(CSVLogger(str(run_dir / "logs"), name="csv", version=stage))
        elif name == "tensorboard":
            from lightning.pytorch.loggers import TensorBoardLogger

            out.append(TensorBoardLogger(str(run_dir / "logs"), name="tensorboard", version=stage))
        elif name == "wandb":
            from lightning.pytorch.loggers import WandbLogger

            out.append(WandbLogger(save_dir=str(run_dir / "logs"), name=f"{run_dir.name}-{stage}"))
        elif name == "mlflow":
            from lightning.pytorch.loggers import MLFlowLogger

            out.append(MLFlowLogger(run_name=f"{run_dir.name}-{stage}", save_dir=str(run_dir / "logs" / "mlruns")))
        else:
            raise ConfigError(f"Unknown logger '{name}' in trainer.loggers; known: {', '.join(LOGGER_NAMES)}.")
    return out


def build_strategy(cfg: TrainerConfig, model: Any = None) -> Any:
    """The strategy object: a name Lightning knows, or FSDP with the model's wrap policy."""
    if cfg.strategy != "fsdp":
        return cfg.strategy
    from lightning.pytorch.strategies import FSDPStrategy

    return FSDPStrategy(
        auto_wrap_policy=fsdp_wrap_classes(model) or None, use_orig_params=True, sharding_strategy=cfg.fsdp_sharding
    )


def fsdp_wrap_classes(model: Any) -> set[type]:
    """Module classes that become FSDP units: the model's own ``fsdp_wrap_modules()`` if it has one, else the LM's
    decoder layer class and each encoder's block class (Prismatic's policy: one unit per transformer block)."""
    if model is None:
        return set()
    if hasattr(model, "fsdp_wrap_modules"):
        return set(model.fsdp_wrap_modules())
    classes: set[type] = set()
    lm = getattr(model, "lm", None)
    if lm is not None and hasattr(lm, "decoder_layers"):
        classes |= {type(layer) for layer in lm.decoder_layers()}
    encoders = getattr(model, "encoders", None)
    for name in getattr(encoders, "names", ()):
        classes |= {type(block) for block in encoders[name].blocks()}
    return classes


def progress_refresh_rate(log_every_n_steps: int) -> int:
    """Batches between progress-bar refreshes (the training module logs its loss for those batches)."""
    return max(1, log_every_n_steps // 2)


def build_trainer(
    run: RunConfig,
    *,
    max_steps: int,
    plan: BatchPlan,
    grad_clip: float | None = None,
    callbacks: Sequence[Callback] = (),
    loggers: Sequence[Logger] = (),
    model: Any = None,
    progress_bar: bool | None = None,
) -> L.Trainer:
    """A Trainer for one stage (or, with ``max_steps=0``, for prediction only)."""
    cfg = run.trainer
    show_bar = cfg.progress_bar if progress_bar is None else progress_bar
    all_callbacks = list(callbacks)
    if show_bar:
        refresh = progress_refresh_rate(run.train.log_every_n_steps)
        all_callbacks.append(TQDMProgressBar(refresh_rate=refresh, process_position=bar_slot.position()))
    trainer = L.Trainer(
        accelerator=cfg.accelerator,
        devices=cfg.devices,
        num_nodes=cfg.num_nodes,
        strategy=build_strategy(cfg, model),
        precision=cfg.precision,  # type: ignore[arg-type]
        deterministic=cfg.deterministic,
        max_steps=max_steps if max_steps > 0 else -1,
        max_epochs=-1 if max_steps > 0 else None,
        accumulate_grad_batches=plan.accumulation,
        gradient_clip_val=grad_clip,
        log_every_n_steps=run.train.log_every_n_steps,
        logger=list(loggers) if loggers else False,
        callbacks=all_callbacks,
        enable_progress_bar=show_bar,
        enable_checkpointing=False,
        enable_model_summary=False,
        num_sanity_val_steps=0,
        limit_val_batches=0,
        default_root_dir=None,
    )
    if trainer.world_size != plan.world_size:
        raise ConfigError(
            f"The trainer runs {trainer.world_size} processes but the batch plan assumed {plan.world_size}; "
            "set trainer.devices explicitly."
        )
    return trainer
