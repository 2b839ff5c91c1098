"""Statistics over seeds: means with 95% t confidence intervals, paired tests of a variant
against the baseline, and the plain-words verdict each report row ends with.

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


def verdict(comparison: Comparison | None, paper_delta: float | None, alpha: float = 0.05) -> str:
    """``reproduced`` when our difference is significant (p < alpha) with the paper's sign,
    ``opposite`` when it is significant with the other sign, ``inconclusive`` otherwise
    (including too few seeds to test); ``—`` when the paper gives no figure. The verdict is
    about the direction of the effect: at our scale its size is not expected to match."""
    if paper_delta is None or comparison is None:
        return NO_FIGURE
    p = comparison.p_value
    if math.isnan(p) or p >= alpha or comparison.delta.mean == 0 or paper_delta == 0:
        return INCONCLUSIVE
    return REPRODUCED if (comparison.delta.mean < 0) == (paper_delta < 0) else OPPOSITE
