"""Measurement primitives: wall time, FLOPs, peak memory and output parity of a zero-argument computation.

* Time: :class:`torch.utils.benchmark.Timer` (it synchronises CUDA), after ``warmup`` calls; each of ``repeats``
  measurements runs the call ``number`` times, with ``number`` chosen from the warm-up so that one measurement lasts
  about ``min_block_s``; the report gives the median and the inter-quartile range of the per-call times. Calls
  that are compared (ours and the reference) are measured interleaved, since the machine's load drifts.
* FLOPs: :func:`experiments.harness.efficiency.count_call_flops`, the routine ``efficiency.json`` uses too
  (``FlopCounterMode`` under ``sdpa_kernel(SDPBackend.MATH)``, since the CPU flash-attention kernel is not counted
  and its math decomposition is).
* Peak memory: on CUDA the rise of ``max_memory_allocated`` over the allocation before the call; on CPU the peak of
  the running sum of the allocations and frees recorded by ``torch.profiler`` (``profile_memory=True``) during the
  call, i.e. the tensor memory the call holds at its worst (caching and fragmentation of the C allocator excluded).
"""

from __future__ import annotations

import contextlib
import statistics
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from typing import Any

import torch
from torch.utils.benchmark import Timer

from experiments.analysis.tensor_memory import peak_tensor_bytes, stderr_silenced

Call = Callable[[], Any]


@dataclass(frozen=True)
class Settings:
    """How a computation is run and measured.

    Attributes:
        device: where it runs.
        repeats: timed measurements (the median is reported).
        warmup: untimed calls first.
        min_block_s: target duration of one measurement (calls are repeated within it).
        autocast: ``bfloat16`` autocast for the timed calls (CUDA); parity and FLOPs always run in float32.
    """

    device: torch.device
    repeats: int = 5
    warmup: int = 2
    min_block_s: float = 0.05
    autocast: bool = False


@contextlib.contextmanager
def precision(settings: Settings) -> Iterator[None]:
    if settings.autocast:
        with torch.autocast(settings.device.type, dtype=torch.bfloat16):
            yield
    else:
        yield


def forward(fn: Call) -> Call:
    """The call without autograd (inference)."""

    def run() -> Any:
        with torch.no_grad():
            return fn()

    return run


def forward_backward(fn: Call) -> Call:
    """Forward, then backward of the sum of the output (gradients accumulate into ``.grad``)."""

    def run() -> None:
        fn().float().sum().backward()

    return run


def time_calls(fns: dict[str, Call], settings: Settings) -> dict[str, dict[str, Any]]:
    """Median and inter-quartile range of each call's wall time, in milliseconds.

    The calls are measured interleaved (a measurement of each in turn, the order reversed every round), so that a
    change of the machine's load during the run affects them alike and their ratio stays meaningful.
    """
    timers, numbers = {}, {}
    for name, fn in fns.items():
        timers[name] = timer = Timer(
            "call()", globals={"call": _in_precision(fn, settings)}, num_threads=torch.get_num_threads()
        )
        first = timer.timeit(1).median  # also the first warm-up call
        for _ in range(max(0, settings.warmup - 1)):
            first = min(first, timer.timeit(1).median)
        numbers[name] = max(1, int(settings.min_block_s / max(first, 1e-6)))
    times: dict[str, list[float]] = {name: [] for name in fns}
    order = list(fns)
    for _ in range(max(1, settings.repeats)):
        for name in order:
            times[name].append(timers[name].timeit(numbers[name]).median)
        order.reverse()
    return {name: _summary(values, numbers[name]) for name, values in times.items()}


def time_call(fn: Call, settings: Settings) -> dict[str, Any]:
    """:func:`time_calls` for one call."""
    return time_calls({"call": fn}, settings)["call"]


def _in_precision(fn: Call, settings: Settings) -> Call:
    def call() -> None:
        with precision(settings):
            fn()

    return call


def _summary(times: list[float], number: int) -> dict[str, Any]:
    quartiles = statistics.quantiles(times, n=4) if len(times) > 1 else [times[0]] * 3
    return {
        "median_ms": 1e3 * statistics.median(times),
        "iqr_ms": 1e3 * (quartiles[2] - quartiles[0]),
        "calls_per_measurement": number,
        "measurements": len(times),
    }


