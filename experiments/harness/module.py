"""The one LightningModule for every bridge: it wraps a ``MultimodalLM`` and trains one stage of it.

The wrapped model does the work (``forward(batch) -> .loss``, ``generate(batch, max_new_tokens)``,
``param_groups()``); this module adds the optimiser (AdamW per parameter group, linear warm-up then cosine),
the frozen/trainable assertion at the stage start, trainable-only checkpoints that carry the resolved config,
and generation for evaluation (``predict_step``).
"""

from __future__ import annotations

import logging
import math
import os
import random
from collections.abc import Iterable, Mapping
from typing import Any

import lightning as L
import numpy as np
import torch
from torch import nn

from experiments.harness.config import StageConfig
from experiments.harness.datamodule import EVAL_INDEX
from experiments.harness.rundir import CorruptRunFile
from experiments.harness.stages import StagePlan, assert_stage, optimizer_groups, trainable_state_keys
from experiments.harness.trainer import progress_refresh_rate

log = logging.getLogger(__name__)

CKPT_KEY = "bridgelab"


def read_checkpoint(path: str | os.PathLike[str]) -> dict[str, Any]:
    """A checkpoint written by this harness; :class:`~experiments.harness.rundir.CorruptRunFile` naming the file when
    it is truncated or is not a checkpoint (``torch.load`` alone names neither)."""
    try:
        checkpoint = torch.load(path, map_location="cpu", weights_only=False)
    except FileNotFoundError:
        raise
    except Exception as err:  # torch raises RuntimeError, EOFError, UnpicklingError, zipfile errors
        raise CorruptRunFile(f"{path} is damaged and cannot be loaded ({type(err).__name__}: {err}).") from err
    if not isinstance(checkpoint, dict) or "state_dict" not in checkpoint:
        raise CorruptRunFile(f"{path} is not a bridgelab checkpoint (no state_dict).")
    return checkpoint


def warmup_cosine(step: int, total: int, warmup: int, min_ratio: float) -> float:
    """LR multiplier at optimiser step ``step``: linear warm-up over ``warmup`` steps, then cosine to ``min_ratio``."""
    if warmup > 0 and step < warmup:
        return (step + 1) / warmup
    progress = min(1.0, (step - warmup) / max(1, total - warmup))
    return min_ratio + (1.0 - min_ratio) * 0.5 * (1.0 + math.cos(math.pi * progress))


def _tokenizer(model: nn.Module) -> Any:
    tokenizer = getattr(model, "tokenizer", None)
    if tokenizer is None and hasattr(model, "lm"):
        tokenizer = getattr(model.lm, "tokenizer", None)
    if tokenizer is None:
        raise AttributeError(f"{type(model).__name__} exposes no tokenizer (model.tokenizer or model.lm.tokenizer)")
    return tokenizer


@torch.no_grad()
def generate_answers(model: nn.Module, batch: Any, max_new_tokens: int) -> list[str]:
    """Greedy answers for a prompt batch: the new tokens up to the first end-of-sequence, decoded and stripped."""
    ids = model.generate(batch, max_new_tokens=max_new_tokens)
    ids = getattr(ids, "sequences", ids)
    prompt = batch.input_ids
    if ids.shape[1] > prompt.shape[1] and torch.equal(ids[:, : prompt.shape[1]], prompt):
        ids = ids[:, prompt.shape[1] :]  # generate returned prompt + answer
    tokenizer = _tokenizer(model)
    stops = {t for t in (tokenizer.eos_token_id, tokenizer.pad_token_id) if t is not None}
    texts = []
    for row in ids.tolist():
        cut = next((i for i, t in enumerate(row) if t in stops), len(row))
        texts.append(tokenizer.decode(row[:cut], skip_special_tokens=True).strip())
    return texts


def _rng_state() -> dict[str, Any]:
    state: dict[str, Any] = {
        "torch": torch.get_rng_state(), "numpy": np.random.get_state(), "python": random.getstate(),
    }
    if torch.cuda.is_available():
        state["cuda"] = torch.cuda.get_rng_state_all()
    return state


def _set_rng_state(state: Mapping[str, Any]) -> None:
    torch.set_rng_state(state["torch"])
    np.random.set_state(state["numpy"])
    random.setstate(state["python"])
    if "cuda" in state and torch.cuda.is_available():
        torch.cuda.set_rng_state_all(state["cuda"])


