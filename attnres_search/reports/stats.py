"""Statistics over seeds: means with 95% t confidence intervals, paired tests of a variant
against the baseline, the plain-words verdict each report row ends with, the power of the
paired t-test (minimum detectable effect, seeds needed) and Holm's adjustment of the
p-values of one report's several comparisons.

Seeds are paired: the baseline and a variant trained with the same seed see the same data
order, so their difference cancels most of the seed-to-seed noise, and the paired test
(t-test on the differences, or Wilcoxon signed-rank) is the honest one.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Sequence

TESTS = ("t", "wilcoxon")
REPRODUCED, OPPOSITE, INCONCLUSIVE, NO_FIGURE = "reproduced", "opposite", "inconclusive", "—"


@dataclass(frozen=True)
class Summary:
    """Mean of n values with the two-sided 95% Student-t interval (NaN bounds when n < 2)."""

    n: int
    mean: float
    std: float
    ci_low: float
    ci_high: float

    @property
    def half_width(self) -> float:
        return (self.ci_high - self.ci_low) / 2


def summarize(values: Sequence[float], confidence: float = 0.95) -> Summary:
    n = len(values)
    if n == 0:
        nan = math.nan
        return Summary(0, nan, nan, nan, nan)
    mean = sum(values) / n
    if n < 2:
        return Summary(1, mean, math.nan, math.nan, math.nan)
    from scipy import stats as sps  # imported here: the CLI imports this module for its constants

    std = math.sqrt(sum((v - mean) ** 2 for v in values) / (n - 1))
    half = float(sps.t.ppf(0.5 + confidence / 2, n - 1)) * std / math.sqrt(n)
    return Summary(n, mean, std, mean - half, mean + half)


@dataclass(frozen=True)
class Comparison:
    """A variant minus the baseline over paired seeds (negative delta: the variant is better)."""

    n_pairs: int
    delta: Summary
    p_value: float
    test: str


def paired_test(variant: Sequence[float], baseline: Sequence[float], test: str = "t") -> Comparison:
    """Paired comparison of equal-length sequences (item i of both from the same seed)."""
    if test not in TESTS:
        raise ValueError(f"test must be one of {', '.join(TESTS)}; got {test!r}")
    if len(variant) != len(baseline):
        raise ValueError("paired test needs one baseline value per variant value")
    from scipy import stats as sps

    diffs = [v - b for v, b in zip(variant, baseline)]
    p = math.nan
    if len(diffs) >= 2:
        if test == "wilcoxon":
            if any(d != 0 for d in diffs):
                p = float(sps.wilcoxon(variant, baseline).pvalue)
        elif any(d != diffs[0] for d in diffs):
            p = float(sps.ttest_rel(variant, baseline).pvalue)
        elif diffs[0] != 0:  # identical non-zero differences: no spread, so t is infinite
            p = 0.0
    return Comparison(len(diffs), summarize(diffs), p, test)


def verdict(comparison: Comparison | None, paper_delta: float | None, alpha: float = 0.05,
            p_value: float | None = None) -> str:
    """``reproduced`` when our difference is significant (p < alpha) with the paper's sign,
    ``opposite`` when it is significant with the other sign, ``inconclusive`` otherwise
    (including too few seeds to test); ``—`` when the paper gives no figure. The verdict is
    about the direction of the effect: at our scale its size is not expected to match.
    ``p_value`` replaces the comparison's own p (reports pass the one adjusted for the
    number of variants compared)."""
    if paper_delta is None or comparison is None:
        return NO_FIGURE
    p = comparison.p_value if p_value is None else p_value
    if math.isnan(p) or p >= alpha or comparison.delta.mean == 0 or paper_delta == 0:
        return INCONCLUSIVE
    return REPRODUCED if (comparison.delta.mean < 0) == (paper_delta < 0) else OPPOSITE


# ------------------------------------------------------------------------------------- power

POWER = 0.8  # the conventional target: a real effect of the stated size is detected 4 times in 5
ADJUSTMENTS = ("holm", "none")
_MAX_SEEDS = 10**12  # the search for "seeds needed" stops here (tiny effects need astronomically many)


def paired_t_power(effect_size: float, n: int, alpha: float = 0.05) -> float:
    """Power of the two-sided paired t-test with ``n`` pairs when the true mean difference is
    ``effect_size`` standard deviations of the differences.

    Exact for normally distributed differences: under the alternative the statistic follows a
    noncentral t with n − 1 degrees of freedom and noncentrality effect_size·√n, so the power
    is P(|T| > t_{1−α/2, n−1}) = nct.sf(t_c; nc) + nct.cdf(−t_c; nc) (``scipy.stats.nct``). No
    normal approximation: with the few seeds a study runs, the t tails matter. The lower tail
    is computed as its mirror image nct.sf(t_c; −nc), which scipy evaluates without the NaN
    its ``cdf`` returns far in that tail for 1 or 2 degrees of freedom."""
    if n < 2:
        return math.nan
    from scipy import stats as sps

    df = n - 1
    t_crit = float(sps.t.ppf(1 - alpha / 2, df))
    nc = abs(effect_size) * math.sqrt(n)
    if nc == 0:
        return alpha
    return float(sps.nct.sf(t_crit, df, nc) + sps.nct.sf(t_crit, df, -nc))


def detectable_effect_size(n: int, alpha: float = 0.05, power: float = POWER) -> float:
    """The smallest effect (in standard deviations of the paired differences) that the
    two-sided paired t-test with ``n`` pairs detects with probability ``power``: the root of
    :func:`paired_t_power` (monotone in the effect), found by Brent's method."""
    if n < 2:
        return math.nan
    from scipy.optimize import brentq

    high = 1.0
    while paired_t_power(high, n, alpha) < power:
        high *= 2
    return float(brentq(lambda d: paired_t_power(d, n, alpha) - power, 0.0, high, xtol=1e-12, rtol=1e-12))


