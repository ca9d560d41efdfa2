"""Collect a paper-ablation sweep into small committed files, and write REPRODUCTIONS.md from them.

    python -m experiments.analysis.repro collect runs/repro/<name> [--out results/repro]
    python -m experiments.analysis.repro report [--results results/repro] [--out REPRODUCTIONS.md]
    python -m experiments.analysis.repro notebook [--results results/repro]   # 04_reproductions.ipynb, executed

``collect`` reads the sweep with :func:`~experiments.analysis.load.load_runs` and writes ``<out>/<name>/``:

* ``scores.csv``: one row per run and task: the swept config keys (the keys of the sweep's ``hydra.sweeper.params``
  and any override whose value differs between members, seed excepted; the override's text as value), ``bridge``,
  ``seed``, ``status``, ``exact_match``, ``n``, the reference levels, the budget (``trainable_params``,
  ``flops_per_sample``, ``train_samples_per_s``, ``train_step_s`` = training seconds / optimiser steps over the
  stages, ...), what the runs trained (``stage_steps``, e.g. ``align 200``; ``lm_layers``, the world LM's depth)
  and the machine (``host``, ``accelerator``, ``torch``, ``started``, ``finished``, ``git_sha``);
* ``summary.csv``: mean, std and seed count per variant and task (finished runs only, via
  :func:`~experiments.analysis.tables.summarize`);
* ``gates.csv`` when runs logged ``gate/...`` scalars into ``metrics.jsonl`` (long format: one row per run, step
  and key, with the first integer of the key as ``layer``);
* ``collect.json``: the command, the time and the counts;
* ``summary.png`` (a bar per variant and task) and ``gates.png`` (the gate series), the figures REPRODUCTIONS.md
  shows.

``report`` is :func:`experiments.analysis.repro_report.write_report`, ``notebook``
:func:`experiments.analysis.repro_notebook.execute_notebook`.
"""

from __future__ import annotations

import argparse
import json
import re
import sys
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import pandas as pd
from omegaconf import OmegaConf

from experiments.analysis.figure_verdicts import paper_gates
from experiments.analysis.load import load_metrics, load_runs
from experiments.analysis.repro_plots import plot_gate_series, plot_variants
from experiments.analysis.tables import summarize

SCORE_COLUMNS = (
    "seed", "status", "task", "exact_match", "n", "chance", "random_image", "text_ceiling",
    "visual_tokens_per_media", "lm_tokens_per_media", "trainable_params", "total_params", "flops_per_sample",
    "train_samples_per_s", "train_step_s", "stage_steps", "lm_layers", "peak_memory_mb", "host", "accelerator",
    "torch", "started", "finished", "git_sha", "run",
)
RUN_FACTS = ("train_step_s", "stage_steps", "lm_layers", "host", "accelerator", "torch", "started", "finished")
"""The fields of ``SCORE_COLUMNS`` that come from a run's ``run.json`` rather than its scores (see ``_run_facts``)."""
NOT_SWEPT = {"seed", "run_dir", "launcher", "name", "experiment", "trainer.progress_bar", "hydra.run.dir",
             "hydra.sweep.dir"}


def normalise(value: Any) -> str:
    """An override's value as comparable text: no spaces, no quotes (``'["a", "b"]'`` -> ``[a,b]``), booleans in
    lower case (Hydra writes ``False`` into a run's overrides, YAML and the claims say ``false``)."""
    if isinstance(value, float) and value.is_integer():
        value = int(value)
    text = re.sub(r"[\s'\"]", "", str(value))
    return text.lower() if text in ("True", "False") else text


def _natural(value: Any) -> tuple[int, float, str]:
    """Sort key: numbers by value (8 before 16), then text."""
    try:
        return (0, float(value), "")
    except (TypeError, ValueError):
        return (1, 0.0, str(value))


def parse_overrides(items: Sequence[str]) -> dict[str, str]:
    """``["a.b=1", "+c=x"]`` -> ``{"a.b": "1", "c": "x"}`` (the last of a repeated key wins)."""
    out: dict[str, str] = {}
    for item in items:
        key, sep, value = item.partition("=")
        if sep:
            out[key.lstrip("+~")] = normalise(value)
    return out


def sweeper_keys(sweep_dir: Path) -> list[str]:
    """The keys of ``hydra.sweeper.params`` in the sweep's ``multirun.yaml`` (empty when it has none)."""
    path = sweep_dir / "multirun.yaml"
    if not path.exists():
        return []
    tree = OmegaConf.to_container(OmegaConf.load(path), resolve=False) or {}
    params = ((tree.get("hydra") or {}).get("sweeper") or {}).get("params") or {}
    return [str(k).lstrip("+~") for k in params]