class BridgeLitModule(L.LightningModule):
    """Trains one stage of a multimodal LM (any bridge) and generates answers for evaluation.

    Args:
        model: the ``MultimodalLM`` (encoders + bridge + LM).
        stage_name / stage: the stage config; ``plan`` is its applied policy
            (:func:`~experiments.harness.stages.apply_stage`).
        saved_groups: parameter groups stored in checkpoints (every group trained so far, and the bridge).
        run_config: the resolved run config, stored in every checkpoint.
        max_new_tokens: generation length for ``predict_step``.
    """

    def __init__(
        self,
        model: nn.Module,
        stage_name: str,
        stage: StageConfig,
        plan: StagePlan,
        saved_groups: Iterable[str],
        run_config: Mapping[str, Any],
        max_new_tokens: int = 4,
    ) -> None:
        super().__init__()
        self.model = model
        self.stage_name = stage_name
        self.stage = stage
        self.plan = plan
        self.saved_groups = tuple(saved_groups)
        self.run_config = dict(run_config)
        self.max_new_tokens = max_new_tokens
        # Checkpoints hold trainable weights only; the frozen rest is rebuilt from the config.
        self.strict_loading = False
        self._pending_rng: Mapping[str, Any] | None = None

    # training ------------------------------------------------------------------------------------------------
    def on_fit_start(self) -> None:
        assert_stage(self.model, self.plan)
        if self.trainer.is_global_zero:
            log.info("\n%s", self.plan.table())

    def training_step(self, batch: Any, batch_idx: int) -> torch.Tensor:
        out = self.model(batch)
        loss = out.loss
        if loss is None or not torch.isfinite(loss):
            raise FloatingPointError(f"Stage '{self.stage_name}': loss is {loss} at step {self.global_step}")
        if self._loss_shown(batch_idx):
            self.log("train/loss", loss, on_step=True, prog_bar=True, batch_size=batch.batch_size)
        return loss

    def _loss_shown(self, batch_idx: int) -> bool:
        """Whether this batch's loss reaches a logger or the progress bar: Lightning writes the loggers every
        ``log_every_n_steps`` optimiser steps and the bar refreshes every ``log_every_n_steps // 2`` batches
        (:func:`~experiments.harness.trainer.progress_refresh_rate`). A ``self.log`` costs ~1 ms on CPU, so logging
        the other steps (whose values nothing reads) was ~0.8% of a demo step (benchmarks/overhead.py)."""
        trainer = self._trainer
        if trainer is None:  # called outside a Trainer
            return True
        every = trainer.log_every_n_steps
        step = self.global_step + 1  # this batch's optimiser step, as Lightning's should_update_logs counts it
        return (step % every == 0 or (batch_idx + 1) % progress_refresh_rate(every) == 0 or trainer.should_stop
                or 0 < trainer.max_steps <= step)

    def configure_optimizers(self) -> Any:
        stage = self.stage
        groups = optimizer_groups(self.model, self.plan, stage.weight_decay)
        optimizer = torch.optim.AdamW(groups, betas=tuple(stage.betas))  # type: ignore[arg-type]
        warmup = stage.warmup_steps if stage.warmup_steps is not None else round(stage.warmup_ratio * stage.max_steps)
        schedule = torch.optim.lr_scheduler.LambdaLR(
            optimizer, lambda step: warmup_cosine(step, stage.max_steps, warmup, stage.min_lr_ratio)
        )
        return {"optimizer": optimizer, "lr_scheduler": {"scheduler": schedule, "interval": "step"}}

    # evaluation ----------------------------------------------------------------------------------------------
    def predict_step(self, batch: Any, batch_idx: int, dataloader_idx: int = 0) -> list[dict[str, Any]]:
        """Greedy answers for a batch of prompts: one record per sample (``index``, ``prediction``)."""
        texts = generate_answers(self.model, batch, self.max_new_tokens)
        meta = batch.meta or [{} for _ in texts]
        return [{"index": m[EVAL_INDEX], "prediction": t} for m, t in zip(meta, texts)]

    # checkpoints ---------------------------------------------------------------------------------------------
    def saved_state_keys(self) -> set[str]:
        keys = {f"model.{k}" for k in trainable_state_keys(self.model, self.saved_groups)}
        bridge = getattr(self.model, "bridge", None)
        if isinstance(bridge, nn.Module):
            keys |= {f"model.bridge.{k}" for k, _ in bridge.named_buffers()}
        return keys

    def on_save_checkpoint(self, checkpoint: dict[str, Any]) -> None:
        keep = self.saved_state_keys()
        checkpoint["state_dict"] = {k: v for k, v in checkpoint["state_dict"].items() if k in keep}
        checkpoint[CKPT_KEY] = {
            "stage": self.stage_name,
            "saved_groups": list(self.saved_groups),
            "config": self.run_config,
            "rng": _rng_state(),
        }

    def on_load_checkpoint(self, checkpoint: dict[str, Any]) -> None:
        extra = checkpoint.get(CKPT_KEY, {})
        missing = self.saved_state_keys() - set(checkpoint["state_dict"])
        if missing:
            raise RuntimeError(
                f"Checkpoint of stage '{extra.get('stage')}' lacks {len(missing)} trainable tensors "
                f"(e.g. {min(missing)}); it was written by a different model config."
            )
        # Applied at the first training batch, not here: creating the DataLoader iterator draws from the global RNG
        # after this hook, so setting it now would shift every later dropout mask against an uninterrupted run.
        self._pending_rng = extra.get("rng")

    def apply_pending_rng(self) -> None:
        """Restore the RNG state of the loaded checkpoint now (if one is pending)."""
        if self._pending_rng is not None:
            _set_rng_state(self._pending_rng)
            self._pending_rng = None

    def on_train_batch_start(self, batch: Any, batch_idx: int) -> None:
        self.apply_pending_rng()
