"""A finished sweep's files for readers: ``table.md``, ``scores.csv`` and plots, written beside its runs or elsewhere.

``bridgelab demo`` writes them for the demo; ``bridgelab report RUNS_DIR [--out DIR]`` for any sweep (the study's
``matched_params`` and ``token_sweep`` among them). ``table.md`` holds the mean ± std table with its budget columns
(``summarize``: configs that differ are never pooled) and the separation table; ``scores.csv`` one row per run and
task; ``plots/`` accuracy against each budget column, the learning curves and, when the sweep varies the visual
token count of a bridge, accuracy against that count with one line per bridge.
"""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path

import pandas as pd

from experiments.analysis.load import load_runs
from experiments.analysis.plots import plot_learning_curves, plot_token_curves, plot_tradeoffs
from experiments.analysis.separation import separation, separation_markdown
from experiments.analysis.tables import summarize, to_latex, to_markdown

SCORE_COLUMNS = ("bridge", "task", "seed", "exact_match", "n", "chance", "random_image", "text_ceiling", "status")
DEMO_PLOTS = ("visual_tokens_per_media", "lm_tokens_per_media", "train_samples_per_s")
STUDY_PLOTS = (*DEMO_PLOTS, "flops_per_sample", "trainable_params")
STUDY_SCORE_COLUMNS = (*SCORE_COLUMNS, "visual_tokens_per_media", "trainable_params", "flops_per_sample")


def results_table(runs_dir: str | Path, fmt: str = "markdown") -> str:
    """Mean ± std over seeds per bridge, task and differing config key, with the budget columns.

    Raises:
        ValueError: no run under ``runs_dir`` has finished (the message lists the others and their errors).
    """
    return _table_text(load_runs(runs_dir), runs_dir, fmt)


def _table_text(df: pd.DataFrame, runs_dir: str | Path, fmt: str) -> str:
    if df.empty:
        raise ValueError(f"{runs_dir} holds no run directory (no run.json below it).")
    unfinished = df[df["status"] != "finished"].drop_duplicates("run_dir")
    report = f"{len(unfinished)} run(s) not finished: " + ", ".join(
        f"{r.run} ({r.status}{': ' + str(r.error) if isinstance(r.error, str) and r.error else ''})"
        for r in unfinished.itertuples()
    )
    if not (df["status"] == "finished").any():
        raise ValueError(f"no finished run under {runs_dir} to tabulate. {report}")
    table = summarize(df)
    text = to_markdown(table) if fmt == "markdown" else to_latex(table)
    return text + (f"\n\n{report}" if len(unfinished) else "")


def write_sweep_report(runs_dir: str | Path, out_dir: str | Path | None = None,
                       plot_columns: Sequence[str] = DEMO_PLOTS,
                       score_columns: Sequence[str] = SCORE_COLUMNS) -> list[Path]:
    """Print the tables and write ``table.md``, ``scores.csv`` and ``plots/`` under ``out_dir`` (default: the
    sweep's own directory). Returns the written paths."""
    out = Path(out_dir if out_dir is not None else runs_dir)
    out.mkdir(parents=True, exist_ok=True)
    df = load_runs(runs_dir)
    table = _table_text(df, runs_dir, "markdown")
    print(table)
    finished = df[df["status"] == "finished"]
    separated = separation_markdown(separation(finished)) if not finished.empty else ""
    print(separated)
    (out / "table.md").write_text(table + "\n\n" + separated + "\n")
    columns = [c for c in score_columns if c in df]
    order = [c for c in ("bridge", "visual_tokens_per_media", "task", "seed") if c in columns]
    df[df["task"].notna()][columns].sort_values(order).to_csv(out / "scores.csv", index=False)
    written = [out / "table.md", out / "scores.csv"]
    print(f"wrote {written[0]} and {written[1]} (one row per run and task)")
    plots = out / "plots"
    written += plot_tradeoffs(df, plots, tuple(plot_columns))
    written.append(plot_learning_curves(df, plots / "learning_curves.png"))
    token_curve = plot_token_curves(finished, plots / "exact_match_vs_token_count.png")
    written += [token_curve] if token_curve is not None else []
    for path in written[2:]:
        print(f"wrote {path}")
    return written