def _world_lm_layers(config: dict[str, Any]) -> int | None:
    """The depth of the world LM a run used (None when its LM is not the world's)."""
    if (config.get("llm") or {}).get("world") is None:
        return None
    lm = (config.get("world") or {}).get("lm") or {}
    if "num_layers" in lm:
        return int(lm["num_layers"])
    from experiments.world.pretrain_lm import LMPretrainConfig  # torch and transformers, only when needed

    return LMPretrainConfig.num_layers


def _run_facts(run_dir: Path) -> dict[str, Any]:
    """A run's overrides and its ``RUN_FACTS``, read from its ``run.json``."""
    record = json.loads((run_dir / "run.json").read_text(encoding="utf-8"))
    stages = record.get("stages") or []
    seconds = sum((s.get("perf") or {}).get("train_time_s") or 0.0 for s in stages)
    steps = sum(s.get("max_steps") or 0 for s in stages)
    config = record.get("config") or {}
    return {
        "overrides": parse_overrides((record.get("tags") or {}).get("overrides") or []),
        "train_step_s": seconds / steps if seconds and steps else None,
        "stage_steps": " + ".join(f"{s.get('name')} {s.get('max_steps')}" for s in stages) or None,
        "lm_layers": _world_lm_layers(config),
        "host": record.get("machine") or record.get("host"),
        "accelerator": (config.get("trainer") or {}).get("accelerator"),
        "torch": (record.get("versions") or {}).get("torch"),
        "started": record.get("started"),
        "finished": record.get("finished"),
    }


def score_table(sweep_dir: str | Path) -> tuple[pd.DataFrame, list[str]]:
    """The per-run, per-task rows of ``scores.csv`` (plus ``run_dir``, not written) and the swept keys."""
    sweep_dir = Path(sweep_dir)
    df = load_runs(sweep_dir)
    if df.empty:
        raise ValueError(f"{sweep_dir} holds no run (no run.json below it); run the sweep first.")
    facts = {run_dir: _run_facts(Path(run_dir)) for run_dir in df["run_dir"].unique()}
    overrides = {run_dir: f["overrides"] for run_dir, f in facts.items()}
    keys = list(dict.fromkeys(sweeper_keys(sweep_dir)))
    all_keys = {k for o in overrides.values() for k in o}
    keys += sorted(k for k in all_keys if k not in keys and len({o.get(k) for o in overrides.values()}) > 1)
    keys = [k for k in keys if k not in NOT_SWEPT and not k.startswith("hydra.")]
    if "bridge" not in keys:
        keys.insert(0, "bridge")
    out = pd.DataFrame(index=df.index)
    for key in keys:
        fallback = df["bridge"] if key == "bridge" else df.get(f"cfg.{key}", pd.Series(None, index=df.index))
        out[key] = [overrides[r].get(key, normalise(f) if pd.notna(f) else None)
                    for r, f in zip(df["run_dir"], fallback)]
    for field in RUN_FACTS:
        df[field] = df["run_dir"].map(lambda r, field=field: facts[r][field])
    for column in (*SCORE_COLUMNS, "run_dir"):
        out[column] = df[column] if column in df else None
    order = sorted(range(len(out)), key=lambda i: tuple(_natural(out[k].iloc[i]) for k in (*keys, "seed", "task")))
    return out.iloc[order].reset_index(drop=True), keys


def summary_table(scores: pd.DataFrame, keys: Sequence[str]) -> pd.DataFrame:
    """Mean, std and finished-seed count per variant (the swept keys) and task; empty when nothing finished."""
    finished = scores[(scores["status"] == "finished") & scores["exact_match"].notna()]
    if finished.empty:
        return pd.DataFrame(columns=[*keys, "task", "exact_match_mean", "exact_match_std", "seeds"])
    by = [*keys, "task"]
    table = summarize(finished, by=by)
    extra = finished.groupby(by, dropna=False)[["n", "train_step_s"]].mean().reset_index()
    table = table.merge(extra, on=by, how="left")
    order = sorted(range(len(table)), key=lambda i: tuple(_natural(table[k].iloc[i]) for k in by))
    return table.iloc[order].reset_index(drop=True)


