"""The machine's available memory, so that a process's caches give way before the kernel's OOM killer does.

A sweep worker keeps the sample pools of every seed it has run (``build.build_data``) and the frozen encoders'
features (``feature_cache``) for the runs that follow. On a grid like ``experiment=full_ablation`` (8 tasks x 8000
samples, about 2 GB of pools per seed) two workers that each keep three seeds outgrow a 24 GB machine (a worker was
OOM-killed at 11.8 GB, 2026-12-01). Both caches consult :func:`memory_is_short` and shed what they keep instead.
"""

from __future__ import annotations

import os
from pathlib import Path

MEMINFO = Path("/proc/meminfo")
# Below this fraction of the machine's memory available, caches stop growing and drop what other runs left.
LOW_MEMORY_FRACTION = float(os.environ.get("BRIDGELAB_LOW_MEMORY_FRACTION", "0.3"))


def available_fraction(meminfo: Path = MEMINFO) -> float | None:
    """``MemAvailable / MemTotal`` from ``/proc/meminfo``; ``None`` where the kernel does not report it."""
    try:
        fields = dict(line.split(":", 1) for line in meminfo.read_text().splitlines() if ":" in line)
        return int(fields["MemAvailable"].split()[0]) / int(fields["MemTotal"].split()[0])
    except (OSError, KeyError, ValueError, ZeroDivisionError):
        return None


def memory_is_short(threshold: float | None = None) -> bool:
    """Whether less than ``threshold`` (default :data:`LOW_MEMORY_FRACTION`) of the memory is available."""
    fraction = available_fraction()
    return fraction is not None and fraction < (LOW_MEMORY_FRACTION if threshold is None else threshold)
