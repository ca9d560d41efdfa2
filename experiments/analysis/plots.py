"""Plots people would rather look at than read: accuracy against the visual-token budget and throughput."""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any

import matplotlib

matplotlib.use(os.environ.get("MPLBACKEND", "Agg"))
import matplotlib.pyplot as plt  # noqa: E402
import pandas as pd  # noqa: E402

from experiments.analysis.load import load_metrics  # noqa: E402
from experiments.analysis.tables import summarize  # noqa: E402

LOG_AXES = ("visual_tokens_per_media", "lm_tokens_per_media", "flops_per_sample", "trainable_params")
AXES = {
    "visual_tokens_per_media": "visual tokens per media item",
    "lm_tokens_per_media": "LM-sequence tokens per media item",
    "train_samples_per_s": "training throughput (samples/s)",
    "trainable_params": "trainable parameters",
    "flops_per_sample": "FLOPs per sample",
}


def plot_tradeoffs(
    df: pd.DataFrame,
    out_dir: str | os.PathLike[str],
    x_columns: tuple[str, ...] = ("visual_tokens_per_media", "lm_tokens_per_media", "train_samples_per_s"),
    metric: str = "exact_match",
) -> list[Path]:
    """One figure per x column: a panel per task, one point per bridge (mean ± std over seeds).

    Returns the written PNG paths. Chance and text-only ceiling are drawn when the tasks record them.
    """
    table = summarize(df, metric=metric)  # one point per bridge and differing config (never pooled configs)
    extra = [k for k in table.attrs["group_keys"] if k not in ("bridge", "task")]
    table["label"] = [" ".join([str(r["bridge"]), *(f"{k}={r[k]}" for k in extra)]) for _, r in table.iterrows()]
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    tasks = sorted(table["task"].dropna().unique())
    labels = sorted(table["label"].unique())
    style = {b: (f"C{i % 10}", "osD^v<>ph*"[i % 10]) for i, b in enumerate(labels)}  # same look in every panel
    written = []
    for x in x_columns:
        if x not in table or table[x].isna().all():
            continue
        fig, axes = plt.subplots(1, len(tasks), figsize=(4.2 * len(tasks) + 1.6, 3.6), squeeze=False)
        for ax, task in zip(axes[0], tasks):
            rows = table[table["task"] == task]
            for _, row in rows.iterrows():
                colour, marker = style[row["label"]]
                std = row[f"{metric}_std"]
                ax.errorbar(row[x], row[f"{metric}_mean"], yerr=0 if pd.isna(std) else std, fmt=marker,
                            color=colour, capsize=3, label=row["label"])
            if x in LOG_AXES and rows[x].nunique() > 1:
                ax.set_xscale("log")
            _finish_panel(ax, rows, task, x, metric, level_labels=True)
        written.append(_save_with_legend(fig, axes, out / f"{metric}_vs_{x}.png"))
    return written


def plot_learning_curves(df: pd.DataFrame, out_path: str | os.PathLike[str], metric: str = "train/loss") -> Path:
    """Training loss over steps, one line per run, coloured by bridge."""
    fig, ax = plt.subplots(figsize=(6, 4))
    colours: dict[str, str] = {}
    for run_dir, bridge in df.drop_duplicates("run_dir")[["run_dir", "bridge"]].itertuples(index=False):
        metrics = load_metrics(run_dir)
        if metrics.empty or metric not in metrics:
            continue
        colour = colours.setdefault(bridge, f"C{len(colours) % 10}")
        steps = metrics["step"] if "step" in metrics else metrics.index
        ax.plot(steps, metrics[metric], color=colour, alpha=0.7,
                label=bridge if bridge not in ax.get_legend_handles_labels()[1] else None)
    ax.set_xlabel("step")
    ax.set_ylabel(metric)
    ax.legend(fontsize=7)
    ax.grid(alpha=0.3)
    fig.tight_layout()
    path = Path(out_path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=120)
    plt.close(fig)
    return path


