"""Figures of the paper ablations, drawn from the committed results (results/repro/<experiment>/*.csv).

* :func:`plot_variants`: one panel per task, a bar per variant (mean ± std over seeds), chance and text-only ceiling;
* :func:`plot_gate_series`: Flamingo's gate figure, ``|tanh alpha|`` per gate over training steps (mean over seeds);
* the distractor curve is :func:`experiments.analysis.distractor_curve.plot_curve`.
"""

from __future__ import annotations

import os
from pathlib import Path

import matplotlib

matplotlib.use(os.environ.get("MPLBACKEND", "Agg"))
import matplotlib.pyplot as plt  # noqa: E402
import pandas as pd  # noqa: E402


def variant_labels(summary: pd.DataFrame) -> pd.Series:
    """``key=value`` of the swept keys that differ between rows (all of them when none differs)."""
    keys = list(summary.columns[: list(summary.columns).index("task")])
    varying = [k for k in keys if summary[k].astype(str).nunique() > 1] or keys
    short = {k: k.rsplit(".", 1)[-1] for k in varying}  # bridge.projector -> projector
    return summary[varying].astype(str).apply(lambda r: " ".join(f"{short[k]}={v}" for k, v in r.items()), axis=1)


def plot_variants(summary: pd.DataFrame, path: str | Path, title: str = "") -> Path:
    """Bars of ``exact_match_mean`` ± ``exact_match_std`` per variant, one panel per task."""
    if summary.empty:
        raise ValueError("plot_variants: the summary is empty (no finished run)")
    table = summary.assign(label=variant_labels(summary))
    tasks = sorted(table["task"].unique())
    labels = list(dict.fromkeys(table["label"]))
    fig, axes = plt.subplots(1, len(tasks), figsize=(1.2 + 0.9 * len(labels) * len(tasks) + 1.5, 4.2), squeeze=False)
    for ax, task in zip(axes[0], tasks):
        rows = table[table["task"] == task].set_index("label").reindex(labels)
        means = rows["exact_match_mean"].astype(float)
        stds = rows["exact_match_std"].astype(float).fillna(0)
        colours = [f"C{i % 10}" for i in range(len(labels))]
        ax.bar(range(len(labels)), means.fillna(0), yerr=stds, capsize=3, color=colours)
        for level, style in (("chance", ":"), ("text_ceiling", "--")):
            if level in rows and rows[level].notna().any():
                ax.axhline(float(rows[level].astype(float).mean()), color="grey", linestyle=style, linewidth=1,
                           label=level)
        ax.set_xticks(range(len(labels)), labels, rotation=30, ha="right", fontsize=7)
        ax.set_ylim(0, 1.05)
        ax.set_title(task, fontsize=9)
        ax.set_ylabel("exact match")
        ax.grid(axis="y", alpha=0.3)
    if title:
        fig.suptitle(title, fontsize=10)
    fig.tight_layout()
    return _save(fig, path)


def plot_gate_series(gates: pd.DataFrame, path: str | Path) -> Path:
    """``|tanh alpha|`` of each gate key over training steps, mean over seeds (a line per key)."""
    if gates.empty:
        raise ValueError("plot_gate_series: no gate series")
    step = "global_step" if "global_step" in gates else "step"
    data = gates.assign(value=gates["value"].astype(float).abs())
    fig, ax = plt.subplots(figsize=(6.4, 4.0))
    order = data.drop_duplicates("key").sort_values(["layer", "key"], na_position="last")["key"]
    for i, key in enumerate(order):
        series = data[data["key"] == key].groupby(step)["value"].mean()
        ax.plot(series.index, series.values, color=f"C{i % 10}", label=str(key))
    ax.set_xlabel("training step")
    ax.set_ylabel("|tanh alpha|")
    ax.grid(alpha=0.3)
    ax.legend(fontsize=7, frameon=False)
    ax.set_title("Flamingo gates over training (mean over seeds)", fontsize=9)
    fig.tight_layout()
    return _save(fig, path)


def _save(fig: plt.Figure, path: str | Path) -> Path:
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=110)
    plt.close(fig)
    return path
