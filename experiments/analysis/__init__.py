"""Analysis of run directories: one pandas DataFrame per sweep, fairness-aware tables, and plots.

Typical use in a notebook::

    from experiments.analysis import load_runs, summarize, to_markdown, plot_tradeoffs
    df = load_runs("runs/quick_ablation")
    table = summarize(df)                 # mean ± std over seeds, by bridge and task, with budget columns
    print(to_markdown(table))
    plot_tradeoffs(df, "plots/")          # accuracy against visual tokens and throughput
"""

from experiments.analysis.load import load_metrics, load_runs
from experiments.analysis.plots import plot_learning_curves, plot_tradeoffs
from experiments.analysis.tables import BUDGET_COLUMNS, summarize, to_latex, to_markdown

__all__ = [
    "BUDGET_COLUMNS",
    "load_metrics",
    "load_runs",
    "plot_learning_curves",
    "plot_tradeoffs",
    "summarize",
    "to_latex",
    "to_markdown",
]
