"""A terminal line of its own for each sweep worker's progress bars.

The workers of ``launcher=joblib`` share one terminal; with every tqdm bar at position 0 they overwrite each other's
line. Each worker claims the lowest free slot ``0 .. n_jobs - 1`` once, by holding an exclusive ``flock`` on a
file named after the sweep's process (the workers' parent) for the rest of its life; the trainer then draws its
bars ``2 * slot`` lines down (Lightning's ``TQDMProgressBar(process_position=slot)``). A worker that dies releases
its lock with it, so its replacement takes the freed line.
"""

from __future__ import annotations

import fcntl
import os
import tempfile
from pathlib import Path
from typing import IO

_slot = 0
_handle: IO[str] | None = None


def claim(n_jobs: int, root: Path | None = None) -> int:
    """This worker's slot (claimed on the first call, then kept); 0 when all ``n_jobs`` slots are held."""
    global _slot, _handle
    if _handle is not None:
        return _slot
    base = (root or Path(tempfile.gettempdir())) / f"bridgelab-bars-{os.getppid()}"
    base.mkdir(parents=True, exist_ok=True)
    for k in range(max(1, n_jobs)):
        handle = open(base / f"{k}.lock", "a")  # noqa: SIM115 - held open (locked) for the process's life
        try:
            fcntl.flock(handle, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            handle.close()
            continue
        _slot, _handle = k, handle
        return k
    return 0


def position() -> int:
    """The claimed slot (0 outside sweep workers)."""
    return _slot
