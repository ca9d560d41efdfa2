"""Pretraining the world's two vision backbones: a tiny ViT (contrastive) and a ConvNet expert (supervised).

* :func:`pretrain_vit`: a timm ``VisionTransformer`` (32x32, patch 8 -> 4x4 grid, width 128, depth 4, no CLS,
  mean-pooled; the encoders package's ``tiny_vit`` preset) trained CLIP-style on image-caption pairs of the world
  with open_clip's ``ClipLoss`` against a small text tower (word embeddings, 2 transformer layers, mean pool).
  Quality: zero-shot retrieval of the true caption among every caption template of the image's kind
  (96 object captions, 96 count captions, 240 digit captions) on held-out images (WORLD_PROTOTYPE.md section 2:
  400 steps -> 0.999).
* :func:`pretrain_expert`: a small timm ConvNeXt at 64x64 (a second, different expert for Eagle: another
  architecture, another resolution, another objective) trained to classify object class (4 shapes + 10 digits),
  colour, quadrant and count. Quality: held-out accuracy per head, digits in particular.

Both return the plain timm model (its ``state_dict()`` is what the encoders package's ``timm_vit`` /
``timm_convnet`` backends load from a ``pretrained`` file) and an encoder spec that rebuilds it.
"""

from __future__ import annotations

import math
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import timm
import torch
import torch.nn.functional as F
from open_clip.loss import ClipLoss
from torch import nn
from tqdm.auto import tqdm

from experiments.harness.threads import follow_load
from experiments.world.render import DIGIT
from experiments.world.scenes import QUADRANT_WORDS, STILL_KINDS, Media, SceneSampler, WorldConfig, article
from experiments.world.tasks import render_media, seed_sequence, to_uint8
from experiments.world.vocab import (
    COLOURS,
    NUMBER_WORDS,
    PAD,
    SHAPE_PLURALS,
    SHAPES,
    VOCAB,
    VOCAB_SIZE,
    encode_words,
)


@dataclass
class VitPretrainConfig:
    """The tiny ViT and its contrastive pretraining (WORLD_PROTOTYPE.md sections 2 and 5).

    Attributes:
        architecture, model_kwargs: ``timm.create_model(architecture, img_size=image_size, num_classes=0,
            **model_kwargs)``; the defaults are the ``tiny_vit`` encoder preset.
        image_size: input side.
        text_layers, embed_dim: the text tower's depth, and the width of the shared embedding space.
        steps, batch_size, lr, weight_decay: AdamW, one-cycle schedule (prototype: 300-400 steps, batch 256, 2e-3).
        kinds: scene kinds of the training pairs and their sampling weights.
        eval_per_kind: held-out images per kind for zero-shot retrieval.
        seed: initialisation and data stream.
    """

    architecture: str = "vit_tiny_patch16_224"
    model_kwargs: dict[str, Any] = field(
        default_factory=lambda: {
            "patch_size": 8,
            "depth": 4,
            "embed_dim": 128,
            "num_heads": 4,
            "mlp_ratio": 2.0,
            "class_token": False,
            "global_pool": "avg",
        }
    )
    image_size: int = 32
    text_layers: int = 2
    embed_dim: int = 128
    steps: int = 350
    batch_size: int = 256
    lr: float = 2e-3
    weight_decay: float = 0.05
    kinds: dict[str, float] = field(
        default_factory=lambda: {"object": 0.35, "count": 0.2, "digit": 0.25, "pair": 0.1, "frame": 0.1}
    )
    eval_per_kind: int = 500
    seed: int = 0


@dataclass
class ExpertPretrainConfig:
    """The second expert: a small timm ConvNeXt at a higher resolution, trained by supervised classification.

    Attributes:
        architecture, model_kwargs: ``timm.create_model(architecture, num_classes=0, **model_kwargs)``.
        image_size: input side (64: digits become legible where the 32x32 ViT struggles).
        steps, batch_size, lr, weight_decay: AdamW, one-cycle schedule.
        kinds: scene kinds and weights (each has a class: its shape, or its digit).
        eval_images: held-out images for the accuracy report.
        seed: initialisation and data stream.
    """

    architecture: str = "convnext_atto"
    model_kwargs: dict[str, Any] = field(default_factory=lambda: {"depths": [1, 1, 2, 1], "dims": [32, 64, 96, 128]})
    image_size: int = 64
    steps: int = 400
    batch_size: int = 128
    lr: float = 2e-3
    weight_decay: float = 0.05
    kinds: dict[str, float] = field(default_factory=lambda: {"object": 0.2, "count": 0.2, "digit": 0.6})
    eval_images: int = 1000
    seed: int = 0


