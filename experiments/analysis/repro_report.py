"""REPRODUCTIONS.md from the committed results (results/repro/<experiment>/*.csv) and the claims registry.

Nothing here reads a run directory: the report is rebuilt from the small files that
``python -m experiments.analysis.repro collect`` and ``python -m experiments.analysis.distractor_curve`` write, so
it renders anywhere. Items whose results are missing are listed as "not run", never filled in.
"""

from __future__ import annotations

import json
import math
from dataclasses import dataclass
from pathlib import Path

import pandas as pd

from experiments.analysis.claims import CLAIMS, Claim, Variant, claims_by_paper
from experiments.analysis.repro import normalise
from experiments.analysis.verdict import MIN_SEEDS, RULE, Arm, judge
from experiments.analysis.figure_verdicts import CURVE_COMMAND, DEFAULT_NS, curve_verdict, gate_verdict


@dataclass(frozen=True)
class Outcome:
    """One claim on one task: the verdict (or why there is none) and the two arms' cells."""

    claim: Claim
    task: str
    verdict: str  # holds | contradicted | within noise | not run
    status: str  # done | partial | not run
    detail: str


def read_experiment(results: Path, experiment: str) -> tuple[pd.DataFrame | None, pd.DataFrame | None]:
    """``(summary, scores)`` of one experiment, ``None`` where the file is missing."""
    folder = results / experiment
    # keep_default_na=False: a swept `null` (bridge.max_num_frames=null,4) is a variant's value, not a missing cell
    read = dict(dtype=str, keep_default_na=False, na_values=[""])
    summary = pd.read_csv(folder / "summary.csv", **read) if (folder / "summary.csv").exists() else None
    scores = pd.read_csv(folder / "scores.csv", **read) if (folder / "scores.csv").exists() else None
    return summary, scores


def select(summary: pd.DataFrame, variant: Variant, task: str) -> pd.DataFrame | str:
    """The summary rows of ``variant`` on ``task``, or a sentence saying why there are none."""
    missing = [k for k in variant.where if k not in summary.columns]
    if missing:
        return f"no column {', '.join(missing)} in summary.csv (swept: {', '.join(_swept(summary))})"
    rows = summary[summary["task"] == task]
    for key, value in variant.where.items():
        rows = rows[rows[key].map(normalise) == normalise(value)]
    return rows


def _swept(summary: pd.DataFrame) -> list[str]:
    return list(summary.columns[: list(summary.columns).index("task")]) if "task" in summary else []


def _arm(row: pd.Series) -> Arm:
    std = float(row["exact_match_std"]) if pd.notna(row.get("exact_match_std")) else math.nan
    n_eval = float(row["n"]) if pd.notna(row.get("n")) else math.nan
    return Arm(float(row["exact_match_mean"]), std, int(float(row["seeds"])), n_eval)


def cell(arm: Arm) -> str:
    std = "–" if math.isnan(arm.std) else f"{arm.std:.3f}"
    return f"{arm.mean:.3f} ± {std} (n={arm.seeds})"


def judge_claim(claim: Claim, summary: pd.DataFrame | None) -> list[Outcome]:
    """One :class:`Outcome` per judged task of a ``compare`` claim."""
    out = []
    for task in claim.tasks:
        if summary is None:
            out.append(Outcome(claim, task, "not run", "not run", f"results/repro/{claim.experiment}/ is missing"))
            continue
        picked = [select(summary, v, task) for v in (claim.expected, claim.baseline)]
        problem = next((p for p in picked if isinstance(p, str)), None)
        if problem is None:
            empty = [v.label for v, p in zip((claim.expected, claim.baseline), picked) if p.empty]
            many = [v.label for v, p in zip((claim.expected, claim.baseline), picked) if len(p) > 1]
            problem = (f"no finished run of {', '.join(empty)} on {task}" if empty else
                       f"{', '.join(many)} matches several variants; make its filter in claims.py exact" if many
                       else None)
        if problem is not None:
            out.append(Outcome(claim, task, "not run", "not run", problem))
            continue
        expected, baseline = (_arm(p.iloc[0]) for p in picked)
        v = judge(expected, baseline, claim.direction)
        p = "" if v.welch_p is None else f", Welch p = {v.welch_p:.2g}"
        detail = (f"{claim.expected.label} {cell(expected)} vs {claim.baseline.label} {cell(baseline)}: "
                  f"d = {v.diff:+.3f}, noise {v.noise:.3f}{p}")
        out.append(Outcome(claim, task, v.verdict, v.status, detail))
    return out


