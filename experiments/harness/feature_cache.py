"""Frozen encoder features, computed once per image and shared by every run of a process (``train.cache_features``).

When a stage keeps every encoder frozen and the encoders are deterministic (no active dropout, drop-path or batch
norm), an encoder's output for an image depends on the image alone. The cache wraps the model's ``EncoderSet``
forward: each image is keyed by a digest of its (transformed) pixels, per encoder, layer and CLS choice; only images
not seen before are encoded. The demo's seven bridges train on the same pools, so after the first bridge of a seed
the ViT hardly runs during training.

Scope and honesty: the cache is process-wide (bounded by ``MAX_ITEMS`` and by the machine's available memory,
``harness/memory.py``), used only on CPU, switched off for FLOP counting and evaluation, and recorded in
``efficiency.json`` (``feature_cache``) because training samples/s then measures the bridge and the LM, not the
frozen encoders. Features computed in a different batch can differ from a
fresh computation in the last float bits, so a cached run matches an uncached one to rounding, not bit for bit.
"""

from __future__ import annotations

import contextlib
import hashlib
from collections.abc import Iterator, Mapping, Sequence
from typing import Any

import torch
from torch import nn

from encoders.base import VisionFeatures, resolve_layers
from experiments.harness.memory import memory_is_short

_STORE: dict[tuple[Any, ...], torch.Tensor] = {}
_META: dict[tuple[Any, ...], tuple[tuple[int, int], int, int]] = {}
MAX_ITEMS = 2_000_000  # stored (image, layer) tensors; beyond it, or when memory is short, new features are not kept

def clear() -> None:
    _STORE.clear()
    _META.clear()


def stats() -> dict[str, int]:
    return {"items": len(_STORE), "bytes": sum(t.numel() * t.element_size() for t in _STORE.values())}


def deterministic(module: nn.Module) -> bool:
    """No module whose output depends on train mode or randomness (dropout > 0, drop-path > 0, batch norm)."""
    for m in module.modules():
        if isinstance(m, nn.modules.batchnorm._BatchNorm):
            return False
        if isinstance(m, nn.Dropout) and m.p > 0:
            return False
        if type(m).__name__ == "DropPath" and getattr(m, "drop_prob", 0.0) > 0:
            return False
    return True


def cacheable(model: nn.Module) -> bool:
    """Whether the model's encoders are frozen, deterministic and on the CPU."""
    encoders = getattr(model, "encoders", None)
    if encoders is None or not hasattr(encoders, "names"):
        return False
    params = list(encoders.parameters())
    if any(p.requires_grad for p in params) or any(p.device.type != "cpu" for p in params):
        return False
    return deterministic(encoders)


def _digest(image: torch.Tensor) -> bytes:
    return hashlib.blake2b(image.detach().contiguous().numpy().tobytes(), digest_size=16).digest()


def _features(encoder: nn.Module, name: str, pixels: torch.Tensor, layers: Any, with_cls: bool,
              identity: tuple[Any, ...]) -> VisionFeatures:
    """``encoder(pixels, layers, with_cls)`` with every (image, layer) seen before taken from the store."""
    absolute = resolve_layers(layers, encoder.num_layers)
    keys = [(identity, name, with_cls, _digest(img)) for img in pixels]
    missing = [i for i, k in enumerate(keys) if any((*k, layer) not in _STORE for layer in absolute)]
    if missing:
        fresh = encoder(pixels[torch.tensor(missing)], absolute, with_cls)
        _META[(identity, name, with_cls)] = (tuple(fresh.grid), fresh.width, fresh.num_prefix)
        full = len(_STORE) + len(missing) * len(absolute) > MAX_ITEMS or memory_is_short()
        if not full:
            for row, i in enumerate(missing):
                for layer, hidden in zip(fresh.layers, fresh.hidden):
                    _STORE[(*keys[i], layer)] = hidden[row].clone()
        if len(missing) == len(keys):
            return fresh
        if full:  # the store is full: encode the whole batch instead
            return encoder(pixels, absolute, with_cls)
    grid, width, prefix = _META[(identity, name, with_cls)]
    hidden = tuple(torch.stack([_STORE[(*k, layer)] for k in keys]) for layer in absolute)
    return VisionFeatures(hidden=hidden, layers=absolute, grid=grid, width=width, num_prefix=prefix)


@contextlib.contextmanager
def cached_encoders(model: nn.Module, identity: Sequence[Any]) -> Iterator[bool]:
    """Within the block, the model's ``EncoderSet`` answers from the cache (yields whether it is active).

    ``identity`` names the encoders' weights (e.g. the resolved encoder spec and the world config), so two runs share
    features only when their encoders are the same.
    """
    if not cacheable(model):
        yield False
        return
    encoders = model.encoders
    ident = tuple(identity)

    def forward(pixels: Any, layers: Any = -1, with_cls: Any = False) -> dict[str, VisionFeatures]:
        pixels_by = pixels if isinstance(pixels, Mapping) else {n: pixels for n in encoders.names}
        layers_by = layers if isinstance(layers, Mapping) else {n: layers for n in encoders.names}
        cls_by = with_cls if isinstance(with_cls, Mapping) else {n: with_cls for n in encoders.names}
        with torch.no_grad():
            return {
                n: _features(encoders[n], n, pixels_by[n], layers_by[n], bool(cls_by[n]), ident)
                for n in encoders.names
            }

    encoders.forward = forward
    try:
        yield True
    finally:
        del encoders.forward  # the class's forward again
