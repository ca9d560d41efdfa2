"""SIGTERM and SIGINT end a run or a sweep as *interrupted*: recorded, non-zero exit, resumable.

:func:`interrupt_on_signals` turns both signals into :class:`RunInterrupted` in the main thread (Lightning keeps its
own SIGTERM bookkeeping and calls this handler too). ``run`` records the member as ``interrupted`` and re-raises; the
CLI exits with ``128 + signal`` (143 for SIGTERM, 130 for SIGINT); a rerun resumes from the last checkpoint.

Sweeps with ``launcher=joblib`` run members in loky worker processes. The parent forwards the signal to its workers
and waits (up to :data:`FORWARD_WAIT_S`) for them to record their members and exit, before it stops itself; and each
worker watches its parent (:func:`stop_with_parent`), so a parent killed with SIGKILL does not leave it training.
"""

from __future__ import annotations

import os
import signal
import threading
import time
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from types import FrameType

SIGNALS = (signal.SIGTERM, signal.SIGINT)
FORWARD_WAIT_S = 60.0
WORKER_MARK = "joblib.externals.loky.backend.popen_loky_posix"  # the command line of a loky worker process

# Set in sweep workers: after recording an interrupted member, end the worker process (see runner.run).
EXIT_ON_INTERRUPT = False


class RunInterrupted(BaseException):
    """A run was stopped by a signal (a ``BaseException``, like ``KeyboardInterrupt``: no handler swallows it)."""

    def __init__(self, signum: int) -> None:
        self.signum = signum
        self.signal_name = signal.Signals(signum).name
        super().__init__(f"interrupted by {self.signal_name}")

    @property
    def exit_code(self) -> int:
        return 128 + self.signum


def _children(mark: str) -> list[int]:
    """Pids of this process's children whose command line contains ``mark`` (Linux ``/proc``; none elsewhere)."""
    me, out = os.getpid(), []
    for entry in Path("/proc").glob("[0-9]*"):
        try:
            stat = (entry / "stat").read_text()
            ppid = int(stat.rsplit(")", 1)[1].split()[1])
            if ppid == me and mark in (entry / "cmdline").read_bytes().replace(b"\0", b" ").decode(errors="replace"):
                out.append(int(entry.name))
        except (OSError, ValueError, IndexError):
            continue
    return out


def forward_to_workers(signum: int, wait_s: float = FORWARD_WAIT_S) -> list[int]:
    """Send ``signum`` to this process's sweep workers and wait until they are gone; returns their pids."""
    workers = _children(WORKER_MARK)
    for pid in workers:
        try:
            os.kill(pid, signum)
        except ProcessLookupError:
            pass
    deadline = time.monotonic() + wait_s
    while workers and time.monotonic() < deadline:
        alive = [pid for pid in workers if Path(f"/proc/{pid}").exists() and not _zombie(pid)]
        if not alive:
            break
        time.sleep(0.1)
    return workers


def _zombie(pid: int) -> bool:
    try:
        return Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0] == "Z"
    except (OSError, IndexError):
        return False


@contextmanager
def interrupt_on_signals() -> Iterator[None]:
    """Within the block, SIGTERM/SIGINT raise :class:`RunInterrupted` (main thread only; nesting is a no-op)."""
    if threading.current_thread() is not threading.main_thread() or getattr(
        signal.getsignal(signal.SIGTERM), "bridgelab", False
    ):
        yield
        return
    fired: list[int] = []
    owner = os.getpid()

    def handler(signum: int, frame: FrameType | None) -> None:
        if os.getpid() != owner:  # a forked child (a DataLoader worker) inherited this handler: die as by default
            signal.signal(signum, signal.SIG_DFL)
            os.kill(os.getpid(), signum)
            return
        if fired:  # already stopping: a second Ctrl-C must not cut the recording of the first short
            return
        fired.append(signum)
        forward_to_workers(signum)
        raise RunInterrupted(signum)

    handler.bridgelab = True  # type: ignore[attr-defined]
    previous = {s: signal.getsignal(s) for s in SIGNALS}
    for s in SIGNALS:
        signal.signal(s, handler)
    try:
        yield
    finally:
        for s, old in previous.items():
            signal.signal(s, old if old is not None else signal.SIG_DFL)


def stop_with_parent(poll_s: float = 1.0) -> None:
    """In a sweep worker: SIGTERM this process when its parent dies (the member is recorded interrupted)."""
    global EXIT_ON_INTERRUPT
    EXIT_ON_INTERRUPT = True
    if getattr(stop_with_parent, "started", False):
        return
    parent = os.getppid()

    def watch() -> None:
        while os.getppid() == parent:
            time.sleep(poll_s)
        os.kill(os.getpid(), signal.SIGTERM)

    threading.Thread(target=watch, name="bridgelab-parent-watch", daemon=True).start()
    stop_with_parent.started = True  # type: ignore[attr-defined]
