"""The efficiency record of a run (``efficiency.json``): the budget columns a fair comparison needs.

* visual tokens per media item (a prefix bridge's T; an inject bridge's memory length);
* total parameters and the parameters trained in each stage (and in any stage);
* FLOPs per sample, counted by ``torch.utils.flop_counter`` on one forward and one forward+backward of real
  training samples of each task (multi-image tasks cost more), plus the bridge's own FLOPs per media item; how they
  were counted is recorded beside the figure (``flops_method``);
* training samples/s and wall time per stage, and peak memory (CUDA allocated, and the process's peak RSS).
"""

from __future__ import annotations

from collections.abc import Callable, Mapping, Sequence
from typing import Any

import torch
from torch import nn
from torch.nn.attention import SDPBackend, sdpa_kernel
from torch.utils.flop_counter import FlopCounterMode

from bridges.common.deformable import grid_sample_flop_mapping

#: How :func:`count_call_flops` counts, recorded beside every figure it produces (``efficiency.json``, ``make bench``,
#: the scaling study).
FLOP_METHOD = (
    "torch.utils.flop_counter.FlopCounterMode (2 FLOPs per multiply-add of matmul, conv and attention); "
    "scaled_dot_product_attention forced to its math backend (sdpa_kernel(SDPBackend.MATH)) so attention is counted "
    "on every device (fused CPU kernels have no counter formula); grid_sample counted as 8 FLOPs per bilinear sample; "
    "elementwise ops, norms and softmax not counted"
)


def count_call_flops(fn: Callable[[], Any], custom_mapping: Mapping[Any, Any] | None = None) -> int:
    """FLOPs of ``fn()`` as :data:`FLOP_METHOD` says; ``fn`` decides about autograd (a backward inside is counted).

    The one FLOP-counting routine of the project: ``efficiency.json``, ``benchmarks.run`` and ``benchmarks.scaling``
    all count through it.
    """
    mapping = {**grid_sample_flop_mapping(), **dict(custom_mapping or {})}
    counter = FlopCounterMode(display=False, custom_mapping=mapping)
    with sdpa_kernel(SDPBackend.MATH), counter:
        fn()
    return int(counter.get_total_flops())


def count_flops(model: nn.Module, batch: Any, backward: bool = False) -> int:
    """FLOPs of ``model(batch)`` (and of its backward pass when ``backward``); gradients are cleared after."""
    was_training = model.training
    model.train(backward)

    def forward_backward() -> None:
        loss = model(batch).loss
        if loss.requires_grad:
            loss.backward()

    def forward() -> None:
        with torch.no_grad():
            model(batch)

    try:
        return count_call_flops(forward_backward if backward else forward)
    finally:
        model.zero_grad(set_to_none=True)
        model.train(was_training)


def flops_per_sample(
    model: nn.Module,
    tasks: Mapping[str, Sequence[Mapping[str, Any]]],
    collate: Callable[[Sequence[Mapping[str, Any]]], Any],
    device: torch.device,
    samples: int = 2,
) -> dict[str, dict[str, float]]:
    """Per task: forward and training (forward + backward) FLOPs per sample, on ``samples`` training samples."""
    out: dict[str, dict[str, float]] = {}
    for task, items in tasks.items():
        chosen = [items[i] for i in range(min(samples, len(items)))]
        if not chosen:
            continue
        batch = collate(chosen).to(device)
        n = len(chosen)
        out[task] = {
            "forward": count_flops(model, batch) / n,
            "train": count_flops(model, batch, backward=True) / n,
        }
    return out


def visual_tokens(model: nn.Module) -> int | None:
    bridge = getattr(model, "bridge", None)
    return int(bridge.num_visual_tokens(1)) if bridge is not None and hasattr(bridge, "num_visual_tokens") else None


def lm_sequence_tokens(model: nn.Module) -> int | None:
    """Tokens each media item adds to the LM's sequence: T for a prefix bridge, 1 (its ``<image>``) when injected."""
    bridge = getattr(model, "bridge", None)
    if bridge is None or not hasattr(bridge, "num_visual_tokens"):
        return None
    return 1 if getattr(bridge, "kind", "prefix") == "inject" else int(bridge.num_visual_tokens(1))


def bridge_summary(model: nn.Module) -> dict[str, Any]:
    bridge = getattr(model, "bridge", None)
    if bridge is None:
        return {}
    out: dict[str, Any] = {
        "name": getattr(bridge, "registry_name", type(bridge).__name__),
        "kind": getattr(bridge, "kind", None),
        "params": sum(p.numel() for p in bridge.parameters()),
    }
    if hasattr(bridge, "flops_per_media"):
        try:
            out["flops_per_media"] = int(bridge.flops_per_media(1))
        except (NotImplementedError, TypeError, ValueError):
            out["flops_per_media"] = None
    return out


def summarise(
    model: nn.Module,
    stage_params: Mapping[str, Mapping[str, int]],
    stage_perf: Mapping[str, Mapping[str, Any]],
    flops: Mapping[str, Mapping[str, float]] | None,
    batch_plans: Mapping[str, Mapping[str, int]],
    ever_trainable: int,
) -> dict[str, Any]:
    """The ``efficiency.json`` record: flat headline numbers first, details by stage and task after."""
    total = sum(p.numel() for p in model.parameters())
    last = list(stage_perf.values())[-1] if stage_perf else {}
    mem = [v.get("peak_gpu_mem_mb", v.get("peak_rss_mb")) for v in stage_perf.values()]
    mem = [m for m in mem if m is not None]
    fwd = [f["forward"] for f in (flops or {}).values()]
    return {
        "visual_tokens_per_media": visual_tokens(model),  # prefix length, or an inject bridge's memory length
        "lm_tokens_per_media": lm_sequence_tokens(model),
        "total_params": total,
        "trainable_params": ever_trainable,
        "flops_per_sample": (sum(fwd) / len(fwd)) if fwd else None,
        "flops_method": FLOP_METHOD if fwd else None,
        "train_samples_per_s": last.get("samples_per_s"),
        "peak_memory_mb": max(mem) if mem else None,
        "memory_kind": "cuda_allocated" if any("peak_gpu_mem_mb" in v for v in stage_perf.values()) else "cpu_rss",
        # samples/s measured with frozen encoder features reused (bridge + LM cost only)
        "feature_cache": any(v.get("feature_cache") for v in stage_perf.values()),
        "bridge": bridge_summary(model),
        "flops_per_sample_by_task": dict(flops or {}),
        "stages": {
            name: {
                **dict(stage_params.get(name, {})),
                **dict(stage_perf.get(name, {})),
                "batch": dict(batch_plans.get(name, {})),
            }
            for name in stage_params
        },
    }
