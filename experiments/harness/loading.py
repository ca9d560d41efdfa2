"""Rebuild a trained model from its run directory alone (for notebooks and re-evaluation).

``load_run(run_dir)`` reads the resolved config from ``run.json``, rebuilds the world's frozen backbones and a
seeded model exactly as the run did (LoRA adapters included when the LM config has them), and loads the trainable
weights of the latest checkpoint (the last finished stage's ``final.ckpt``, else an unfinished stage's
``last.ckpt``).
"""

from __future__ import annotations

import os
import warnings
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import lightning as L
import torch
from torch import nn

from experiments.harness import build as _build
from experiments.harness.build import build_model, build_world, import_plugins
from experiments.harness.config import RunConfig, validate_config
from experiments.harness.module import CKPT_KEY, read_checkpoint
from experiments.harness.rundir import STATUS_FINISHED, RunDir


@dataclass
class LoadedRun:
    """A rebuilt model with its config and run record.

    Attributes:
        model: the ``MultimodalLM`` in eval mode, trained weights loaded.
        config: the run's resolved :class:`~experiments.harness.config.RunConfig`.
        record: the contents of ``run.json``.
        checkpoint: the checkpoint the weights came from (``None``: none was written, initial weights).
        collate: the generation collator (samples -> batch).
    """

    model: nn.Module
    config: RunConfig
    record: dict[str, Any]
    checkpoint: Path | None
    collate: Any
    train_collate: Any

    @torch.no_grad()
    def answer(self, samples: Sequence[Mapping[str, Any]], max_new_tokens: int | None = None) -> list[str]:
        """Greedy answers for samples (``{"text", "images", ...}``)."""
        from experiments.harness.module import generate_answers

        device = next(self.model.parameters()).device
        batch = self.collate(list(samples)).to(device)
        return generate_answers(self.model, batch, max_new_tokens or self.config.eval.max_new_tokens)


def latest_checkpoint(rd: RunDir, stages: Sequence[str]) -> tuple[str | None, Path | None]:
    """The stage and path of the newest checkpoint: a later stage's ``last.ckpt`` beats an earlier ``final.ckpt``."""
    found: tuple[str | None, Path | None] = (None, None)
    for name in stages:
        if rd.final_checkpoint(name).exists():
            found = (name, rd.final_checkpoint(name))
        elif rd.last_checkpoint(name).exists():
            return name, rd.last_checkpoint(name)
        else:
            break
    return found


def load_run(
    run_dir: str | os.PathLike[str], device: str | torch.device = "cpu", allow_unfinished: bool = False
) -> LoadedRun:
    """Rebuild the model of the run in ``run_dir`` for inference (see the module docstring).

    A run that did not finish (failed, interrupted, running) is refused: its weights are an unfinished stage's
    or untrained. ``allow_unfinished=True`` loads it anyway, with a warning.
    """
    rd = RunDir(run_dir)
    record = rd.read()
    if record.get("status") != STATUS_FINISHED:
        error = f": {record['error']}" if record.get("error") else ""
        message = (
            f"{rd.path} holds a run with status '{record.get('status')}'{error}. Its weights are those of its last "
            "checkpoint, or untrained if it wrote none."
        )
        if not allow_unfinished:
            raise RuntimeError(
                f"{message} Fix: rerun it to finish it (bridgelab train with the same overrides and "
                f"run_dir={rd.path}), or load it anyway with load_run(..., allow_unfinished=True)."
            )
        warnings.warn(message, stacklevel=2)
    config = validate_config(record["config"])
    import_plugins(config.plugins)
    world = build_world(config)
    L.seed_everything(config.seed, workers=True, verbose=False)
    model = build_model(config, world)
    stages = list(config.stages)
    _, path = latest_checkpoint(rd, stages)
    if path is not None:
        checkpoint = read_checkpoint(path)
        state = {k[len("model.") :]: v for k, v in checkpoint["state_dict"].items() if k.startswith("model.")}
        _, unexpected = model.load_state_dict(state, strict=False)
        if unexpected:
            raise RuntimeError(
                f"{path} holds tensors this model does not have (e.g. {unexpected[0]}); "
                f"it was written by stage '{checkpoint.get(CKPT_KEY, {}).get('stage')}' of a different model."
            )
    model.to(device).eval()
    train_collate, eval_collate = _build.collators(model)
    return LoadedRun(model, config, record, path, eval_collate, train_collate)
