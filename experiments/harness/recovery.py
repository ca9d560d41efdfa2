"""Where a stage resumes from, and what a damaged checkpoint does (``resume_from_corrupt``).

Every checkpoint commit keeps the one before as ``prev.ckpt`` (see ``callbacks.AtomicCheckpoint``), so a damaged
``last.ckpt`` has a fallback. ``resume_from_corrupt``: ``fail`` (the default: an error naming the file and the
options, nothing changed), ``previous`` (resume from ``prev.ckpt``), ``restart_stage`` (train the stage again from
its start). A damaged file is kept beside as ``<name>.corrupt``.
"""

from __future__ import annotations

import logging
import os
from pathlib import Path

from experiments.harness.config import RunConfig
from experiments.harness.module import read_checkpoint
from experiments.harness.rundir import CorruptRunFile, RunDir

log = logging.getLogger(__name__)

RECOVERY_POLICIES = ("fail", "previous", "restart_stage")


def resume_point(run: RunConfig, rd: RunDir, stage: str) -> tuple[Path | None, int]:
    """The checkpoint a stage resumes from and its step: ``last.ckpt``, else ``prev.ckpt`` (a process killed between
    the two renames of a commit), else none (start the stage). A damaged ``last.ckpt`` is handled as
    ``resume_from_corrupt`` says: ``fail`` (the default: an error naming the file and the options), ``previous``
    (resume from ``prev.ckpt``), ``restart_stage`` (train the stage again from its start)."""
    last, prev = rd.last_checkpoint(stage), rd.previous_checkpoint(stage)
    for path in (last, prev):
        if not path.exists():
            continue
        try:
            return path, int(read_checkpoint(path).get("global_step", 0))
        except CorruptRunFile as err:
            policy = run.resume_from_corrupt
            if policy == "fail" or (policy == "previous" and path == prev):
                options = [f"resume_from_corrupt=restart_stage (train stage '{stage}' again from its start)"]
                if path == last and prev.exists():
                    options.insert(0, f"resume_from_corrupt=previous (resume from {prev})")
                raise CorruptRunFile(
                    f"{err} To go on, rerun with {' or '.join(options)}; the damaged file is then moved aside "
                    f"to {path.name}.corrupt."
                ) from err
            aside = path.with_name(path.name + ".corrupt")
            os.replace(path, aside)
            log.warning("%s is damaged; moved to %s (resume_from_corrupt=%s)", path, aside, policy)
            if policy == "restart_stage" or not prev.exists():
                prev.unlink(missing_ok=True)
                log.warning("Stage '%s' trains again from its start", stage)
                return None, 0
    return None, 0


def final_usable(run: RunConfig, final: Path, stage: str) -> bool:
    """Whether a stage's ``final.ckpt`` can be loaded; a damaged one fails naming the file, or with
    ``resume_from_corrupt=restart_stage`` (or ``previous``: a finished stage keeps no earlier checkpoint) is moved
    aside and the stage trains again."""
    try:
        read_checkpoint(final)
        return True
    except CorruptRunFile as err:
        if run.resume_from_corrupt == "fail":
            raise CorruptRunFile(
                f"{err} Rerun with resume_from_corrupt=restart_stage to train stage '{stage}' again, "
                "or delete the file."
            ) from err
        os.replace(final, final.with_name(final.name + ".corrupt"))
        log.warning("%s is damaged; moved aside, stage '%s' trains again", final, stage)
        return False