def machine_line(scores: pd.DataFrame | None) -> str:
    """Hosts, accelerator, torch, the dates the runs ran and the git commits, as run.json recorded them."""
    if scores is None or scores.empty:
        return "–"
    runs = scores.drop_duplicates("run")
    join = lambda col: ", ".join(sorted({str(v) for v in runs[col].dropna()})) or "–"  # noqa: E731
    started = sorted(runs["started"].dropna())
    finished = sorted(runs["finished"].dropna())
    span = f"{started[0] if started else '?'} – {finished[-1] if finished else 'unfinished'}"
    shas = sorted({str(s)[:10] for s in runs["git_sha"].dropna()})
    return (f"host {join('host')} ({join('accelerator')}, torch {join('torch')}); runs {span}; "
            f"git {', '.join(shas) or '–'}")


def budget_line(scores: pd.DataFrame | None) -> str:
    """The optimiser steps per stage and the world LM's depth the runs trained with, as run.json recorded them."""
    if scores is None or scores.empty or "stage_steps" not in scores:
        return "–"
    runs = scores.drop_duplicates("run")

    def counted(column: str, unit: str) -> str:
        as_text = lambda v: str(int(v)) if isinstance(v, float) and v.is_integer() else str(v)  # noqa: E731
        if column not in runs:
            return ""
        counts = runs[column].dropna().map(as_text).value_counts()
        if len(counts) == 1:
            return f"{counts.index[0]}{unit}"
        return ", ".join(f"{value}{unit} ({n} run{'s' * (n > 1)})" for value, n in sorted(counts.items()))

    layers = counted("lm_layers", " layers")
    return "; ".join(part for part in (counted("stage_steps", " steps"), layers and f"world LM {layers}") if part)


def variants_table(summary: pd.DataFrame) -> str:
    """Every variant of the sweep on every task: mean ± std (n seeds) with the reference levels and the budget."""
    keys = _swept(summary)
    columns = [*keys, "task", "exact_match (mean ± std, n seeds)", "chance", "text ceiling", "LM tokens/image",
               "trainable params", "FLOPs/sample", "step s"]
    lines = ["| " + " | ".join(columns) + " |", "|" + "---|" * len(columns)]
    fmt = lambda v, f: "–" if pd.isna(v) else format(float(v), f)  # noqa: E731
    for _, row in summary.iterrows():
        values = [*(str(row[k]) for k in keys), str(row["task"]), cell(_arm(row)), fmt(row.get("chance"), ".3f"),
                  fmt(row.get("text_ceiling"), ".3f"), fmt(row.get("lm_tokens_per_media"), ".0f"),
                  fmt(row.get("trainable_params"), ".0f"),
                  fmt(row.get("flops_per_sample"), ".3g"), fmt(row.get("train_step_s"), ".3f")]
        lines.append("| " + " | ".join(values) + " |")
    return "\n".join(lines)


def _status(outcomes: list[Outcome]) -> str:
    states = {o.status for o in outcomes}
    return "not run" if states == {"not run"} else "partial" if states - {"done"} else "done"


