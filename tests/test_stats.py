"""Statistics over seeds against scipy and hand computation."""

from __future__ import annotations

import math

import numpy as np
import pytest
from scipy import stats as sps

from attnres_search.reports.stats import (adjust_p_values, detectable_effect_size, holm, minimum_detectable_effect,
                                          paired_t_power, paired_test, seeds_to_detect, summarize, verdict)

T_975_DF3 = 3.182446305284263  # Student t, 97.5th percentile, 3 degrees of freedom (tables)


def test_summary_is_the_t_interval() -> None:
    values = [3.00, 3.10, 2.95, 3.05]
    s = summarize(values)
    mean = sum(values) / 4
    sd = math.sqrt(sum((v - mean) ** 2 for v in values) / 3)
    assert s.n == 4 and s.mean == pytest.approx(mean, abs=1e-15)
    assert s.std == pytest.approx(sd, rel=1e-12)
    assert s.half_width == pytest.approx(T_975_DF3 * sd / 2, rel=1e-9)
    low, high = sps.t.interval(0.95, 3, loc=mean, scale=sps.sem(values))
    assert (s.ci_low, s.ci_high) == (pytest.approx(low, rel=1e-12), pytest.approx(high, rel=1e-12))


def test_summary_of_one_or_no_value_has_no_interval() -> None:
    assert math.isnan(summarize([2.0]).ci_low) and summarize([2.0]).mean == 2.0
    assert summarize([]).n == 0 and math.isnan(summarize([]).mean)


def test_paired_tests_match_scipy() -> None:
    base = [3.00, 3.10, 2.95, 3.05, 3.02]
    var = [2.90, 3.02, 2.91, 2.96, 2.97]
    t = paired_test(var, base, "t")
    assert t.p_value == pytest.approx(sps.ttest_rel(var, base).pvalue, rel=1e-12)
    assert t.delta.mean == pytest.approx(sum(v - b for v, b in zip(var, base)) / 5, abs=1e-15)
    w = paired_test(var, base, "wilcoxon")
    assert w.p_value == pytest.approx(sps.wilcoxon(var, base).pvalue, rel=1e-12)
    with pytest.raises(ValueError, match="test must be one of"):
        paired_test(var, base, "anova")


def test_degenerate_pairs() -> None:
    assert math.isnan(paired_test([1.0], [2.0]).p_value)  # one pair: no test
    assert paired_test([1.0, 2.0], [1.1, 2.1]).p_value == 0.0  # identical differences: t is infinite
    assert math.isnan(paired_test([1.0, 2.0], [1.0, 2.0]).p_value)  # no difference at all


def test_verdicts() -> None:
    better = paired_test([2.90, 3.02, 2.91, 2.96], [3.00, 3.10, 2.95, 3.05])
    assert better.p_value < 0.05
    assert verdict(better, -0.029) == "reproduced"
    assert verdict(better, +0.001) == "opposite"
    assert verdict(better, None) == "—"
    noisy = paired_test([2.9, 3.2, 2.8, 3.1], [3.0, 3.0, 3.0, 3.0])
    assert noisy.p_value > 0.05 and verdict(noisy, -0.029) == "inconclusive"
    assert verdict(better, -0.029, alpha=better.p_value / 2) == "inconclusive"


# ------------------------------------------------------------------------ power and Holm


def _simulated_power(effect: float, n: int, alpha: float, trials: int = 200_000) -> float:
    """Monte Carlo power of the two-sided paired t-test: normal differences with mean
    ``effect`` and SD 1, the t statistic computed by hand, fixed generator seed."""
    rng = np.random.default_rng(1234)
    diffs = rng.normal(effect, 1.0, size=(trials, n))
    t = diffs.mean(axis=1) / (diffs.std(axis=1, ddof=1) / math.sqrt(n))
    return float(np.mean(np.abs(t) > sps.t.ppf(1 - alpha / 2, n - 1)))


@pytest.mark.parametrize("effect,n,alpha", [(1.2, 5, 0.05), (0.5, 12, 0.05), (2.5, 3, 0.0167), (3.0, 2, 0.05)])
def test_power_matches_a_simulation_of_the_t_test(effect: float, n: int, alpha: float) -> None:
    power = paired_t_power(effect, n, alpha)
    se = math.sqrt(power * (1 - power) / 200_000)
    assert abs(power - _simulated_power(effect, n, alpha)) < 4 * se + 1e-4
    assert paired_t_power(0.0, n, alpha) == alpha  # no effect: the false-positive rate
    assert paired_t_power(-effect, n, alpha) == pytest.approx(power, rel=1e-12)  # two-sided: symmetric


def test_power_far_in_the_tails_stays_finite() -> None:
    """scipy's nct.cdf returns NaN far in the lower tail with 1 or 2 degrees of freedom: the
    mirror-image sf used instead must not."""
    for n in (2, 3):
        for alpha in (0.05, 0.01, 0.001):
            for effect in np.linspace(0, 200, 81):
                p = paired_t_power(float(effect), n, alpha)
                assert math.isfinite(p) and alpha - 1e-12 <= p <= 1.0