def create_vit(cfg: VitPretrainConfig) -> nn.Module:
    kwargs = {"img_size": cfg.image_size, "num_classes": 0, **cfg.model_kwargs}
    return timm.create_model(cfg.architecture, pretrained=False, **kwargs)


def create_expert(cfg: ExpertPretrainConfig) -> nn.Module:
    return timm.create_model(cfg.architecture, pretrained=False, num_classes=0, **cfg.model_kwargs)


def mean_std(model: nn.Module) -> tuple[list[float], list[float]]:
    """The normalisation the timm model declares (what the encoders package uses by default)."""
    cfg = getattr(model, "pretrained_cfg", None) or {}
    return list(cfg.get("mean", (0.5, 0.5, 0.5))), list(cfg.get("std", (0.5, 0.5, 0.5)))


def normalise(images: torch.Tensor, mean: list[float], std: list[float]) -> torch.Tensor:
    return (images - images.new_tensor(mean).view(-1, 1, 1)) / images.new_tensor(std).view(-1, 1, 1)


class PictureStream:
    """Batches of rendered still images with their media descriptions, drawn by kind weights."""

    def __init__(self, kinds: dict[str, float], seed: int, world: WorldConfig, size: int, split: str, stream: int):
        unknown = set(kinds) - set(STILL_KINDS)
        if unknown:
            raise ValueError(f"Unknown scene kinds {sorted(unknown)}; choose from {STILL_KINDS}")
        self.kinds, weights = list(kinds), np.array(list(kinds.values()), dtype=float)
        self.weights = weights / weights.sum()
        self.seq = seed_sequence(seed, "attribute", split, 100 + stream)
        self.rng = np.random.default_rng(self.seq)
        self.sampler = SceneSampler(self.rng, world, "train" if split in ("train", "pretrain") else "eval")
        self.world, self.size, self.calls = world, size, 0

    def batch(self, n: int, kinds: list[str] | None = None) -> tuple[torch.Tensor, list[Media]]:
        kinds = kinds or list(self.rng.choice(self.kinds, size=n, p=self.weights))
        media = [self.sampler.still(str(k)) for k in kinds]
        self.calls += 1
        seq = np.random.SeedSequence(self.seq.entropy, spawn_key=(*self.seq.spawn_key, self.calls))
        pixels, _ = render_media(media, (self.size,), self.world, seq)
        return to_uint8(pixels[self.size]).float().div_(255.0), media  # quantised like the task datasets


# ---- contrastive ViT -------------------------------------------------------------------------------------------
class TextTower(nn.Module):
    """Caption encoder for contrastive pretraining: embeddings + pre-LN transformer + masked mean pool."""

    def __init__(self, width: int, layers: int, out_dim: int, max_len: int = 32) -> None:
        super().__init__()
        self.embed = nn.Embedding(VOCAB_SIZE, width, padding_idx=VOCAB[PAD])
        self.pos = nn.Parameter(torch.zeros(1, max_len, width))
        layer = nn.TransformerEncoderLayer(width, 4, 2 * width, dropout=0.0, batch_first=True, norm_first=True)
        self.encoder = nn.TransformerEncoder(layer, layers, enable_nested_tensor=False)
        self.norm = nn.LayerNorm(width)
        self.proj = nn.Linear(width, out_dim)

    def forward(self, ids: torch.Tensor) -> torch.Tensor:
        """``ids`` ``(B, L)`` -> embeddings ``(B, out_dim)``."""
        pad = ids == VOCAB[PAD]
        x = self.encoder(self.embed(ids) + self.pos[:, : ids.shape[1]], src_key_padding_mask=pad)
        keep = (~pad).unsqueeze(-1).float()
        return self.proj(self.norm((x * keep).sum(1) / keep.sum(1).clamp(min=1.0)))


def caption_ids(captions: list[str]) -> torch.Tensor:
    """Right-padded ``(B, L)`` ids of captions (no ``<bos>``)."""
    rows = [encode_words(c) for c in captions]
    out = torch.full((len(rows), max(map(len, rows))), VOCAB[PAD], dtype=torch.long)
    for i, r in enumerate(rows):
        out[i, : len(r)] = torch.tensor(r)
    return out


class ClipModel(nn.Module):
    """The ViT with a projection, the text tower and a learnable temperature (open_clip's init, 1/0.07)."""

    def __init__(self, vit: nn.Module, cfg: VitPretrainConfig) -> None:
        super().__init__()
        self.vit = vit
        self.image_proj = nn.Linear(vit.num_features, cfg.embed_dim)
        self.text = TextTower(vit.num_features, cfg.text_layers, cfg.embed_dim)
        self.logit_scale = nn.Parameter(torch.tensor(math.log(1 / 0.07)))
        self.mean, self.std = mean_std(vit)

    def encode_image(self, images: torch.Tensor) -> torch.Tensor:
        return F.normalize(self.image_proj(self.vit(normalise(images, self.mean, self.std))), dim=-1)

    def encode_text(self, ids: torch.Tensor) -> torch.Tensor:
        return F.normalize(self.text(ids), dim=-1)