def experiment_section(results: Path, experiment: str, claims: list[Claim]) -> tuple[list[str], list[Outcome]]:
    summary, scores = read_experiment(results, experiment)
    lines = [f"### `experiment=repro/{experiment}`", "",
             f"Regenerate: `bridgelab sweep experiment=repro/{experiment}`, then "
             f"`{claims[0].collect_command}`"
             + (f" and `{CURVE_COMMAND.format(exp=experiment)} --n {','.join(map(str, DEFAULT_NS))}`"
                if any(c.kind == "curve" for c in claims) else "") + "."]
    meta_path = results / experiment / "collect.json"
    if meta_path.exists():
        meta = json.loads(meta_path.read_text(encoding="utf-8"))
        lines.append(f"Collected {meta['collected']}: {meta['finished']} of {meta['runs']} run(s) finished "
                     f"({', '.join(f'{k} {v}' for k, v in meta['status'].items())}).")
    lines.append(f"Machine (run.json): {machine_line(scores)}.")
    lines.append(f"Budget (run.json): {budget_line(scores)}.")
    if summary is not None and not summary.empty:
        lines += ["", variants_table(summary)]
        if (results / experiment / "summary.png").is_file():
            lines += ["", f"![{experiment}]({(results / experiment / 'summary.png').as_posix()})"]
    elif summary is not None:
        lines += ["", "No finished run yet."]
    outcomes: list[Outcome] = []
    for claim in claims:
        expected = (f"; expected: {claim.expected.label} {'>' if claim.direction == 'better' else '>='} "
                    f"{claim.baseline.label}" if claim.kind == "compare" else "")
        lines += ["", f"**{claim.key}**: {claim.claim} ({claim.paper}, {claim.source}{expected}"
                      f"{'; ' + claim.note if claim.note else ''})"]
        if claim.kind == "compare":
            found = judge_claim(claim, summary)
        elif claim.kind == "curve":
            found = [Outcome(claim, claim.tasks[0], *curve_verdict(results / experiment / "curve.csv"))]
        else:
            found = [Outcome(claim, claim.tasks[0], *gate_verdict(results / experiment / "gates.csv"))]
        figure = results / experiment / {"curve": "curve.png", "gates": "gates.png"}.get(claim.kind, "")
        if claim.kind != "compare" and figure.is_file():
            lines.append(f"- figure: ![{claim.key}]({figure.as_posix()})")
        for o in found:
            mark = f" (provisional: fewer than {MIN_SEEDS} seeds)" if o.status == "partial" else ""
            lines.append(f"- {o.task}: **{o.verdict}**{mark}. {o.detail}")
        outcomes += found
    return lines, outcomes


def sections(results: str | Path = "results/repro") -> tuple[list[str], list[Outcome]]:
    """The per-paper markdown lines and every claim's outcomes, in registry order by paper."""
    results = Path(results)
    body: list[str] = []
    outcomes: list[Outcome] = []
    for paper, claims in claims_by_paper().items():
        if not claims:
            continue
        body += ["", f"## {paper}"]
        for experiment in dict.fromkeys(c.experiment for c in claims):
            lines, found = experiment_section(results, experiment, [c for c in claims if c.experiment == experiment])
            body += ["", *lines]
            outcomes += found
    return body, outcomes


def overview_table(results: str | Path = "results/repro") -> pd.DataFrame:
    """One row per claim and judged task: item, paper, source, experiment, task, verdict, status, detail."""
    _, outcomes = sections(results)
    return pd.DataFrame([{"item": o.claim.key, "paper": o.claim.paper, "source": o.claim.source,
                          "experiment": o.claim.experiment, "task": o.task, "verdict": o.verdict,
                          "status": o.status, "detail": o.detail} for o in outcomes])


def build_report(results: str | Path = "results/repro") -> str:
    """The text of REPRODUCTIONS.md."""
    body, outcomes = sections(results)
    overview = ["| item | paper | source | task | verdict | status |", "|---|---|---|---|---|---|"]
    for o in outcomes:
        overview.append(f"| {o.claim.key} | {o.claim.paper} | {o.claim.source} | {o.task} | {o.verdict} | {o.status} |")
    counts = pd.Series([o.verdict for o in outcomes]).value_counts()
    now = pd.Timestamp.now(tz="UTC").strftime("%Y-%m-%d %H:%M UTC")
    head = [
        "# Reproductions of the papers' ablations",
        "",
        f"Generated {now} by `python -m experiments.analysis.repro report` from `{results}/*/` (summary.csv, "
        "scores.csv, curve.csv, gates.csv) and the claims in `experiments/analysis/claims.py`; do not edit by hand. "
        "Every sweep starts from the shared budget of `experiments/configs/experiment/repro/base.yaml` (the world's "
        "frozen ViT and LM, 200 bridge steps of batch 64, 3 seeds); a sweep's own file may change the world, the "
        "stages or the steps, and each section's Budget line says what its runs trained, read from their run.json. "
        "Nothing is tuned per variant. Items without "
        "results say **not run**; a result that contradicts the paper is reported as such.",
        "",
        "## Verdict rule",
        "",
        RULE,
        "",
        f"## Overview ({len(CLAIMS)} items, {len(outcomes)} checks (item x judged task): "
        + ", ".join(f"{k} {v}" for k, v in counts.items()) + ")",
        "",
        *overview,
    ]
    return "\n".join(head + body) + "\n"


def write_report(results: str | Path = "results/repro", out: str | Path = "REPRODUCTIONS.md") -> Path:
    path = Path(out)
    path.write_text(build_report(results), encoding="utf-8")
    return path