@pytest.mark.parametrize("n,alpha", [(2, 0.05), (3, 0.05), (4, 0.0167), (10, 0.05), (50, 0.01)])
def test_minimum_detectable_effect_has_80_percent_power(n: int, alpha: float) -> None:
    d = detectable_effect_size(n, alpha)
    assert paired_t_power(d, n, alpha) == pytest.approx(0.8, abs=1e-9)
    assert paired_t_power(0.99 * d, n, alpha) < 0.8 < paired_t_power(1.01 * d, n, alpha)
    # heavier t tails than the normal: the exact MDE lies above the normal approximation
    assert d > (sps.norm.ppf(1 - alpha / 2) + sps.norm.ppf(0.8)) / math.sqrt(n)
    assert minimum_detectable_effect(0.03, n, alpha) == pytest.approx(0.03 * d, rel=1e-12)


def test_minimum_detectable_effect_by_simulation() -> None:
    """At the MDE for 6 pairs, a simulated paired t-test rejects 80% of the time."""
    d = detectable_effect_size(6, 0.05)
    assert _simulated_power(d, 6, 0.05) == pytest.approx(0.8, abs=0.004)


def test_minimum_detectable_effect_needs_two_pairs() -> None:
    assert math.isnan(minimum_detectable_effect(0.1, 1)) and math.isnan(minimum_detectable_effect(math.nan, 4))


@pytest.mark.parametrize("delta,sd,alpha", [(0.03, 0.026, 0.05), (0.01, 0.05, 0.05), (0.1, 0.008, 0.0167),
                                            (0.001, 0.05, 0.05)])
def test_seeds_to_detect_is_the_smallest_n_with_80_percent_power(delta: float, sd: float, alpha: float) -> None:
    n = seeds_to_detect(delta, sd, alpha)
    assert n is not None and n >= 2
    assert paired_t_power(delta / sd, n, alpha) >= 0.8
    if n > 2:
        assert paired_t_power(delta / sd, n - 1, alpha) < 0.8
    assert seeds_to_detect(-delta, sd, alpha) == n  # the direction does not matter


def test_seeds_to_detect_tends_to_the_normal_formula() -> None:
    """For small effects n is large, t ≈ normal, and n ≈ ((z_{1-α/2} + z_{0.8}) / d)² + z²_{1-α/2}/2
    (Guenther's correction for the t test)."""
    d = 0.02
    z = sps.norm.ppf(0.975)
    approx = ((z + sps.norm.ppf(0.8)) / d) ** 2 + z * z / 2
    assert seeds_to_detect(d, 1.0) == pytest.approx(approx, abs=2)


def test_seeds_to_detect_edge_cases() -> None:
    assert seeds_to_detect(0.0, 0.1) is None  # nothing to detect
    assert seeds_to_detect(math.nan, 0.1) is None and seeds_to_detect(0.1, math.nan) is None
    assert seeds_to_detect(0.1, 0.0) == 2  # no spread at all
    assert seeds_to_detect(1e-9, 1.0) is None  # beyond 10^12 seeds


def _holm_statsmodels(p: np.ndarray) -> np.ndarray:
    """statsmodels.stats.multitest.multipletests(method='holm') written out (statsmodels is
    not installed): sort, multiply the i-th smallest by m − i, running maximum, clip at 1,
    unsort."""
    order = np.argsort(p)
    m = len(p)
    corrected = np.minimum(1.0, np.maximum.accumulate(p[order] * np.arange(m, 0, -1)))
    out = np.empty(m)
    out[order] = corrected
    return out


def test_holm_by_hand_and_against_statsmodels_definition() -> None:
    # by hand: sorted 0.005·4 = 0.02, 0.01·3 = 0.03, 0.03·2 = 0.06, max(0.06, 0.04·1) = 0.06
    assert holm([0.01, 0.04, 0.03, 0.005]) == pytest.approx([0.03, 0.06, 0.06, 0.02], abs=1e-15)
    assert holm([0.5, 0.6]) == [1.0, 1.0] and holm([]) == [] and holm([0.02]) == [0.02]
    rng = np.random.default_rng(7)
    for m in (2, 3, 5, 12):
        p = rng.uniform(0, 0.2, size=m) ** 2
        np.testing.assert_allclose(holm(list(p)), _holm_statsmodels(p), rtol=0, atol=1e-15)


def test_holm_leaves_untested_rows_out_of_the_family() -> None:
    adj = holm([0.01, math.nan, 0.02])  # m = 2: the NaN is no test
    assert adj[0] == pytest.approx(0.02) and adj[2] == pytest.approx(0.02) and math.isnan(adj[1])


def test_adjust_none_and_bad_method() -> None:
    assert adjust_p_values([0.01, 0.2], "none") == [0.01, 0.2]
    assert adjust_p_values([0.01, 0.2], "holm") == pytest.approx([0.02, 0.2])
    with pytest.raises(ValueError, match="adjustment must be one of"):
        adjust_p_values([0.01], "bonferroni")


def test_verdict_uses_the_p_it_is_given() -> None:
    better = paired_test([2.90, 3.02, 2.91, 2.96], [3.00, 3.10, 2.95, 3.05])
    assert verdict(better, -0.029) == "reproduced"
    assert verdict(better, -0.029, p_value=0.06) == "inconclusive"  # e.g. the Holm-adjusted p
