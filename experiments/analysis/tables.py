"""Tables a reviewer can trust: mean ± std over seeds, by bridge and task, with the budget beside the score."""

from __future__ import annotations

import fnmatch
import math
import warnings
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


# Config keys that never separate rows: the seed (what a row averages over), labels and bookkeeping that do not
# change results (the harness's NON_SEMANTIC_KEYS, repeated here so that analysis never imports the harness; a test
# keeps the two in step), and by_bridge (its effect is already in the merged sections).
IGNORED_CONFIG_PREFIXES = (
    "seed", "name", "run_dir", "resume", "resume_from_corrupt", "tags", "by_bridge", "trainer.loggers",
    "trainer.progress_bar", "train.num_workers", "train.checkpoint_every_n_steps", "train.log_every_n_steps",
    "plugins",
)


# Options added after runs were made (the harness's HASH_NEUTRAL_DEFAULTS, repeated; a test keeps them in step): a run
# recorded before an option existed has no value for it and did what its default does, so it never separates rows.
# (An empty ``objective_options`` mapping leaves no column at all, so only the scalar options need a default here.)
NEUTRAL_DEFAULTS = (
    ("bridge.resampler", "perceiver"),
    ("stages.*.objective", "lm"),
    ("world.shipped", True),
    ("data.options.spatial_ask_by", "colour_shape"),
    ("data.options.spatial_question_first", False),
    ("bridge.downsample", "bilinear"),
)


def with_neutral_defaults(df: pd.DataFrame) -> pd.DataFrame:
    """``df`` with each :data:`NEUTRAL_DEFAULTS` config column's missing values set to that default."""
    out = df.copy()
    for column in df.columns:
        default = next((d for k, d in NEUTRAL_DEFAULTS if fnmatch.fnmatchcase(column, f"cfg.{k}")), None)
        if default is not None:
            out[column] = out[column].fillna(default)
    return out


def varying_config_keys(df: pd.DataFrame, within: Sequence[str] = ("bridge", "task")) -> list[str]:
    """The ``cfg.<key>`` columns whose value differs between rows of one ``within`` group (seed excepted): the
    swept or otherwise differing settings that a table must keep apart rather than average over."""
    columns = [c for c in df.columns if c.startswith("cfg.") and not _ignored(c[len("cfg."):])]
    if df.empty or not columns:
        return []
    keys = [k for k in within if k in df]
    # Unset values (a swept `null`) must count as a value of their own: pandas >= 3 keeps NaN through astype(str),
    # and nunique() would then not see `null` vs `4` as different.
    filled = with_neutral_defaults(df[columns]).map(lambda v: UNSET if _is_missing(v) else str(v))
    if keys:
        counts = filled.groupby([df[k].astype(str) for k in keys]).nunique()
        varying = counts.columns[(counts > 1).any()]
    else:
        varying = filled.columns[filled.nunique() > 1]
    return [c for c in columns if c in set(varying)]


UNSET = "<unset>"


def _is_missing(value: object) -> bool:
    return value is None or (isinstance(value, float) and math.isnan(value))


def _ignored(key: str) -> bool:
    return any(key == p or key.startswith(p + ".") for p in IGNORED_CONFIG_PREFIXES)


def summarize(
    df: pd.DataFrame,
    by: Sequence[str] | None = None,
    metric: str = "exact_match",
    only_finished: bool = True,
    pool: bool = False,
) -> pd.DataFrame:
    """Aggregate over seeds: ``<metric>_mean``, ``<metric>_std``, ``seeds``, and the mean budget columns.

    ``by=None`` groups by bridge, task and every config key that differs between runs of one bridge (a sweep over
    ``bridge.num_latents=4,8`` gives one row per value, with a ``bridge.num_latents`` column), so only seeds are
    ever averaged. An explicit ``by`` that would average runs of different configs raises a ``ValueError`` naming
    the keys; ``pool=True`` averages them anyway, with a warning.

    Rows whose budget differs a lot between bridges are exactly what a fairness question is about, so the
    budget stays next to the score instead of in another table.
    """
    if df.empty:
        raise ValueError("No runs to summarise: the DataFrame is empty (check the path given to load_runs).")
    data = df[df["status"] == "finished"] if only_finished and "status" in df else df
    data = with_neutral_defaults(data.dropna(subset=[metric]))
    if data.empty:
        raise ValueError(f"No finished run has a '{metric}' score yet.")
    if by is None:
        keys = ["bridge", "task"]
        varying = varying_config_keys(data, keys)
        data = data.rename(columns={c: c[len("cfg."):] for c in varying})
        keys += [c[len("cfg."):] for c in varying]
    else:
        keys = list(by)
        mixed = [c[len("cfg."):] for c in varying_config_keys(data, keys) if c[len("cfg."):] not in keys]
        if mixed and not pool:
            raise ValueError(
                f"summarize(by={keys}) would average runs with different configs (they differ at: "
                f"{', '.join(mixed[:8])}). Fix: leave by=None (groups by every differing key), add these keys to by "
                "(as 'cfg.<key>'), or pass pool=True to average them anyway."
            )
        if mixed:
            warnings.warn(f"summarize: pooling runs that differ at {', '.join(mixed[:8])} (pool=True)", stacklevel=2)
    grouped = data.groupby(keys, dropna=False)
    out = grouped[metric].agg(["mean", "std", "count"]).rename(
        columns={"mean": f"{metric}_mean", "std": f"{metric}_std", "count": "seeds"}
    )
    extra = [c for c in (*REFERENCE_COLUMNS, *BUDGET_COLUMNS) if c in data and data[c].notna().any()]
    if extra:
        out = out.join(grouped[extra].mean(numeric_only=True))
    out = out.reset_index()
    out.attrs["group_keys"] = keys
    return out


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
    keys = table.attrs.get("group_keys", ["bridge", "task"])
    shown.insert(len([c for c in shown.columns if c in keys]), metric,
                 [f"{m:.3f} ± {0.0 if pd.isna(s) else s:.3f}" for m, s in zip(mean, std)])
    for column in ("trainable_params", "flops_per_sample"):
        if column in shown:
            shown[column] = shown[column].map(_fmt_int)
    for column in ("train_samples_per_s", "peak_memory_mb", *REFERENCE_COLUMNS):
        if column in shown:
            shown[column] = shown[column].map(lambda v: "–" if pd.isna(v) else f"{v:.3g}")
    for column in keys:  # a swept null shows as `null`, as it was written on the command line
        if column in shown:
            shown[column] = shown[column].map(lambda v: "null" if _is_missing(v) else v)
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
