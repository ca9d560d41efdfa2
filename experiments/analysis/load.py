"""Read run directories (the layout of :mod:`experiments.harness.rundir`) into pandas DataFrames.

The run directory is the source of truth; these readers never need the model or Lightning, so a sweep copied
off a cluster can be analysed on a laptop.
"""

from __future__ import annotations

import json
import os
from collections.abc import Iterable, Mapping
from pathlib import Path
from typing import Any

import pandas as pd

RUN_FILE = "run.json"

# efficiency.json headline fields copied into every row (the budget a fair comparison must report)
EFFICIENCY_FIELDS = (
    "visual_tokens_per_media",
    "lm_tokens_per_media",
    "trainable_params",
    "total_params",
    "flops_per_sample",
    "train_samples_per_s",
    "peak_memory_mb",
)
# scores.json reference levels a task may carry (chance, answer-from-a-random-image, text-only ceiling)
REFERENCE_FIELDS = ("chance", "random_image", "text_ceiling")


def _read_json(path: Path) -> Any:
    with open(path, encoding="utf-8") as handle:
        return json.load(handle)


def _flatten(tree: Mapping[str, Any], prefix: str = "") -> dict[str, Any]:
    out: dict[str, Any] = {}
    for key, value in tree.items():
        name = f"{prefix}{key}"
        if isinstance(value, Mapping):
            out.update(_flatten(value, f"{name}."))
        elif isinstance(value, (list, tuple)):
            out[name] = json.dumps(value)
        else:
            out[name] = value
    return out


def find_run_dirs(root: str | os.PathLike[str]) -> list[Path]:
    """Every directory under ``root`` (``root`` included) that holds a ``run.json``, sorted."""
    root = Path(root)
    if not root.exists():
        raise FileNotFoundError(f"No such runs directory: {root}")
    return sorted(p.parent for p in root.rglob(RUN_FILE))


def _bridge_name(config: Mapping[str, Any]) -> str | None:
    bridge = config.get("bridge")
    if isinstance(bridge, Mapping):
        return bridge.get("name")
    return bridge if isinstance(bridge, str) else None


def _run_rows(run_dir: Path, root: Path) -> list[dict[str, Any]]:
    record = _read_json(run_dir / RUN_FILE)
    config = record.get("config") or {}
    efficiency_path = run_dir / "efficiency.json"
    efficiency = _read_json(efficiency_path) if efficiency_path.exists() else {}
    base: dict[str, Any] = {
        "run": str(run_dir.relative_to(root)) if run_dir != root else run_dir.name,
        "run_dir": str(run_dir),
        "name": record.get("name"),
        "bridge": _bridge_name(config),
        "seed": record.get("seed", config.get("seed")),
        "status": record.get("status"),
        "error": record.get("error"),
        "duration_s": record.get("duration_s"),
        "git_sha": (record.get("git") or {}).get("sha"),
        "config_hash": record.get("config_hash"),
        "evaluated_from": record.get("evaluated_from"),  # set by bridgelab eval --out: a re-scoring, not a new run
    }
    base.update({field: efficiency.get(field) for field in EFFICIENCY_FIELDS})
    base.update({f"cfg.{k}": v for k, v in _flatten(config).items()})
    scores = sorted((run_dir / "eval").glob("*/scores.json")) if (run_dir / "eval").exists() else []
    if not scores:
        return [{**base, "task": None, "exact_match": None, "n": None, "metric": None, "score": None}]
    rows = []
    for path in scores:
        score = _read_json(path)
        row = {**base, "task": path.parent.name, "exact_match": score.get("exact_match"), "n": score.get("n"),
               "metric": score.get("metric", "exact_match"), "score": score.get("score", score.get("exact_match"))}
        row.update({field: score.get(field) for field in REFERENCE_FIELDS})
        rows.append(row)
    return rows


def load_runs(path: str | os.PathLike[str] | Iterable[str | os.PathLike[str]]) -> pd.DataFrame:
    """One row per (run, task) for every run directory under ``path`` (or under each path of a list).

    Columns: ``run, run_dir, name, bridge, seed, status, error, task, exact_match, n``, the task's ``metric`` and its
    headline ``score`` (``experiments.evaluation``; exact match for older runs), the task's reference
    levels (``chance, random_image, text_ceiling`` when the data source records them), the efficiency budget
    (``visual_tokens_per_media, trainable_params, total_params, flops_per_sample, train_samples_per_s,
    peak_memory_mb``) and every resolved config value flattened as ``cfg.<dotted.key>``. Failed and unfinished
    runs are kept (their ``status`` says so) so that nothing silently disappears from a table.
    """
    roots = [Path(path)] if isinstance(path, (str, os.PathLike)) else [Path(p) for p in path]
    rows: list[dict[str, Any]] = []
    for root in roots:
        for run_dir in find_run_dirs(root):
            rows.extend(_run_rows(run_dir, root))
    return pd.DataFrame(rows)


def load_metrics(run_dir: str | os.PathLike[str]) -> pd.DataFrame:
    """The training scalars of one run (``metrics.jsonl``) as a DataFrame, one row per logged step."""
    path = Path(run_dir) / "metrics.jsonl"
    if not path.exists():
        return pd.DataFrame()
    with open(path, encoding="utf-8") as handle:
        return pd.DataFrame([json.loads(line) for line in handle if line.strip()])
