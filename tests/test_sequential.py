"""Sequential verdicts keep their error rate: simulated null studies grown look by look are
fed through the very decision function reports and ``study extend --until-decided`` use,
and the optional-stopping procedure it replaces is shown to exceed α on the same studies."""

from __future__ import annotations

import math

import numpy as np
import pytest
from scipy import stats as sps

from attnres_search.reports.sequential import (BETTER, CONTINUE, EXHAUSTED, FUTILE, WORSE, decide_study, error_rates,
                                               naive_boundaries, sequential_decisions, spent, t_boundaries)
from attnres_search.study.design import Design, parse_design

ALPHA = 0.05
N_NULL = 20_000


def design(max_seeds: int = 8, spending: str = "obrien-fleming", futility: float = 0.1, m: int = 1,
           start: int = 3, step: int = 1) -> Design:
    return Design(tuple(f"v{i}" for i in range(m)), ALPHA, max_seeds, step, spending, futility, start)


def mc_bound(p: float, n: int) -> float:
    """α plus three Monte-Carlo standard errors."""
    return p + 3 * math.sqrt(p * (1 - p) / n)


@pytest.mark.parametrize("spending", ["obrien-fleming", "pocock"])
@pytest.mark.parametrize("max_seeds", [8, 12])
def test_null_false_positive_rate_stays_at_alpha_where_naive_retesting_does_not(spending: str, max_seeds: int,
                                                                                capsys) -> None:
    """20,000 null studies per SD, grown from 3 pairs one seed per look to the maximum."""
    d = design(max_seeds, spending)
    naive = design(max_seeds, spending, futility=0.0)  # the optional stopping: no futility either
    for i, sd in enumerate((0.01, 0.03, 1.0)):
        rng = np.random.default_rng(1000 + i)
        diffs = rng.normal(0.0, sd, size=(N_NULL, 1, max_seeds))
        seq = sequential_decisions(diffs, d).rejected().mean()
        nai = sequential_decisions(diffs, naive, rule="naive").rejected().mean()
        assert seq <= mc_bound(ALPHA, N_NULL), f"sequential false-positive rate {seq} at SD {sd}"
        assert nai > mc_bound(ALPHA, N_NULL), f"naive re-testing should exceed α: {nai}"
        with capsys.disabled():
            print(f"\n[{spending}, 3..{max_seeds} pairs, SD {sd}] false positives: sequential {seq:.4f}, "
                  f"naive {nai:.4f} (nominal {ALPHA})", end="")
    power = error_rates(d, n_studies=N_NULL, effect=-1.0, sd=1.0, seed=7)
    with capsys.disabled():
        print(f"\n[{spending}, 3..{max_seeds} pairs] power at a true effect of 1 SD of the differences: {power:.3f}",
              end="")
    assert 0.3 < power < 0.95


def test_family_of_two_primaries_keeps_the_family_wise_rate_with_holm_recycling(capsys) -> None:
    """The CPU ablation's design (two primaries sharing one baseline, so correlated by it):
    the family-wise rate over both comparisons and every look is ≤ α; Holm's recycling
    rejects more than Bonferroni alone when both effects are real."""
    d = design(8, m=2)
    rng = np.random.default_rng(5)
    base = rng.normal(0, 1, size=(N_NULL, 1, 8))
    diffs = rng.normal(0, 1, size=(N_NULL, 2, 8)) - base  # variant − shared baseline
    fwer = sequential_decisions(diffs, d).rejected().mean()
    assert fwer <= mc_bound(ALPHA, N_NULL)
    effect = rng.normal(0, 1, size=(N_NULL, 2, 8)) - 1.0
    both = sequential_decisions(effect, d)
    per_comparison = (both.state == BETTER).mean(axis=0)
    with capsys.disabled():
        print(f"\n[CPU ablation design: 2 primaries, 3..8 pairs, O'Brien-Fleming, futility 0.1] family-wise false "
              f"positives {fwer:.4f}; power per comparison at 1 SD: {per_comparison.round(3).tolist()}", end="")
    bonferroni = Design(("v0",), ALPHA / 2, 8, 1, "obrien-fleming", 0.1, 3)
    alone = (sequential_decisions(effect[:, :1], bonferroni).state == BETTER).mean()
    assert per_comparison[0] > alone


