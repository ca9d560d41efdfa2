"""A benchmark case, the registry of cases, and the helpers their builders share (sizes, inputs, references)."""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

import torch
from torch import nn

from bridges.base import BridgeIO
from encoders.base import VisionFeatures, resolve_layers

SIZES = ("tiny", "small", "medium")


@dataclass
class Case:
    """One bridge benchmark, built on a device and ready to run.

    Attributes:
        name: case name (a key of :data:`CASES`).
        what: the timed computation, in words.
        ours: the module whose parameters the timed computation uses (counted in the report).
        run_ours: the timed forward; returns one tensor.
        num_media: media items (images) in one timed call.
        declared_flops_per_media: the bridge's :meth:`flops_per_media`.
        run_flops: the computation (over ``num_media`` items) whose counted FLOPs per media item must match the
            declaration; ``None``: ``run_ours`` (prefix bridges; inject bridges count ``encode`` and their K/V).
        reference / run_reference / reference_name: the installed reference (same weights, same inputs), or None.
        no_reference: why there is no reference, when there is none.
        flop_mapping: extra ``FlopCounterMode`` formulas (``grid_sample`` for MMFuser).
        baseline: optional ``(label, forward)`` timed for context (the bare LM layer for Hyper Attention).
        notes: facts the report should carry (attention implementations, what the reference is made of).
    """

    name: str
    what: str
    ours: nn.Module
    run_ours: Callable[[], torch.Tensor]
    num_media: int
    declared_flops_per_media: int
    run_flops: Callable[[], Any] | None = None
    reference: nn.Module | None = None
    run_reference: Callable[[], torch.Tensor] | None = None
    reference_name: str = ""
    no_reference: str = ""
    flop_mapping: dict[Any, Any] = field(default_factory=dict)
    baseline: tuple[str, Callable[[], torch.Tensor]] | None = None
    notes: list[str] = field(default_factory=list)


CaseBuilder = Callable[[str, torch.device], Case]
CASES: dict[str, CaseBuilder] = {}


def register(name: str) -> Callable[[CaseBuilder], CaseBuilder]:
    def wrap(fn: CaseBuilder) -> CaseBuilder:
        CASES[name] = fn
        return fn

    return wrap


def size_table(fields: str, **sizes: tuple[Any, ...]) -> dict[str, dict[str, Any]]:
    """Per size, the named values of a case (``fields`` space-separated, one tuple per size)."""
    names = fields.split()
    if sorted(sizes) != sorted(SIZES) or any(len(v) != len(names) for v in sizes.values()):
        raise ValueError(f"Give {len(names)} values ({fields}) for each size {SIZES}")
    return {size: dict(zip(names, values, strict=True)) for size, values in sizes.items()}


def pick_size(table: dict[str, dict[str, Any]], size: str) -> dict[str, Any]:
    if size not in table:
        raise ValueError(f"Unknown benchmark size '{size}'. Use one of {SIZES}.")
    return table[size]


def make_features(
    bridge: nn.Module, io: BridgeIO, n: int, device: torch.device, seed: int = 0
) -> dict[str, VisionFeatures]:
    """Random features of ``n`` images for every encoder of ``io``, with the layers and CLS ``bridge.needs`` asks."""
    g = torch.Generator().manual_seed(seed)
    needs = bridge.needs
    out = {}
    for enc in io.encoders:
        layers = resolve_layers(needs.layers, enc.num_layers)
        tokens = enc.grid[0] * enc.grid[1] + int(needs.with_cls)
        hidden = tuple(torch.randn(n, tokens, enc.width, generator=g).to(device) for _ in layers)
        out[enc.name] = VisionFeatures(hidden, layers, enc.grid, enc.width, int(needs.with_cls))
    return out


def prepare(*modules: nn.Module, device: torch.device) -> None:
    for m in modules:
        m.to(device).eval()


def bundle(modules: dict[str, nn.Module], params: dict[str, nn.Parameter] | None = None) -> nn.Module:
    """One module holding every parameter a reference computation uses (for the parameter count and zero_grad)."""
    bundle = nn.ModuleDict(modules)
    for name, param in (params or {}).items():
        bundle.register_parameter(name, param)
    return bundle


def attn_impl(module: nn.Module) -> str:
    """The attention implementation transformers dispatches to in ``module`` (the first submodule with a config)."""
    for sub in module.modules():
        impl = getattr(getattr(sub, "config", None), "_attn_implementation", None)
        if impl:
            return str(impl)
    return "n/a"
