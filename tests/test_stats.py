"""Statistics over seeds against scipy and hand computation."""

from __future__ import annotations

import math

import pytest
from scipy import stats as sps

from attnres_search.reports.stats import paired_test, summarize, verdict

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
