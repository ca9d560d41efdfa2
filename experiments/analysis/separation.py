"""Does a comparison separate its bridges? Per task: the spread of the bridges' mean scores against the seed noise.

The demo's acceptance rule (issue 10): a task *separates* the bridges when the spread between the best and the worst
bridge mean exceeds ``factor`` (3) times the largest seed standard deviation of any bridge on that task, and every
bridge is above chance. Bridges whose means differ by less than the largest std are "within noise" of each other.
"""

from __future__ import annotations

import pandas as pd

from experiments.analysis.tables import summarize


def _value(v: object) -> object:
    """16.0 -> 16 (a column with gaps is float in pandas), anything else unchanged."""
    return int(v) if isinstance(v, float) and v.is_integer() else v


def separation(df: pd.DataFrame, metric: str = "exact_match", factor: float = 3.0) -> pd.DataFrame:
    """One row per task: ``best``, ``worst``, ``spread``, ``max_std``, ``separates``, ``all_above_chance``, ``n``.

    ``df`` is :func:`experiments.analysis.load_runs` output (finished runs; one row per run and task); the means and
    stds are over seeds per bridge and config (:func:`summarize`: a sweep over a bridge setting gives one entry per
    value, named ``bridge key=value``). ``n`` is the smallest number of seeds behind a mean.
    """
    table = summarize(df, metric=metric)
    variants = [k for k in table.attrs["group_keys"] if k not in ("bridge", "task")]
    table["bridge"] = [" ".join([str(r["bridge"]), *(f"{k}={_value(r[k])}" for k in variants if not pd.isna(r[k]))])
                       for _, r in table.iterrows()]
    rows = []
    for task, group in table.groupby("task", sort=True):
        mean, std = group[f"{metric}_mean"], group[f"{metric}_std"].fillna(0.0)
        chance = group["chance"].max() if "chance" in group else float("nan")
        spread, max_std = float(mean.max() - mean.min()), float(std.max())
        rows.append({
            "task": task,
            "best": group.loc[mean.idxmax(), "bridge"],
            "worst": group.loc[mean.idxmin(), "bridge"],
            "spread": spread,
            "max_std": max_std,
            "separates": bool(spread > factor * max_std),
            "all_above_chance": bool((mean > chance).all()) if chance == chance else None,
            "n": int(group["seeds"].min()),
        })
    return pd.DataFrame(rows)


def separation_markdown(sep: pd.DataFrame, factor: float = 3.0) -> str:
    """The separation table as markdown, with the rule in its caption."""
    lines = [
        f"Separation (spread of bridge means > {factor:g} x the largest seed std; n = fewest seeds behind a mean):",
        "",
        "| task | best | worst | spread | largest std | separates | every bridge above chance | n |",
        "|---|---|---|---|---|---|---|---|",
    ]
    for r in sep.itertuples():
        lines.append(
            f"| {r.task} | {r.best} | {r.worst} | {r.spread:.3f} | {r.max_std:.3f} | {'yes' if r.separates else 'no'} "
            f"| {'yes' if r.all_above_chance else 'no'} | {r.n} |"
        )
    return "\n".join(lines)
