"""The run directory: the single source of truth of a run, written atomically.

Layout (read by ``experiments.analysis`` and by ``load_run``)::

    <run_dir>/
      run.json                      config (resolved), config hash, git SHA, versions, seed, status, final metrics
      metrics.jsonl                 one JSON object per logged training step: {"stage", "step", "<name>": value...}
      efficiency.json               visual tokens per media item, parameters, FLOPs per sample, samples/s, memory
      eval/<task>/predictions.jsonl one line per evaluated sample: prompt, prediction, answer, correct, meta
      eval/<task>/scores.json       exact match overall and per question type (recomputable from predictions)
      .lock                         held while a process runs it (experiments/harness/runlock.py)
      checkpoints/<stage>/last.ckpt trainable weights + resolved config (resume point of the stage)
      checkpoints/<stage>/prev.ckpt the checkpoint before last.ckpt (the fallback when last.ckpt is damaged)
      checkpoints/<stage>/final.ckpt  the stage's final trainable weights

Every file is written to a temporary name in the same directory and moved into place with ``os.replace``, so a
reader (or a crash) never sees a half-written file.
"""

from __future__ import annotations

import datetime as _dt
import errno
import functools
import json
import os
import subprocess
import sys
import tempfile
from collections.abc import Iterable, Mapping
from importlib import metadata
from pathlib import Path
from typing import Any

from encoders.registry import ConfigError

RUN_FILE = "run.json"
METRICS_FILE = "metrics.jsonl"
EFFICIENCY_FILE = "efficiency.json"
EVAL_DIR = "eval"
CHECKPOINT_DIR = "checkpoints"
PREVIOUS_CHECKPOINT = "prev.ckpt"

_UMASK = os.umask(0)
os.umask(_UMASK)

STATUS_RUNNING = "running"
STATUS_FINISHED = "finished"
STATUS_FAILED = "failed"
STATUS_INTERRUPTED = "interrupted"  # ended by SIGTERM/SIGINT; a rerun resumes it


class RunRefused(ConfigError):
    """The run directory holds a run this job may not touch (another config, ``resume=false``, another process
    holds it); nothing in it is changed."""


class CorruptRunFile(ConfigError):
    """A file of the run directory cannot be read back (truncated, not JSON, not a checkpoint)."""


_DISK_HINTS = {
    errno.ENOSPC: "the disk is full: free space there, or put the run on another disk with run_dir=PATH",
    errno.EDQUOT: "the disk quota is exhausted: free space there, or put the run elsewhere with run_dir=PATH",
    errno.EROFS: "the file system is read-only: put the run elsewhere with run_dir=PATH",
    errno.EACCES: "permission denied: fix the permissions or put the run elsewhere with run_dir=PATH",
    errno.EPERM: "permission denied: fix the permissions or put the run elsewhere with run_dir=PATH",
}


def disk_error(err: BaseException, path: str | os.PathLike[str], action: str = "write") -> OSError:
    """An ``OSError`` like ``err`` whose message names ``path``, what was being done and what to do about it."""
    code = getattr(err, "errno", None)
    reason = getattr(err, "strerror", None) or str(err)
    hint = _DISK_HINTS.get(code or -1, "check that the path is a writable directory on a disk with free space")
    out = OSError(code, f"Could not {action} {path}: {reason} ({hint})")
    out.filename = str(path)
    return out

TRACKED_PACKAGES = (
    "bridgelab",
    "torch",
    "lightning",
    "transformers",
    "timm",
    "open_clip_torch",
    "peft",
    "hydra-core",
    "omegaconf",
    "numpy",
)


def _json_default(value: Any) -> Any:
    if isinstance(value, Path):
        return str(value)
    if hasattr(value, "item"):  # numpy / torch scalars
        return value.item()
    if isinstance(value, (set, tuple)):
        return list(value)
    raise TypeError(f"Object of type {type(value).__name__} is not JSON serialisable")


def write_text_atomic(path: str | os.PathLike[str], text: str) -> None:
    """Write ``text`` to ``path`` through a temporary file and ``os.replace``."""
    path = Path(path)
    tmp = None
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
        os.fchmod(fd, 0o666 & ~_UMASK)  # mkstemp creates 0600; results are meant to be shared
        with os.fdopen(fd, "w", encoding="utf-8") as handle:
            handle.write(text)
        os.replace(tmp, path)
    except BaseException as err:
        if tmp is not None and os.path.exists(tmp):
            os.unlink(tmp)
        if isinstance(err, OSError):
            raise disk_error(err, path) from err
        raise


def write_json_atomic(path: str | os.PathLike[str], obj: Any) -> None:
    write_text_atomic(path, json.dumps(obj, indent=2, default=_json_default, sort_keys=False) + "\n")


def write_jsonl_atomic(path: str | os.PathLike[str], records: Iterable[Mapping[str, Any]]) -> None:
    write_text_atomic(path, "".join(json.dumps(r, default=_json_default) + "\n" for r in records))


def read_json(path: str | os.PathLike[str]) -> Any:
    """The JSON document at ``path``; :class:`CorruptRunFile` naming the path when it does not parse."""
    with open(path, encoding="utf-8") as handle:
        text = handle.read()
    try:
        return json.loads(text)
    except ValueError as err:  # JSONDecodeError, UnicodeDecodeError
        raise CorruptRunFile(
            f"{path} is damaged and cannot be read ({err}). It is written atomically, so it was changed from outside "
            f"(an edit, a copy cut short, a disk fault). Restore it from a copy, or delete {Path(path).parent} "
            "to run again from the start."
        ) from err


