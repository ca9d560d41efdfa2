"""Stage objectives other than the LM loss: BLIP-2's stage-1 representation learning as a stage of a run.

A stage with ``objective: qformer_pretrain`` (``experiments/configs/stages/qformer_stage1.yaml``) trains the
Q-Former with ITC + ITM + ITG (:class:`bridges.qformer_pretrain.QFormerPretrainer`) and no LM, on image-caption
pairs; the next stage (``objective: lm``) then trains the same, updated Q-Former through the frozen LM (BLIP-2 stage
2). Nothing is copied at the handover: both stages train the one model in place, and a resumed run loads the stage-1
weights from that stage's final checkpoint like any other stage's.

The pairs are the stage's own training samples: every media item with its caption (``meta["captions"]``, which the
world's samples carry, one per media item in order), through the same data pipeline, batching and frozen-encoder
feature cache as an LM stage. Captions are written in the LM tokenizer's vocabulary (the world has one vocabulary;
InstructBLIP's instructions use it too), right-padded, its ``<bos>`` serving as BERT's ``[CLS]``; ITG's ``[DEC]`` is
the first id past the tokenizer (``len(tokenizer)``, as LAVIS appends ``[DEC]`` after BERT's 30522), so the
Q-Former's ``vocab_size`` must exceed the tokenizer's size. The stage-1 heads (ITC projections, ITM head, LM head,
temperature) live in the LightningModule, train with the stage's ``lr`` and ``weight_decay``, are kept in that stage's
checkpoints (exact resume) and are dropped afterwards, as BLIP-2 drops them for stage 2.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any

import torch
from torch import nn

from bridges.qformer import QFormerBridge
from bridges.qformer_pretrain import QFormerPretrainConfig, QFormerPretrainer
from encoders.registry import ConfigError, merge_config
from experiments.harness.config import StageConfig
from experiments.harness.gate_log import _logs_this_step
from experiments.harness.module import BridgeLitModule
from experiments.harness.stages import StagePlan

LOSS_KEYS = ("itc", "itm", "itg")


def lit_module_class(stage: StageConfig) -> type[BridgeLitModule]:
    """The LightningModule class that trains ``stage`` (by its ``objective``)."""
    return QFormerPretrainModule if stage.objective == "qformer_pretrain" else BridgeLitModule


def caption_batch(captions: Sequence[str], tokenizer: Any) -> tuple[torch.Tensor, torch.Tensor]:
    """Right-padded caption ids and mask ``(N, L)`` in ``tokenizer``'s vocabulary (its special tokens included)."""
    rows = [list(ids) for ids in tokenizer(list(captions))["input_ids"]]
    pad = tokenizer.pad_token_id if tokenizer.pad_token_id is not None else 0
    width = max(len(r) for r in rows)
    ids = torch.full((len(rows), width), pad, dtype=torch.long)
    mask = torch.zeros((len(rows), width), dtype=torch.long)
    for i, row in enumerate(rows):
        ids[i, : len(row)] = torch.tensor(row)
        mask[i, : len(row)] = 1
    return ids, mask


def media_captions(batch: Any, where: str) -> list[str]:
    """One caption per media item of ``batch``, in media order, from each sample's ``meta["captions"]``."""
    metas = batch.meta or []
    captions: list[str] = []
    for i, meta in enumerate(metas):
        got = meta.get("captions")
        if got is None:
            raise ValueError(
                f"'{where}' (qformer_pretrain) pairs every image with its caption, but sample {i} of the batch has no "
                "meta['captions'] (the world's samples carry them). Fix: train this stage on a source whose samples "
                "give one caption per image, or set the stage's objective to lm."
            )
        captions += list(got)
    if len(captions) != batch.num_media:
        raise ValueError(
            f"'{where}': the batch holds {batch.num_media} media items but its samples give {len(captions)} captions; "
            "meta['captions'] must list one caption per media item, in order."
        )
    return captions