def caption_templates(kind: str) -> tuple[list[str], Callable[[Media], int]]:
    """Every caption a still image of ``kind`` can have, and a function media -> index of its caption."""
    places = range(4)
    if kind == "object":
        caps = [
            f"{article(c)} {COLOURS[c]} {SHAPES[s]} at the {QUADRANT_WORDS[q]}"
            for c in range(6)
            for s in range(4)
            for q in places
        ]
    elif kind == "count":
        caps = [
            f"{NUMBER_WORDS[k]} {COLOURS[c]} {SHAPES[s] if k == 1 else SHAPE_PLURALS[s]}"
            for c in range(6)
            for s in range(4)
            for k in range(1, 5)
        ]
    elif kind == "digit":
        caps = [
            f"{article(c)} {COLOURS[c]} digit {NUMBER_WORDS[d]} at the {QUADRANT_WORDS[q]}"
            for c in range(6)
            for d in range(10)
            for q in places
        ]
    else:
        raise ValueError(f"No caption templates for kind '{kind}'")
    index = {c: i for i, c in enumerate(caps)}
    return caps, lambda m: index[m.caption]


@torch.no_grad()
def zero_shot_retrieval(model: ClipModel, cfg: VitPretrainConfig, world: WorldConfig, n: int) -> dict[str, float]:
    """Top-1 accuracy of retrieving each held-out image's caption among all templates of its kind."""
    model.eval()
    out = {}
    stream = PictureStream({"object": 1.0}, cfg.seed, world, cfg.image_size, "val", stream=1)
    for kind in ("object", "count", "digit"):
        caps, index = caption_templates(kind)
        text = model.encode_text(caption_ids(caps))
        images, media = stream.batch(n, [kind] * n)
        image = torch.cat([model.encode_image(chunk) for chunk in images.split(256)])
        pred = (image @ text.T).argmax(-1)
        truth = torch.tensor([index(m) for m in media])
        out[f"{kind}_{len(caps)}way"] = round(float((pred == truth).float().mean()), 4)
        if kind == "object":  # which part of the caption goes wrong (index = colour * 16 + shape * 4 + quadrant)
            for name, (div, mod) in {"colour": (16, 6), "shape": (4, 4), "quadrant": (1, 4)}.items():
                out[f"object_{name}"] = round(float(((pred // div) % mod == (truth // div) % mod).float().mean()), 4)
    model.train()
    return out


def pretrain_vit(cfg: VitPretrainConfig, world: WorldConfig, progress: bool = True) -> tuple[nn.Module, dict]:
    """Contrastive pretraining; returns the timm ViT (eval mode) and its quality report."""
    torch.manual_seed(cfg.seed)
    model = ClipModel(create_vit(cfg), cfg)
    stream = PictureStream(cfg.kinds, cfg.seed, world, cfg.image_size, "pretrain", stream=0)
    loss_fn = ClipLoss()
    opt = torch.optim.AdamW(model.parameters(), lr=cfg.lr, weight_decay=cfg.weight_decay)
    sched = torch.optim.lr_scheduler.OneCycleLR(opt, max_lr=cfg.lr, total_steps=max(cfg.steps, 1))
    losses, start = [], time.perf_counter()
    bar = tqdm(range(cfg.steps), desc="world ViT (contrastive)", disable=not progress, leave=False)
    for step in bar:
        follow_load()
        images, media = stream.batch(cfg.batch_size)
        loss = loss_fn(
            model.encode_image(images),
            model.encode_text(caption_ids([m.caption for m in media])),
            model.logit_scale.exp(),
        )
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()
        sched.step()
        with torch.no_grad():
            model.logit_scale.clamp_(0, math.log(100))
        losses.append(loss.item())
        if step % 10 == 0:
            bar.set_postfix(loss=f"{loss.item():.3f}")
    seconds = time.perf_counter() - start
    report = {
        "parameters": sum(p.numel() for p in model.vit.parameters()),
        "train_seconds": round(seconds, 1),
        "steps": cfg.steps,
        "loss_first": round(float(np.mean(losses[:10])), 4) if losses else None,
        "loss_last": round(float(np.mean(losses[-10:])), 4) if losses else None,
        "zero_shot_retrieval": zero_shot_retrieval(model, cfg, world, cfg.eval_per_kind),
    }
    return model.vit.eval(), report


# ---- supervised ConvNet expert -----------------------------------------------------------------------------------
HEADS = {"class": len(SHAPES) + 10, "colour": len(COLOURS), "where": 4, "count": 4}


def expert_targets(media: list[Media]) -> dict[str, torch.Tensor]:
    """Labels per head (-100 where a head does not apply): class = shape, or 4 + digit."""
    rows = []
    for m in media:
        obj = m.frames[0].objects[0]
        cls = len(SHAPES) + obj.digit if obj.shape == DIGIT else obj.shape
        rows.append((cls, m.facts["colour"], m.facts.get("where", -100), m.facts.get("count", 1) - 1))
    t = torch.tensor(rows, dtype=torch.long)
    return {name: t[:, i] for i, name in enumerate(HEADS)}


class ExpertClassifier(nn.Module):
    def __init__(self, backbone: nn.Module) -> None:
        super().__init__()
        self.backbone = backbone
        self.heads = nn.ModuleDict({k: nn.Linear(backbone.num_features, n) for k, n in HEADS.items()})
        self.mean, self.std = mean_std(backbone)

    def forward(self, images: torch.Tensor) -> dict[str, torch.Tensor]:
        pooled = self.backbone(normalise(images, self.mean, self.std))
        return {k: head(pooled) for k, head in self.heads.items()}


@torch.no_grad()
def expert_accuracy(model: ExpertClassifier, cfg: ExpertPretrainConfig, world: WorldConfig) -> dict[str, float]:
    model.eval()
    stream = PictureStream(cfg.kinds, cfg.seed, world, cfg.image_size, "val", stream=2)
    images, media = stream.batch(cfg.eval_images)
    logits = {k: torch.cat(v) for k, v in zip(HEADS, zip(*[model(c).values() for c in images.split(256)]))}
    targets = expert_targets(media)
    out = {}
    for name in HEADS:
        valid = targets[name] != -100
        out[name] = round(float((logits[name].argmax(-1)[valid] == targets[name][valid]).float().mean()), 4)
    digit = targets["class"] >= len(SHAPES)
    out["digit"] = round(float((logits["class"].argmax(-1)[digit] == targets["class"][digit]).float().mean()), 4)
    out["shape"] = round(float((logits["class"].argmax(-1)[~digit] == targets["class"][~digit]).float().mean()), 4)
    model.train()
    return out


def pretrain_expert(cfg: ExpertPretrainConfig, world: WorldConfig, progress: bool = True) -> tuple[nn.Module, dict]:
    """Supervised multi-head pretraining; returns the timm ConvNet (eval mode, no head) and its quality report."""
    torch.manual_seed(cfg.seed)
    model = ExpertClassifier(create_expert(cfg))
    stream = PictureStream(cfg.kinds, cfg.seed, world, cfg.image_size, "pretrain", stream=3)
    opt = torch.optim.AdamW(model.parameters(), lr=cfg.lr, weight_decay=cfg.weight_decay)
    sched = torch.optim.lr_scheduler.OneCycleLR(opt, max_lr=cfg.lr, total_steps=max(cfg.steps, 1))
    losses, start = [], time.perf_counter()
    bar = tqdm(range(cfg.steps), desc="world expert (ConvNet)", disable=not progress, leave=False)
    for step in bar:
        follow_load()
        images, media = stream.batch(cfg.batch_size)
        logits, targets = model(images), expert_targets(media)
        loss = sum(F.cross_entropy(logits[k], targets[k], ignore_index=-100) for k in HEADS)
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()
        sched.step()
        losses.append(loss.item())
        if step % 10 == 0:
            bar.set_postfix(loss=f"{loss.item():.3f}")
    report = {
        "parameters": sum(p.numel() for p in model.backbone.parameters()),
        "train_seconds": round(time.perf_counter() - start, 1),
        "steps": cfg.steps,
        "loss_first": round(float(np.mean(losses[:10])), 4) if losses else None,
        "loss_last": round(float(np.mean(losses[-10:])), 4) if losses else None,
        "accuracy": expert_accuracy(model, cfg, world),
    }
    return model.backbone.eval(), report


# ---- encoder specs -----------------------------------------------------------------------------------------------
def backbone_spec(
    backend: str, cfg: VitPretrainConfig | ExpertPretrainConfig, weights: str, model: nn.Module
) -> dict[str, Any]:
    """The encoder spec (``timm_vit`` for the ViT, ``timm_convnet`` for the expert) that rebuilds a pretrained
    backbone with ``encoders.build_encoder(spec)``."""
    mean, std = mean_std(model)
    return {
        "name": backend,
        "architecture": cfg.architecture,
        "image_size": cfg.image_size,
        "pretrained": weights,
        "model_kwargs": dict(cfg.model_kwargs),
        "mean": mean,
        "std": std,
    }
