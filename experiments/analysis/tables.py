"""Tables a reviewer can trust: mean ± std over seeds, by bridge and task, with the budget beside the score."""

from __future__ import annotations

from collections.abc import Sequence

import pandas as pd

BUDGET_COLUMNS = (
    "visual_tokens_per_media",
    "lm_tokens_per_media",
    "trainable_params",
    "flops_per_sample",
    "train_samples_per_s",
    "peak_memory_mb",
)
REFERENCE_COLUMNS = ("chance", "random_image", "text_ceiling")


def summarize(
    df: pd.DataFrame,
    by: Sequence[str] = ("bridge", "task"),
    metric: str = "exact_match",
    only_finished: bool = True,
) -> pd.DataFrame:
    """Aggregate over seeds: ``<metric>_mean``, ``<metric>_std``, ``seeds``, and the mean budget columns.

    Rows whose budget differs a lot between bridges are exactly what a fairness question is about, so the
    budget stays next to the score instead of in another table.
    """
    if df.empty:
        raise ValueError("No runs to summarise: the DataFrame is empty (check the path given to load_runs).")
    data = df[df["status"] == "finished"] if only_finished and "status" in df else df
    data = data.dropna(subset=[metric])
    if data.empty:
        raise ValueError(f"No finished run has a '{metric}' score yet.")
    grouped = data.groupby(list(by), dropna=False)
    out = grouped[metric].agg(["mean", "std", "count"]).rename(
        columns={"mean": f"{metric}_mean", "std": f"{metric}_std", "count": "seeds"}
    )
    extra = [c for c in (*REFERENCE_COLUMNS, *BUDGET_COLUMNS) if c in data and data[c].notna().any()]
    if extra:
        out = out.join(grouped[extra].mean(numeric_only=True))
    return out.reset_index()


def _fmt_int(value: float) -> str:
    if pd.isna(value):
        return "–"
    for unit, scale in (("G", 1e9), ("M", 1e6), ("k", 1e3)):
        if abs(value) >= scale:
            return f"{value / scale:.2f}{unit}"
    return f"{value:.0f}"


def _display(table: pd.DataFrame, metric: str) -> pd.DataFrame:
    shown = table.copy()
    mean, std = shown.pop(f"{metric}_mean"), shown.pop(f"{metric}_std")
    shown.insert(len([c for c in shown.columns if c in ("bridge", "task")]), metric,
                 [f"{m:.3f} ± {0.0 if pd.isna(s) else s:.3f}" for m, s in zip(mean, std)])
    for column in ("trainable_params", "flops_per_sample"):
        if column in shown:
            shown[column] = shown[column].map(_fmt_int)
    for column in ("train_samples_per_s", "peak_memory_mb", *REFERENCE_COLUMNS):
        if column in shown:
            shown[column] = shown[column].map(lambda v: "–" if pd.isna(v) else f"{v:.3g}")
    return shown


def to_markdown(table: pd.DataFrame, metric: str = "exact_match") -> str:
    """A GitHub-flavoured markdown table of :func:`summarize` output (no extra dependency)."""
    shown = _display(table, metric).astype(str)
    header = "| " + " | ".join(shown.columns) + " |"
    rule = "|" + "|".join("---" for _ in shown.columns) + "|"
    body = ["| " + " | ".join(row) + " |" for row in shown.itertuples(index=False)]
    return "\n".join([header, rule, *body])


def to_latex(table: pd.DataFrame, metric: str = "exact_match") -> str:
    """A booktabs LaTeX tabular of :func:`summarize` output."""
    shown = _display(table, metric).astype(str)
    escape = lambda s: s.replace("_", r"\_").replace("±", r"$\pm$").replace("%", r"\%")  # noqa: E731
    lines = [r"\begin{tabular}{" + "l" * len(shown.columns) + "}", r"\toprule"]
    lines.append(" & ".join(escape(c) for c in shown.columns) + r" \\")
    lines.append(r"\midrule")
    lines += [" & ".join(escape(v) for v in row) + r" \\" for row in shown.itertuples(index=False)]
    lines += [r"\bottomrule", r"\end{tabular}"]
    return "\n".join(lines)
