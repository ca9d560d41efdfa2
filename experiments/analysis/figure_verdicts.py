"""Verdicts on the two figure-shaped items of REPRODUCTIONS.md: the distractor-resistance curve (mPLUG-Owl3) from
``curve.csv`` and Flamingo's gate figure from ``gates.csv``.

* Curve: at the largest number of images N that every bridge of the sweep reached, Hyper Attention's accuracy
  against the best other bridge's, by the rule of :mod:`experiments.analysis.verdict` (a ``better`` claim); how
  far each bridge got and why it stopped is printed beside it.
* Gates (the scalar-gate, every-layer runs when the sweep has other gates or placements too): for each logged gate
  series (``gate/...`` key, one per layer and kind), the mean over seeds of the first and the last logged
  ``|value|``; **holds** when every series ends above where it started, **contradicted** when none does, otherwise
  **within noise**. Whether deeper layers open more is shown (the last values by layer), not judged.
"""

from __future__ import annotations

from pathlib import Path

import pandas as pd

from experiments.analysis.verdict import MIN_SEEDS, Arm, judge

PAPER_BRIDGE = "hyper_attention"
DEFAULT_NS = (1, 2, 4, 8, 16, 32, 64, 128, 256, 400)  # the curve's image counts (1 to 400, as the paper's figure)
CURVE_COMMAND = "python -m experiments.analysis.distractor_curve runs/repro/{exp} --out results/repro/{exp}/curve.csv"


def curve_points(curve: pd.DataFrame) -> pd.DataFrame:
    """Mean, std, seeds and mean n per bridge and N over the evaluated rows of ``curve.csv``."""
    done = curve[curve["status"] == "evaluated"].copy()
    done["exact_match"] = done["exact_match"].astype(float)
    done["n"] = done["n"].astype(float)
    grouped = done.groupby(["bridge", "n_images"])
    points = grouped["exact_match"].agg(["mean", "std", "count"]).join(grouped["n"].mean()).reset_index()
    return points.rename(columns={"count": "seeds"})


def stop_reasons(curve: pd.DataFrame) -> dict[str, str]:
    """Per bridge: where and why its curve stopped (first stopped N over its runs), or that it reached the end."""
    out = {}
    for bridge, rows in curve.groupby("bridge"):
        stopped = rows[rows["status"].isin(["stopped", "error"])].sort_values("n_images")
        out[str(bridge)] = (f"stopped at N={int(stopped.iloc[0]['n_images'])}: {stopped.iloc[0]['reason']}"
                            if len(stopped) else "reached the last N asked for")
    return out


def curve_verdict(path: Path) -> tuple[str, str, str]:
    """``(verdict, status, detail)`` of the distractor-resistance item."""
    exp = path.parent.name
    if not path.exists():
        return "not run", "not run", f"no {path}; run `{CURVE_COMMAND.format(exp=exp)}`"
    curve = pd.read_csv(path)
    points = curve_points(curve)
    if points.empty or PAPER_BRIDGE not in set(points["bridge"]):
        return "not run", "not run", f"{path} has no evaluated point of {PAPER_BRIDGE}"
    reach = points.groupby("bridge")["n_images"].max()
    common = int(reach.min())
    at = points[points["n_images"] == common].set_index("bridge")
    others = at.drop(index=PAPER_BRIDGE)
    reached = "; ".join(f"{b}: up to N={int(n)} ({r})" for (b, n), r in
                        zip(reach.items(), (stop_reasons(curve).get(b, "") for b in reach.index)))
    if others.empty:
        return "not run", "not run", f"only {PAPER_BRIDGE} in {path}; reach: {reached}"
    best = others["mean"].idxmax()
    arm = lambda r: Arm(float(r["mean"]), float(r["std"]), int(r["seeds"]), float(r["n"]))  # noqa: E731
    ours, theirs = arm(at.loc[PAPER_BRIDGE]), arm(at.loc[best])
    v = judge(ours, theirs, "better")
    detail = (f"at N={common} (the largest N every bridge reached): {PAPER_BRIDGE} {ours.mean:.3f} (n={ours.seeds}) "
              f"vs best other {best} {theirs.mean:.3f} (n={theirs.seeds}): d = {v.diff:+.3f}, noise {v.noise:.3f}. "
              f"Reach: {reached}.")
    return v.verdict, v.status, detail


def paper_gates(gates: pd.DataFrame) -> pd.DataFrame:
    """The series of the paper's design when the sweep also ran others: the scalar gate (``bridge.gate``) and a block
    before every LM layer (of ``bridge.xattn_layers``, the variant with the most layers); else all rows."""
    if "bridge.gate" in gates and (gates["bridge.gate"].astype(str) == "scalar").any():
        gates = gates[gates["bridge.gate"].astype(str) == "scalar"]
    if "bridge.xattn_layers" in gates and gates["bridge.xattn_layers"].notna().any():
        sizes = gates["bridge.xattn_layers"].astype(str).str.count(",") + 1
        gates = gates[sizes == sizes.max()]
    return gates


def gate_summary(gates: pd.DataFrame) -> pd.DataFrame:
    """Per gate key: layer, mean over seeds of the first and last logged |value|, and the seed count."""
    step = "global_step" if "global_step" in gates else "step"
    gates = gates.assign(value=gates["value"].astype(float).abs()).sort_values(step)
    per_run = gates.groupby(["key", "run"]).agg(layer=("layer", "first"), first=("value", "first"),
                                                last=("value", "last"))
    out = per_run.groupby("key").agg(layer=("layer", "first"), first=("first", "mean"), last=("last", "mean"),
                                     seeds=("last", "count"))
    return out.reset_index().sort_values(["layer", "key"], na_position="last")


def gate_verdict(path: Path) -> tuple[str, str, str]:
    """``(verdict, status, detail)`` of the gate-figure item."""
    if not path.exists():
        return "not run", "not run", (f"no {path}: the runs logged no gate/... scalars (or the sweep was not "
                                      "collected)")
    table = gate_summary(paper_gates(pd.read_csv(path)))
    grows = table["last"] > table["first"]
    verdict = "holds" if grows.all() else "contradicted" if not grows.any() else "within noise"
    status = "done" if table["seeds"].min() >= MIN_SEEDS else "partial"
    detail = "; ".join(f"{r.key}: {r.first:.3f} -> {r.last:.3f}" for r in table.itertuples())
    return verdict, status, f"|tanh alpha| first -> last logged (mean over seeds): {detail}"