def minimum_detectable_effect(sd_diff: float, n: int, alpha: float = 0.05, power: float = POWER) -> float:
    """The minimum detectable effect, in loss units, for ``n`` paired seeds whose differences
    have standard deviation ``sd_diff`` (taken as the true one): NaN below two pairs."""
    if n < 2 or not math.isfinite(sd_diff):
        return math.nan
    return detectable_effect_size(n, alpha, power) * sd_diff


def seeds_to_detect(delta: float, sd_diff: float, alpha: float = 0.05, power: float = POWER) -> int | None:
    """How many paired seeds the two-sided paired t-test needs to detect a true difference of
    ``delta`` with probability ``power`` when the differences have standard deviation
    ``sd_diff``: the smallest n ≥ 2 with :func:`paired_t_power` ≥ ``power`` (power grows with n,
    so a doubling search then a bisection finds it). None when there is no effect to detect
    (Δ = 0 or unknown) or more than 10^12 seeds would be needed."""
    if not (math.isfinite(delta) and math.isfinite(sd_diff)) or delta == 0:
        return None
    if sd_diff == 0:
        return 2  # no spread: any two pairs show the difference
    effect = abs(delta) / sd_diff
    if paired_t_power(effect, 2, alpha) >= power:
        return 2
    low, high = 2, 4  # power(low) < target <= power(high) once the doubling stops
    while paired_t_power(effect, high, alpha) < power:
        low, high = high, high * 2
        if high > _MAX_SEEDS:
            return None
    while high - low > 1:
        mid = (low + high) // 2
        if paired_t_power(effect, mid, alpha) >= power:
            high = mid
        else:
            low = mid
    return high


def holm(p_values: Sequence[float]) -> list[float]:
    """Holm's step-down adjustment, in the order given: with the m finite p-values sorted
    ascending, p̃_(i) = max_{j ≤ i} min(1, (m − j + 1)·p_(j)). It controls the family-wise
    error rate like Bonferroni without assuming independence, and rejects at least as much.
    NaN (no test possible) stays NaN and is not counted in m."""
    finite = [i for i, p in enumerate(p_values) if not math.isnan(p)]
    m = len(finite)
    out = [math.nan] * len(p_values)
    running = 0.0
    for rank, i in enumerate(sorted(finite, key=lambda i: p_values[i])):
        running = max(running, min(1.0, (m - rank) * p_values[i]))
        out[i] = running
    return out


def adjust_p_values(p_values: Sequence[float], method: str) -> list[float]:
    """``holm`` (the default of every report) or ``none`` (the raw p-values)."""
    if method not in ADJUSTMENTS:
        raise ValueError(f"p-value adjustment must be one of {', '.join(ADJUSTMENTS)}; got {method!r}")
    return holm(p_values) if method == "holm" else [float(p) for p in p_values]