def plot_gates(run_dir: str | os.PathLike[str], out_path: str | os.PathLike[str] | None = None) -> Path:
    """Flamingo's gate figure for one run: ``|tanh(alpha)|`` per gated layer over training, a panel per gate kind.

    Reads the ``gate/<kind>/layer<i>`` scalars that the harness's gate log wrote into ``metrics.jsonl`` (x axis: the
    run's global step, so later stages continue the curves). Deeper layers get darker lines. Writes
    ``<run_dir>/plots/gates.png`` unless ``out_path`` is given, and returns the path.

    Raises:
        ValueError: the run logged no gate values (its bridge has no tanh gates, e.g. ``gate=none``).
    """
    metrics = load_metrics(run_dir)
    columns = [c for c in metrics.columns if c.startswith("gate/")]
    if not columns:
        raise ValueError(
            f"{run_dir} has no gate/* values in metrics.jsonl: its bridge has no tanh gates (e.g. flamingo with "
            "gate=none, or a prefix bridge). Plot a run of a gated bridge (flamingo gate=scalar|vector)."
        )
    kinds = sorted({c.split("/")[1] for c in columns})
    steps = metrics["global_step"] if "global_step" in metrics else metrics.get("step", metrics.index)
    fig, axes = plt.subplots(1, len(kinds), figsize=(4.6 * len(kinds), 3.6), squeeze=False, sharey=True)
    for ax, kind in zip(axes[0], kinds):
        layers = sorted((c for c in columns if c.split("/")[1] == kind), key=lambda c: int(c.rsplit("layer", 1)[1]))
        cmap = plt.get_cmap("viridis")
        for j, column in enumerate(layers):
            rows = metrics[column].notna()
            ax.plot(steps[rows], metrics.loc[rows, column], color=cmap(1 - j / max(1, len(layers) - 1)),
                    label=column.rsplit("/", 1)[1])
        ax.set_title(f"{kind} gates")
        ax.set_xlabel("step")
        ax.grid(alpha=0.3)
        ax.legend(fontsize=7, ncol=2)
    axes[0][0].set_ylabel("|tanh(alpha)|")
    fig.tight_layout()
    path = Path(out_path) if out_path is not None else Path(run_dir) / "plots" / "gates.png"
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=120)
    plt.close(fig)
    return path


def plot_token_curves(df: pd.DataFrame, out_path: str | os.PathLike[str], metric: str = "exact_match",
                      x: str = "visual_tokens_per_media") -> Path | None:
    """Accuracy against the visual-token count, a panel per task and a line per bridge (mean ± std over seeds).

    Only bridges whose runs differ in ``x`` get a line; those with one count are drawn as single points for
    reference. Returns None when no bridge varies ``x`` (nothing to draw).
    """
    if x not in df or df.empty:
        return None
    table = summarize(df, metric=metric)
    counts = table.groupby("bridge")[x].nunique()
    if not (counts > 1).any():
        return None
    tasks = sorted(table["task"].dropna().unique())
    fig, axes = plt.subplots(1, len(tasks), figsize=(4.2 * len(tasks) + 1.6, 3.6), squeeze=False)
    for ax, task in zip(axes[0], tasks):
        rows = table[table["task"] == task]
        for i, (bridge, line) in enumerate(rows.sort_values(x).groupby("bridge", sort=True)):
            ax.errorbar(line[x], line[f"{metric}_mean"], yerr=line[f"{metric}_std"].fillna(0), capsize=3,
                        marker="osD^v<>ph*"[i % 10], color=f"C{i % 10}", label=bridge,
                        linestyle="-" if counts[bridge] > 1 else "none")
        ax.set_xscale("log", base=2)
        _finish_panel(ax, rows, task, x, metric, level_labels=False)
    return _save_with_legend(fig, axes, Path(out_path))


def _finish_panel(ax: Any, rows: pd.DataFrame, task: str, x: str, metric: str, level_labels: bool) -> None:
    """Chance and text-only ceiling as grey lines, title, axis labels, 0-1 range and grid of one task's panel."""
    for level, style in (("chance", ":"), ("text_ceiling", "--")):
        if level in rows and rows[level].notna().any():
            ax.axhline(rows[level].mean(), color="grey", linestyle=style, linewidth=1,
                       label=level if level_labels else None)
    ax.set_title(task)
    ax.set_xlabel(AXES.get(x, x))
    ax.set_ylabel(metric)
    ax.set_ylim(0, 1.05)
    ax.grid(alpha=0.3)


def _save_with_legend(fig: Any, axes: Any, path: Path) -> Path:
    """One legend right of the panels (from the last one), then the PNG at ``path``."""
    handles, labels = axes[0][-1].get_legend_handles_labels()
    fig.legend(handles, labels, loc="center right", fontsize=8, frameon=False)
    fig.subplots_adjust(right=1 - 1.5 / fig.get_figwidth(), bottom=0.16, wspace=0.3)
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=120)
    plt.close(fig)
    return path