def read_jsonl(path: str | os.PathLike[str]) -> list[dict[str, Any]]:
    """The records of a JSON-lines file (none when it is missing); :class:`CorruptRunFile` naming the path and line."""
    path = Path(path)
    if not path.exists():
        return []
    out = []
    with open(path, encoding="utf-8") as handle:
        for number, line in enumerate(handle, 1):
            if not line.strip():
                continue
            try:
                out.append(json.loads(line))
            except ValueError as err:
                raise CorruptRunFile(
                    f"{path} line {number} is damaged ({err}). Restore the file from a copy, delete the line, or "
                    f"delete {path.parent} to run again from the start."
                ) from err
    return out


def now_iso() -> str:
    return _dt.datetime.now(_dt.timezone.utc).isoformat(timespec="seconds")


@functools.lru_cache(maxsize=1)
def git_info() -> dict[str, Any]:
    """SHA and dirty flag of the checkout this package runs from (``None`` outside a git checkout)."""
    root = Path(__file__).resolve().parents[2]
    try:
        sha = subprocess.run(
            ["git", "rev-parse", "HEAD"], cwd=root, capture_output=True, text=True, timeout=10, check=True
        ).stdout.strip()
        dirty = subprocess.run(
            ["git", "status", "--porcelain", "--untracked-files=no"],
            cwd=root,
            capture_output=True,
            text=True,
            timeout=10,
            check=True,
        ).stdout.strip()
        return {"sha": sha, "dirty": bool(dirty)}
    except (OSError, subprocess.SubprocessError):
        return {"sha": None, "dirty": None}


@functools.lru_cache(maxsize=1)
def package_versions() -> dict[str, str | None]:
    versions: dict[str, str | None] = {"python": sys.version.split()[0]}
    for name in TRACKED_PACKAGES:
        try:
            versions[name] = metadata.version(name)
        except metadata.PackageNotFoundError:
            versions[name] = None
    return versions


class RunDir:
    """Reads and writes one run directory (see the module docstring for the layout)."""

    def __init__(self, path: str | os.PathLike[str]) -> None:
        self.path = Path(path)

    # paths ---------------------------------------------------------------------------------------------------
    @property
    def run_file(self) -> Path:
        return self.path / RUN_FILE

    @property
    def metrics_file(self) -> Path:
        return self.path / METRICS_FILE

    @property
    def efficiency_file(self) -> Path:
        return self.path / EFFICIENCY_FILE

    def eval_dir(self, task: str) -> Path:
        return self.path / EVAL_DIR / task

    def checkpoint_dir(self, stage: str) -> Path:
        return self.path / CHECKPOINT_DIR / stage

    def last_checkpoint(self, stage: str) -> Path:
        return self.checkpoint_dir(stage) / "last.ckpt"

    def final_checkpoint(self, stage: str) -> Path:
        return self.checkpoint_dir(stage) / "final.ckpt"

    def previous_checkpoint(self, stage: str) -> Path:
        return self.checkpoint_dir(stage) / PREVIOUS_CHECKPOINT

    # run.json ------------------------------------------------------------------------------------------------
    def exists(self) -> bool:
        return self.run_file.exists()

    def read(self) -> dict[str, Any]:
        if not self.run_file.exists():
            raise FileNotFoundError(f"{self.path} is not a run directory: {RUN_FILE} is missing")
        return read_json(self.run_file)

    def status(self) -> str | None:
        return self.read().get("status") if self.exists() else None

    def update(self, **fields: Any) -> dict[str, Any]:
        """Merge ``fields`` into run.json (top-level keys replaced) and write it atomically."""
        record = self.read() if self.exists() else {}
        record.update(fields)
        record["updated"] = now_iso()
        write_json_atomic(self.run_file, record)
        return record

    # metrics.jsonl -------------------------------------------------------------------------------------------
    def read_metrics(self) -> list[dict[str, Any]]:
        return read_jsonl(self.metrics_file)

    def write_metrics(self, records: Iterable[Mapping[str, Any]]) -> None:
        write_jsonl_atomic(self.metrics_file, records)

    # eval ----------------------------------------------------------------------------------------------------
    def write_predictions(self, task: str, records: Iterable[Mapping[str, Any]]) -> Path:
        path = self.eval_dir(task) / "predictions.jsonl"
        write_jsonl_atomic(path, records)
        return path

    def clear_eval(self) -> None:
        """Remove every task's predictions and scores (before an evaluation with other settings)."""
        root = self.path / EVAL_DIR
        for path in sorted(root.glob("*/*"), reverse=True) if root.exists() else []:
            if path.is_file() and path.name in ("predictions.jsonl", "scores.json"):
                path.unlink()

    def read_predictions(self, task: str) -> list[dict[str, Any]]:
        return read_jsonl(self.eval_dir(task) / "predictions.jsonl")

    def write_scores(self, task: str, scores: Mapping[str, Any]) -> Path:
        path = self.eval_dir(task) / "scores.json"
        write_json_atomic(path, scores)
        return path

    def read_scores(self) -> dict[str, dict[str, Any]]:
        """Scores of every evaluated task, by task name."""
        root = self.path / EVAL_DIR
        if not root.exists():
            return {}
        return {p.parent.name: read_json(p) for p in sorted(root.glob("*/scores.json"))}

    # efficiency.json -----------------------------------------------------------------------------------------
    def write_efficiency(self, record: Mapping[str, Any]) -> None:
        write_json_atomic(self.efficiency_file, record)

    def read_efficiency(self) -> dict[str, Any]:
        return read_json(self.efficiency_file) if self.efficiency_file.exists() else {}