class QFormerPretrainModule(BridgeLitModule):
    """Trains a stage with BLIP-2's stage-1 losses; the arguments are :class:`BridgeLitModule`'s.

    Logs ``train/loss`` (ITC + ITM + ITG) and ``train/itc``, ``train/itm``, ``train/itg``.
    """

    def __init__(self, model: nn.Module, stage_name: str, stage: StageConfig, plan: StagePlan, *args: Any,
                 **kwargs: Any) -> None:
        super().__init__(model, stage_name, stage, plan, *args, **kwargs)
        where = f"stages.{stage_name}"
        bridge = getattr(model, "bridge", None)
        if not isinstance(bridge, QFormerBridge):
            raise ConfigError(f"'{where}.objective' = 'qformer_pretrain' needs bridge=qformer, got "
                              f"{type(bridge).__name__}. Fix: bridge=qformer, or {where}.objective=lm.")
        if not bridge.has_text:
            raise ConfigError(f"'{where}.objective' = 'qformer_pretrain' needs the Q-Former's text layers. "
                              "Fix: bridge.text_layers=true.")
        self.caption_tokenizer = getattr(bridge, "instruction_tokenizer", None) or model.lm.tokenizer
        size, vocab = len(self.caption_tokenizer), bridge.config.vocab_size
        options: Mapping[str, Any] = {"bos_token_id": size, **dict(stage.objective_options)}
        config = merge_config(QFormerPretrainConfig, dict(options), path=f"{where}.objective_options")
        if size > vocab or not 0 <= config.bos_token_id < vocab:
            raise ConfigError(
                f"'bridge.vocab_size' = {vocab} is too small for '{where}' (qformer_pretrain): captions use the LM "
                f"tokenizer's {size} ids and ITG's [DEC] is id {config.bos_token_id}. Fix: bridge.vocab_size="
                f"{max(size, config.bos_token_id) + 1} or more (or {where}.objective_options.bos_token_id=<an id>)."
            )
        self.max_caption_len = bridge.config.max_position_embeddings
        self.objective = QFormerPretrainer(bridge, config)

    def head_parameters(self) -> dict[str, nn.Parameter]:
        """The stage-1 heads' parameters by name in :attr:`objective` (the Q-Former itself is ``model.bridge``)."""
        return {n: p for n, p in self.objective.named_parameters() if not n.startswith("bridge.")}

    def objective_losses(self, batch: Any) -> dict[str, torch.Tensor]:
        """``{"loss", "itc", "itm", "itg"}`` of one collated batch (one image-caption pair per media item)."""
        where = f"stages.{self.stage_name}"
        if batch.num_frames != 1:
            raise ValueError(f"'{where}' (qformer_pretrain) trains on still images, but the batch has "
                             f"{batch.num_frames} frames per media item. Fix: set {where}.tasks to image tasks.")
        ids, mask = caption_batch(media_captions(batch, where), self.caption_tokenizer)
        if ids.shape[1] > self.max_caption_len:
            raise ValueError(f"A caption of {ids.shape[1]} tokens exceeds bridge.max_position_embeddings="
                             f"{self.max_caption_len}. Fix: raise bridge.max_position_embeddings.")
        device = self.objective.temp.device
        return self.objective.feature_losses(self.model.encode_media(batch), ids.to(device), mask.to(device))

    def training_step(self, batch: Any, batch_idx: int) -> torch.Tensor:
        losses = self.objective_losses(batch)
        loss = losses["loss"]
        if not torch.isfinite(loss):
            raise FloatingPointError(f"Stage '{self.stage_name}': loss is {loss} at step {self.global_step}")
        self.log("train/loss", loss, on_step=True, prog_bar=True, batch_size=batch.batch_size)
        if self._trainer is None or _logs_this_step(self.trainer):
            for key in LOSS_KEYS:
                self.log(f"train/{key}", losses[key].detach(), on_step=True, batch_size=batch.batch_size)
        return loss

    def configure_optimizers(self) -> Any:
        """The harness's optimiser and schedule with the heads as one more parameter group (same rule)."""
        config = super().configure_optimizers()
        optimizer = config["optimizer"]
        heads = list(self.head_parameters().values())
        decay = [p for p in heads if p.ndim >= 2]
        no_decay = [p for p in heads if p.ndim < 2]
        for params, wd, name in ((decay, self.stage.weight_decay, "objective"), (no_decay, 0.0, "objective.no_decay")):
            if params:
                optimizer.add_param_group({"params": params, "lr": self.stage.lr, "weight_decay": wd, "name": name})
        # a fresh schedule over every group (the existing groups keep their initial_lr), the same multiplier
        old = config["lr_scheduler"]["scheduler"]
        config["lr_scheduler"]["scheduler"] = torch.optim.lr_scheduler.LambdaLR(optimizer, old.lr_lambdas[0])
        return config

    def saved_state_keys(self) -> set[str]:
        return super().saved_state_keys() | {f"objective.{n}" for n in self.head_parameters()}
