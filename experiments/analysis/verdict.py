"""The rule that turns two variants' scores into a verdict on a paper's claim (REPRODUCTIONS.md states it too).

    d      = mean(expected) - mean(baseline)                      (means over seeds)
    noise  = max(std(expected), std(baseline), se(expected), se(baseline))
             std: sample std over seeds; se = sqrt(p (1 - p) / n_eval), the binomial error of one run's accuracy
             on its n_eval questions (a floor, so that two runs that agree by chance are not called different)
    better   claim: d >  2 noise -> holds;  d < -2 noise -> contradicted;  otherwise within noise
    no_worse claim: d >= -2 noise -> holds (as good, as the paper says);  d < -2 noise -> contradicted

Fewer than :data:`MIN_SEEDS` finished seeds on either side makes the item ``partial``: the verdict is still computed
and printed, marked provisional. A Welch t-test p-value (two-sided, from the means, stds and seed counts) is given
beside it for the reader; the verdict does not use it (three seeds give it little power).
"""

from __future__ import annotations

import math
from dataclasses import dataclass

from scipy import stats

MIN_SEEDS = 3
NOISE_FACTOR = 2.0
RULE = (
    f"d = mean(expected) - mean(baseline); noise = max(seed std of either, binomial s.e. sqrt(p(1-p)/n_eval) of "
    f"either); 'better' claims: d > {NOISE_FACTOR:g}·noise holds, d < -{NOISE_FACTOR:g}·noise contradicted, else "
    f"within noise; 'no_worse' claims: d >= -{NOISE_FACTOR:g}·noise holds, else contradicted. Fewer than "
    f"{MIN_SEEDS} finished seeds on either side: partial (verdict provisional). Welch's p is shown, not used."
)


@dataclass(frozen=True)
class Arm:
    """One variant's score on one task: mean and std over ``seeds`` runs, each scored on ``n_eval`` questions."""

    mean: float
    std: float
    seeds: int
    n_eval: float

    @property
    def binomial_se(self) -> float:
        if not self.n_eval or self.n_eval <= 0 or math.isnan(self.n_eval):
            return 0.0
        p = min(max(self.mean, 0.0), 1.0)
        return math.sqrt(p * (1 - p) / self.n_eval)


@dataclass(frozen=True)
class Verdict:
    """``verdict`` is ``holds``, ``contradicted`` or ``within noise``; ``status`` is ``done`` or ``partial``."""

    diff: float
    noise: float
    verdict: str
    status: str
    welch_p: float | None


def judge(expected: Arm, baseline: Arm, direction: str = "better") -> Verdict:
    """Apply the rule of the module docstring to two arms."""
    if direction not in ("better", "no_worse"):
        raise ValueError(f"direction must be 'better' or 'no_worse', got '{direction}'")
    if expected.seeds < 1 or baseline.seeds < 1:
        raise ValueError(f"both arms need at least one finished seed, got {expected.seeds} and {baseline.seeds}")
    diff = expected.mean - baseline.mean
    spreads = [s for s in (expected.std, baseline.std) if s is not None and not math.isnan(s)]
    noise = max([*spreads, expected.binomial_se, baseline.binomial_se])
    threshold = NOISE_FACTOR * noise
    if direction == "better":
        verdict = "holds" if diff > threshold else "contradicted" if diff < -threshold else "within noise"
    else:
        verdict = "contradicted" if diff < -threshold else "holds"
    status = "done" if min(expected.seeds, baseline.seeds) >= MIN_SEEDS else "partial"
    return Verdict(diff, noise, verdict, status, welch_p(expected, baseline))


def welch_p(a: Arm, b: Arm) -> float | None:
    """Two-sided Welch t-test p-value from summary statistics (``None`` with fewer than 2 seeds or zero spread)."""
    if a.seeds < 2 or b.seeds < 2 or any(math.isnan(s) for s in (a.std, b.std)) or a.std + b.std == 0:
        return None
    result = stats.ttest_ind_from_stats(a.mean, a.std, a.seeds, b.mean, b.std, b.seeds, equal_var=False)
    return float(result.pvalue)
