"""Intra-op threads that follow the machine's load (issue 11, section 4).

torch's OpenMP threads meet at a barrier after every op. With tiny models every op lasts microseconds, so when one
of N threads on N cores is descheduled because another program wants a core, the others wait for it at every op:
measured on the 2-core machine, the world LM's pretraining fell from about 13 to 0.5 steps/s beside one busy process
in another terminal (whose ``nice`` does not help across Linux autogroups), while one thread kept about 12 steps/s.
One thread alone, though, costs about a third of the idle speed. So the number of threads follows the load:

- every ``interval_s`` seconds, the CPU time used by *other* processes is the machine's busy time (``/proc/stat``)
  minus this process's own (``time.process_time``), per second of wall time: how many cores others keep busy;
- the thread count becomes the cores left to us (rounded), between 1 and the count torch started with (which
  honours ``OMP_NUM_THREADS``); it is changed only when the free cores differ from the current count by more than
  ``HYSTERESIS`` (0.75), so a short burst elsewhere (a compile, a file copy) does not take a thread away.

``BRIDGELAB_THREADS=auto`` (the default) turns this on; ``BRIDGELAB_THREADS=N`` fixes N threads for the whole process
and never changes them. Where ``/proc/stat`` does not exist (macOS, Windows) the count stays as torch set it.
``ThreadFollower`` ticks the process-wide governor from Lightning's train and predict loops; the world's pretraining
loops call ``follow_load()`` once per step (a clock read unless ``interval_s`` has passed).
"""

from __future__ import annotations

import os
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import lightning as L
import torch
from lightning.pytorch.callbacks import Callback

ENV = "BRIDGELAB_THREADS"
HYSTERESIS = 0.75  # cores: change the count only when the free cores differ from it by more (no flapping on bursts)
PROC_STAT = Path("/proc/stat")


def machine_busy_seconds(stat: Path = PROC_STAT) -> float | None:
    """Seconds of CPU time all cores have spent busy since boot (``/proc/stat``'s first line), or None without it."""
    try:
        fields = stat.read_text().split("\n", 1)[0].split()
    except OSError:
        return None
    ticks = [int(v) for v in fields[1:9]]  # user nice system idle iowait irq softirq steal
    busy = sum(ticks) - ticks[3] - ticks[4]
    return busy / os.sysconf("SC_CLK_TCK")


def usable_cores() -> int:
    """The cores this process may run on (its affinity mask, e.g. under taskset or a container's cpuset)."""
    return len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else (os.cpu_count() or 1)


@dataclass
class ThreadGovernor:
    """Sets torch's intra-op threads to the cores other processes leave free; see the module docstring.

    ``busy`` and ``own`` read the machine's busy seconds and this process's CPU seconds (injectable for tests);
    ``set_threads`` applies a count. ``tick`` returns the thread count after the call.
    """

    max_threads: int
    cores: int
    interval_s: float = 5.0
    busy: Callable[[], float | None] = machine_busy_seconds
    own: Callable[[], float] = time.process_time
    clock: Callable[[], float] = time.monotonic
    set_threads: Callable[[int], None] = torch.set_num_threads
    threads: int = field(init=False)
    others: float = field(init=False, default=0.0)
    changes: int = field(init=False, default=0)
    history: list[tuple[float, int]] = field(init=False, default_factory=list)  # (clock, new count) per change
    _last: tuple[float, float, float] | None = field(init=False, default=None, repr=False)

    def __post_init__(self) -> None:
        if self.max_threads < 1 or self.cores < 1 or self.interval_s <= 0:
            raise ValueError(f"ThreadGovernor needs max_threads >= 1, cores >= 1 and interval_s > 0; got "
                             f"{self.max_threads}, {self.cores}, {self.interval_s}.")
        self.threads = self.max_threads

    def _sample(self) -> tuple[float, float, float] | None:
        busy = self.busy()
        return None if busy is None else (self.clock(), busy, self.own())

    def tick(self) -> int:
        if self._last is not None and self.clock() - self._last[0] < self.interval_s:
            return self.threads
        now = self._sample()
        if now is None:
            return self.threads
        if self._last is not None:
            wall = now[0] - self._last[0]
            self.others = max(0.0, ((now[1] - self._last[1]) - (now[2] - self._last[2])) / wall)
            free = self.cores - self.others
            wanted = min(self.max_threads, max(1, round(free)))
            if wanted != self.threads and abs(free - self.threads) > HYSTERESIS:
                self.set_threads(wanted)
                self.threads = wanted
                self.changes += 1
                self.history.append((now[0], wanted))
        self._last = now
        return self.threads


def governor_from_env(environ: dict[str, str] | None = None) -> ThreadGovernor | None:
    """The governor ``BRIDGELAB_THREADS`` asks for: None for a fixed count (which it applies) or off."""
    value = (os.environ if environ is None else environ).get(ENV, "auto").strip().lower()
    if value == "auto":
        return ThreadGovernor(max_threads=torch.get_num_threads(), cores=usable_cores())
    if value.isdigit() and int(value) > 0:
        torch.set_num_threads(int(value))
        return None
    raise ValueError(f"{ENV}={value!r} is not understood: use 'auto' (threads follow the machine's load) or a "
                     f"positive thread count, e.g. {ENV}=2.")


def share_cores(workers: int, environ: dict[str, str] | None = None) -> int:
    """In one of ``workers`` parallel worker processes (``launcher=joblib``): start from this process's share of
    the cores, ``usable_cores() // workers`` (at least 1), instead of torch's count for the whole machine, unless
    ``BRIDGELAB_THREADS`` fixes a count. Call before the governor exists; returns torch's thread count.

    Two workers of tiny models at one thread each train about 1.5x more per second on two cores than one process at
    two threads (measured 2026-12-01: the demo's Q-Former run, 102 and 116 s side by side, 87 s alone at two)."""
    value = (os.environ if environ is None else environ).get(ENV, "auto").strip().lower()
    if value == "auto" and not _GOVERNOR and workers > 1:
        torch.set_num_threads(max(1, min(torch.get_num_threads(), usable_cores() // workers)))
    return torch.get_num_threads()


_GOVERNOR: list[ThreadGovernor | None] = []


def follow_load() -> int:
    """Tick the process-wide governor (built from the environment on first use); returns torch's thread count."""
    if not _GOVERNOR:
        _GOVERNOR.append(governor_from_env())
    governor = _GOVERNOR[0]
    return governor.tick() if governor is not None else torch.get_num_threads()


def thread_record(since: float | None = None) -> dict[str, Any]:
    """What ``run.json`` records (``threads``): the policy, torch's thread count now, and the governor's changes
    since ``since`` (a ``time.monotonic()`` value) as ``[seconds after it, new count]``. The count changes the
    floating-point summation order, so two runs of one config agree bit for bit only with the same counts."""
    governor = _GOVERNOR[0] if _GOVERNOR else None
    start = since if since is not None else 0.0
    changes = [[round(t - start, 1), n] for t, n in (governor.history if governor else []) if t >= start]
    return {"policy": os.environ.get(ENV, "auto"), "torch_threads": torch.get_num_threads(), "changes": changes}


class ThreadFollower(Callback):
    """Ticks the process-wide thread governor before every train and predict batch."""

    def on_train_batch_start(self, trainer: L.Trainer, pl_module: L.LightningModule, *args: Any) -> None:
        follow_load()

    def on_predict_batch_start(self, trainer: L.Trainer, pl_module: L.LightningModule, *args: Any) -> None:
        follow_load()
