"""Named fault points: a test hook that kills, signals or pauses the process at a precise point of a run.

The reliability tests (``tests/test_reliability_faults.py``) need to end a real process at an exact place (at a
checkpoint, right after one) rather than after a guessed delay. Set ``BRIDGELAB_FAULT`` to ``POINT[@STEP][:ACTION]``:

- ``POINT``: one of :data:`POINTS` (where the harness calls :func:`fault_point`);
- ``STEP``: fire only when the point is reached at this optimiser step (default: the first time);
- ``ACTION``: ``kill`` (SIGKILL, as ``kill -9``: no cleanup, no flush; the default), ``sigterm``, ``sigint``
  (the signal, delivered to this process as an outside ``kill`` would), ``sigint_group`` (SIGINT to the whole
  process group, as Ctrl-C in a terminal: DataLoader and sweep workers too), or ``pause`` (sleep until killed).

Before acting, the point writes ``$BRIDGELAB_FAULT_MARK`` (when set) so a test can wait for it. Unset, the hook costs
one dictionary lookup.
"""

from __future__ import annotations

import os
import signal
import time
from pathlib import Path

ENV = "BRIDGELAB_FAULT"
MARK_ENV = "BRIDGELAB_FAULT_MARK"
POINTS = (
    "train.step",  # the end of an optimiser step (before any checkpoint of that step)
    "checkpoint.saving",  # a checkpoint is due; nothing written yet
    "checkpoint.written",  # the checkpoint is on disk under its pending name, not yet last.ckpt
    "checkpoint.committed",  # last.ckpt replaced by the new checkpoint
    "stage.final",  # a stage's final.ckpt written
    "eval.start",  # training done, evaluation about to start
)
ACTIONS = ("kill", "sigterm", "sigint", "sigint_group", "pause")


def parse(spec: str) -> tuple[str, int | None, str]:
    """``"checkpoint.committed@4:kill"`` -> ``("checkpoint.committed", 4, "kill")``; raises ``ValueError``."""
    head, _, action = spec.partition(":")
    point, _, step = head.partition("@")
    action = action or "kill"
    if point not in POINTS or action not in ACTIONS or (step and not step.isdigit()):
        raise ValueError(
            f"{ENV}={spec!r} is not POINT[@STEP][:ACTION] with POINT in {', '.join(POINTS)} "
            f"and ACTION in {', '.join(ACTIONS)}"
        )
    return point, int(step) if step else None, action


def fault_point(name: str, step: int | None = None) -> None:
    """Act as ``$BRIDGELAB_FAULT`` says when it names this point (and step); otherwise return at once."""
    spec = os.environ.get(ENV)
    if not spec:
        return
    point, at, action = parse(spec)
    if point != name or (at is not None and at != step):
        return
    mark = os.environ.get(MARK_ENV)
    if mark:
        Path(mark).write_text(f"{name} {step} {os.getpid()}\n")
    if action == "pause":
        while True:
            time.sleep(1.0)
    os.environ.pop(ENV, None)  # fire once: the handlers of a graceful stop must not meet the point again
    if action == "sigint_group":
        os.killpg(os.getpgid(0), signal.SIGINT)
    else:
        os.kill(os.getpid(), {"kill": signal.SIGKILL, "sigterm": signal.SIGTERM, "sigint": signal.SIGINT}[action])
    time.sleep(0.5)  # a signal to oneself is delivered at the next bytecode boundary; wait here for it