def gate_table(scores: pd.DataFrame, keys: Sequence[str]) -> pd.DataFrame:
    """The ``gate/...`` series of every run's ``metrics.jsonl`` in long format (empty when none logged any)."""
    frames = []
    runs = scores.drop_duplicates("run")
    for _, row in runs.iterrows():
        metrics = load_metrics(row["run_dir"])
        gate_columns = [c for c in metrics.columns if str(c).startswith("gate/")]
        if not gate_columns:
            continue
        ids = [c for c in ("stage", "step", "global_step") if c in metrics]
        long = metrics[ids + gate_columns].melt(id_vars=ids, var_name="key", value_name="value")
        long = long.dropna(subset=["value"])
        for key in (*keys, "seed", "run"):
            long[key] = row[key]
        long["layer"] = long["key"].map(lambda k: int(m.group()) if (m := re.search(r"\d+", k)) else None)
        frames.append(long)
    if not frames:
        return pd.DataFrame()
    table = pd.concat(frames, ignore_index=True)
    front = [*keys, "seed", "run", "key", "layer"]
    return table[front + [c for c in table.columns if c not in front]]


def collect(sweep_dir: str | Path, out_root: str | Path = "results/repro") -> Path:
    """Write ``scores.csv``, ``summary.csv``, ``collect.json`` (and ``gates.csv``) for one sweep; returns the folder."""
    sweep_dir = Path(sweep_dir)
    scores_with_dirs, keys = score_table(sweep_dir)
    scores = scores_with_dirs.drop(columns=["run_dir"])
    out = Path(out_root) / sweep_dir.name
    out.mkdir(parents=True, exist_ok=True)
    scores.to_csv(out / "scores.csv", index=False)
    summary = summary_table(scores, keys)
    summary.to_csv(out / "summary.csv", index=False)
    gates = gate_table(scores_with_dirs, keys)
    for name in ("gates.csv", "gates.png", "summary.png"):
        (out / name).unlink(missing_ok=True)  # nothing stale from an earlier collect
    if not summary.empty:
        plot_variants(summary, out / "summary.png", title=sweep_dir.name)
    if not gates.empty:
        gates.to_csv(out / "gates.csv", index=False)
        plot_gate_series(paper_gates(gates), out / "gates.png")
    runs = scores.drop_duplicates("run")
    meta = {
        "experiment": sweep_dir.name,
        "command": f"python -m experiments.analysis.repro collect {sweep_dir} --out {out_root}",
        "sweep_command": f"bridgelab sweep experiment=repro/{sweep_dir.name}",
        "collected": pd.Timestamp.now(tz="UTC").isoformat(timespec="seconds"),
        "swept_keys": keys,
        "runs": int(len(runs)),
        "finished": int((runs["status"] == "finished").sum()),
        "status": {str(k): int(v) for k, v in runs["status"].fillna("unknown").value_counts().items()},
        "gates": bool(not gates.empty),
    }
    (out / "collect.json").write_text(json.dumps(meta, indent=1) + "\n", encoding="utf-8")
    return out


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m experiments.analysis.repro", description=__doc__.split("\n\n")[0])
    sub = parser.add_subparsers(dest="command", required=True)
    c = sub.add_parser("collect", help="a finished (or running) sweep -> results/repro/<name>/*.csv")
    c.add_argument("sweep_dir")
    c.add_argument("--out", default="results/repro", help="results root (default results/repro)")
    r = sub.add_parser("report", help="results/repro/*/ + the claims registry -> REPRODUCTIONS.md")
    r.add_argument("--results", default="results/repro")
    r.add_argument("--out", default="REPRODUCTIONS.md")
    n = sub.add_parser("notebook", help="execute notebooks/04_reproductions.ipynb on the results, save it executed")
    n.add_argument("--results", default="results/repro")
    n.add_argument("--notebook", default="notebooks/04_reproductions.ipynb")
    n.add_argument("--out", default=None, help="where the executed notebook goes (default: in place)")
    n.add_argument("--figures", default=None, help="the notebook's OUT_DIR for its figures (default: a temp folder)")
    args = parser.parse_args(list(sys.argv[1:] if argv is None else argv))
    try:
        if args.command == "collect":
            out = collect(args.sweep_dir, args.out)
            meta = json.loads((out / "collect.json").read_text(encoding="utf-8"))
            print(f"{out}: {meta['runs']} run(s), {meta['finished']} finished; swept {', '.join(meta['swept_keys'])}")
        elif args.command == "report":
            from experiments.analysis.repro_report import write_report

            print(f"wrote {write_report(args.results, args.out)}")
        else:
            from experiments.analysis.repro_notebook import execute_notebook

            print(f"wrote {execute_notebook(args.results, args.notebook, args.out, args.figures)} (executed)")
    except (FileNotFoundError, ValueError) as err:
        print(f"repro {args.command}: {err}", file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