def count_flops(fn: Call, custom_mapping: dict[Any, Any] | None = None) -> int:
    """Forward FLOPs of ``fn()`` (no autograd), counted by the project's one routine,
    :func:`experiments.harness.efficiency.count_call_flops` (attention through SDPA's math backend)."""
    from experiments.harness.efficiency import count_call_flops  # imported here: it loads the harness (seconds)

    def run() -> None:
        with torch.no_grad():
            fn()

    return count_call_flops(run, custom_mapping)


def flop_method() -> str:
    """How :func:`count_flops` counts (recorded beside the counts)."""
    from experiments.harness.efficiency import FLOP_METHOD

    return FLOP_METHOD


def gemm_rate(settings: Settings, size: int = 1024, dtype: torch.dtype = torch.float32) -> dict[str, Any]:
    """The machine's GEMM rate: a ``size``-square matmul in ``dtype``, timed like the bridges (same warm-up and
    repeats, ``min_block_s`` per measurement), in GFLOP/s."""
    g = torch.Generator().manual_seed(0)
    a, b = (torch.randn(size, size, generator=g).to(settings.device, dtype) for _ in range(2))
    plain = Settings(settings.device, max(3, settings.repeats), max(2, settings.warmup), settings.min_block_s)
    timing = time_call(forward(lambda: a @ b), plain)
    return {"size": size, "dtype": str(dtype).removeprefix("torch."), "gflops_per_s":
            2 * size**3 / (timing["median_ms"] * 1e6), "median_ms": timing["median_ms"]}


GEMM_OPS = ("aten::mm", "aten::addmm", "aten::bmm", "aten::baddbmm", "aten::matmul", "aten::linear",
            "aten::_scaled_dot_product_flash_attention_for_cpu", "aten::_embedding_bag_forward_only",
            "aten::_embedding_bag", "aten::convolution", "aten::mkldnn_convolution")


def time_shares(fn: Call, settings: Settings, top: int = 3) -> dict[str, Any]:
    """Where one call spends its time: the share of self time in GEMM-like ops and the ``top`` other ops."""
    from torch.profiler import ProfilerActivity, profile

    activities = [ProfilerActivity.CPU] + ([ProfilerActivity.CUDA] if settings.device.type == "cuda" else [])
    with stderr_silenced(), profile(activities=activities) as prof:
        with precision(settings):
            fn()
    events = [e for e in prof.key_averages() if e.self_cpu_time_total > 0]
    total = sum(e.self_cpu_time_total for e in events) or 1
    gemm = sum(e.self_cpu_time_total for e in events if e.key in GEMM_OPS)
    others = sorted((e for e in events if e.key not in GEMM_OPS), key=lambda e: -e.self_cpu_time_total)[:top]
    return {"gemm_share": gemm / total, "top_other_ops": [(e.key, e.self_cpu_time_total / total) for e in others]}


def memory_method(device: torch.device) -> str:
    if device.type == "cuda":
        return "CUDA max_memory_allocated rise during the call"
    return "peak of allocations minus frees recorded by torch.profiler during the call (CPU tensor memory)"


def peak_memory_bytes(fn: Call, settings: Settings) -> int | None:
    """Peak tensor memory the call adds on top of what existed before it (``None`` if it cannot be measured)."""

    def call() -> None:
        with precision(settings):
            fn()

    return peak_tensor_bytes(call, settings.device)


def parity(ours: torch.Tensor, reference: torch.Tensor, atol: float, rtol: float) -> dict[str, Any]:
    """Compare two outputs; ``matched`` follows ``torch.testing.assert_close``'s rule."""
    if ours.shape != reference.shape:
        return {
            "matched": False,
            "max_abs_diff": float("inf"),
            "atol": atol,
            "rtol": rtol,
            "error": f"shape {tuple(ours.shape)} vs reference {tuple(reference.shape)}",
        }
    ours, reference = ours.detach().float(), reference.detach().float()
    diff = (ours - reference).abs()
    matched = bool((diff <= atol + rtol * reference.abs()).all())
    return {
        "matched": matched,
        "max_abs_diff": float(diff.max()) if diff.numel() else 0.0,
        "atol": atol,
        "rtol": rtol,
        "max_abs_reference": float(reference.abs().max()) if diff.numel() else 0.0,
    }


def param_count(module: torch.nn.Module | None) -> int | None:
    if module is None:
        return None
    return sum(p.numel() for p in {id(p): p for p in module.parameters()}.values())
