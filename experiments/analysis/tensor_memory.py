"""Peak tensor memory of one call, the one measurement both the distractor curve and the benchmarks use.

CUDA: the rise of ``torch.cuda.max_memory_allocated`` during the call. CPU: torch's profiler records every tensor
allocation and free (``profile_memory=True``); the peak is the largest running sum of them, in time order. This is
tensor memory only (no allocator slack, no Python objects), the quantity the cost model predicts. It lives in
``experiments`` so that ``benchmarks`` (above it) and ``experiments.analysis`` share it without an upward import.
"""

from __future__ import annotations

import contextlib
import itertools
import os
import sys
from collections.abc import Callable, Iterator
from typing import Any

import torch


@contextlib.contextmanager
def stderr_silenced() -> Iterator[None]:
    """Send file descriptor 2 to /dev/null (C-level logging included: kineto logs every profiler start and stop)."""
    sys.stderr.flush()
    saved = os.dup(2)
    try:
        with open(os.devnull, "w") as null:
            os.dup2(null.fileno(), 2)
            yield
    finally:
        os.dup2(saved, 2)
        os.close(saved)


def peak_tensor_bytes(fn: Callable[[], Any], device: torch.device) -> int | None:
    """Peak tensor memory ``fn()`` adds on top of what existed before it; None where it cannot be measured
    (a device other than CPU or CUDA, or a CPU call that allocated nothing the profiler saw)."""
    if device.type == "cuda":
        torch.cuda.synchronize(device)
        torch.cuda.reset_peak_memory_stats(device)
        before = torch.cuda.memory_allocated(device)
        fn()
        torch.cuda.synchronize(device)
        return int(torch.cuda.max_memory_allocated(device) - before)
    if device.type != "cpu":
        return None
    from torch.profiler import ProfilerActivity, profile

    prof = profile(activities=[ProfilerActivity.CPU], profile_memory=True)
    with stderr_silenced():
        prof.start()
    try:
        fn()
    finally:
        with stderr_silenced():
            prof.stop()
    events = prof.profiler.kineto_results.events() if prof.profiler is not None else []
    allocations = sorted((e.start_ns(), e.nbytes()) for e in events if e.name() == "[memory]")
    if not allocations:
        return None
    return int(max(0, max(itertools.accumulate(n for _, n in allocations))))
