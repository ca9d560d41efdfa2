"""The gate figure's data: ``mean |tanh(alpha)|`` of every tanh gate of the bridge, at every logging step.

Flamingo's appendix figure plots ``|tanh(alpha)|`` of the xattn and the dense gate of each of its gated blocks over
training (BRIDGES.md 1.10). :class:`GateLog` records exactly that into the run's ``metrics.jsonl`` (and every other
configured logger), under ``gate/<attn|ff>/layer<i>`` with ``i`` the LM layer the gated block sits before, at the
same steps as ``train/loss`` (``train.log_every_n_steps``). A vector gate (one alpha per channel or head) is logged
as the mean of ``|tanh|`` over its entries.

Which gates exist is the bridge's to say: a bridge with tanh gates exposes ``tanh_gates() -> {key: TanhGate}``
(Flamingo with ``gate=scalar|vector``; Hyper Attention with ``fusion=adaptive_zero``, whose ``attn`` gate scales
its sigmoid gate). Any other bridge, or ``gate=none``, logs nothing. :func:`experiments.analysis.plots.plot_gates`
draws the figure from a run directory.
"""

from __future__ import annotations

from typing import Any

import lightning as L
import torch
from lightning.pytorch.callbacks import Callback
from torch import nn

PREFIX = "gate/"


def tanh_gates(model: nn.Module) -> dict[str, nn.Module]:
    """The bridge's tanh gates by key (empty when the model's bridge has none)."""
    bridge = getattr(model, "bridge", None)
    gates = getattr(bridge, "tanh_gates", None)
    return dict(gates()) if callable(gates) else {}


def gate_openings(model: nn.Module) -> dict[str, torch.Tensor]:
    """``{"gate/<key>": mean |tanh(alpha)|}`` (0-d tensors, detached) for every tanh gate of the model's bridge."""
    with torch.no_grad():
        return {f"{PREFIX}{key}": gate.value().detach().abs().mean() for key, gate in tanh_gates(model).items()}


def _logs_this_step(trainer: L.Trainer) -> bool:
    """Whether Lightning writes this batch's scalars to the loggers (its ``log_every_n_steps`` rule)."""
    connector = getattr(trainer, "_logger_connector", None)
    return bool(getattr(connector, "should_update_logs", True))


class GateLog(Callback):
    """Logs :func:`gate_openings` at every logging step of training; costs nothing for a bridge without gates."""

    def __init__(self) -> None:
        self._has_gates = False

    def on_train_start(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        self._has_gates = bool(tanh_gates(getattr(pl_module, "model", pl_module)))

    def on_train_batch_end(self, trainer: L.Trainer, pl_module: L.LightningModule, *args: Any) -> None:
        if not self._has_gates or not _logs_this_step(trainer):
            return
        for key, value in gate_openings(getattr(pl_module, "model", pl_module)).items():
            pl_module.log(key, value, on_step=True, on_epoch=False, batch_size=1)