def test_first_boundary_is_the_student_t_quantile_and_spending_adds_up() -> None:
    d = design(8)
    bounds = t_boundaries(d.schedule, 8, ALPHA, "obrien-fleming")
    assert bounds[0] == pytest.approx(sps.t.isf(spent(3 / 8, ALPHA, "obrien-fleming") / 2, 2), rel=1e-12)
    assert all(a > b for a, b in zip(bounds, bounds[1:])), "O'Brien-Fleming boundaries fall with information"
    assert spent(1.0, ALPHA, "obrien-fleming") == pytest.approx(ALPHA, rel=1e-12)
    assert spent(1.0, ALPHA, "pocock") == pytest.approx(ALPHA, rel=1e-12)
    # On fresh simulations, the share crossing by each look matches the α spent by then.
    rng = np.random.default_rng(11)
    x = rng.standard_normal((200_000, 8))
    crossed = np.zeros(len(x), dtype=bool)
    for n, c in zip(d.schedule, bounds):
        t = x[:, :n].mean(1) / (x[:, :n].std(1, ddof=1) / math.sqrt(n))
        crossed |= np.abs(t) >= c
        target = spent(n / 8, ALPHA, "obrien-fleming")
        assert abs(crossed.mean() - target) < 4 * math.sqrt(target / len(x)) + 1e-4, n
    assert naive_boundaries((3, 8), ALPHA)[1] == pytest.approx(sps.t.isf(ALPHA / 2, 7))


def test_decisions_on_hand_made_pairs() -> None:
    d = Design(("full", "block"), ALPHA, 6, 1, "obrien-fleming", 0.1, 3)
    # full: a huge, steady gain (t ≈ −173 at 3 pairs) crosses at the first look; block: nothing there
    found, looks = decide_study(d, {"full": [-1.0, -1.01, -0.99], "block": [0.01, -0.01, 0.002]})
    by = {x.variant: x for x in found}
    assert looks == 1
    assert by["full"].state == BETTER and by["full"].look == 1 and by["full"].t < -100
    assert by["full"].boundary == pytest.approx(t_boundaries(d.schedule, 6, ALPHA / 2, "obrien-fleming")[0])
    # block stays undecided at look 1 (its boundary after full's rejection: the full α)
    assert by["block"].boundary == pytest.approx(t_boundaries(d.schedule, 6, ALPHA, "obrien-fleming")[0])
    assert by["block"].state in (CONTINUE, FUTILE)
    # A worse variant decides the other way; a look waits for every running comparison's pairs.
    found, looks = decide_study(d, {"full": [0.5, 0.51, 0.49, 0.5], "block": [0.1, -0.2, 0.05]})
    assert found[0].state == WORSE and looks == 1
    # Undecided to the end: EXHAUSTED at the last look, with the pairs that look had.
    zero_effect = [0.02, -0.03, 0.01, -0.01, 0.03, -0.02]
    found, looks = decide_study(Design(("a",), ALPHA, 6, 1, "obrien-fleming", 0.0, 3), {"a": zero_effect})
    assert found[0].state == EXHAUSTED and looks == 4 and found[0].n_pairs == 6


def test_a_design_is_validated_when_the_space_is_read() -> None:
    ok = parse_design({"primary": ["full"], "max_seeds": 6}, ("baseline", "full"), "baseline", 3)
    assert ok.schedule == (3, 4, 5, 6) and ok.spending == "obrien-fleming" and ok.futility == 0.1
    assert parse_design({"primary": ["full"], "max_seeds": 9, "step": 3}, ("baseline", "full"), "baseline",
                        3).schedule == (3, 6, 9)
    assert parse_design({"primary": ["full"], "max_seeds": 8, "step": 3}, ("baseline", "full"), "baseline",
                        3).schedule == (3, 6, 8)
    for bad, message in [({"primary": ["nope"], "max_seeds": 6}, "no variant 'nope'"),
                         ({"primary": ["baseline"], "max_seeds": 6}, "is the baseline"),
                         ({"primary": ["full"], "max_seeds": 2}, "below the 3 seeds"),
                         ({"primary": ["full"], "max_seeds": 6, "alpha": 0.7}, "design.alpha"),
                         ({"primary": ["full"], "max_seeds": 6, "spending": "linear"}, "design.spending"),
                         ({"primary": ["full"], "max_seeds": 6, "typo": 1}, "unknown key 'typo'"),
                         ({"primary": ["full"]}, "design.max_seeds must be an integer")]:
        with pytest.raises(ValueError, match=message):
            parse_design(bad, ("baseline", "full"), "baseline", 3)
