"""The depth/width and scaling fits recover known answers."""

from __future__ import annotations

import math

import numpy as np
import pytest

from attnres_search import paper
from attnres_search.reports.fits import compute_multiplier, fit_depth_width, fit_power_law, PowerLaw


def test_depth_width_fit_recovers_a_known_optimum() -> None:
    ratios = [15, 30, 45, 60, 75]
    true_opt = 45.0
    losses = [1.80 + 0.05 * (math.log(r) - math.log(true_opt)) ** 2 for r in ratios]
    fit = fit_depth_width(ratios, losses)
    assert fit.interior and fit.optimum_ratio == pytest.approx(true_opt, rel=1e-9)
    assert fit.optimum_loss == pytest.approx(1.80, abs=1e-12) and fit.r2 == pytest.approx(1.0)


def test_depth_width_fit_with_noise_and_at_the_edge() -> None:
    rng = np.random.default_rng(0)
    ratios = [10, 15, 22, 33, 50, 75, 110]
    losses = [2.0 + 0.1 * (math.log(r) - math.log(40)) ** 2 + rng.normal(0, 0.002) for r in ratios]
    assert fit_depth_width(ratios, losses).optimum_ratio == pytest.approx(40, rel=0.1)
    falling = [3.0, 2.9, 2.8]  # still improving at the widest shape: no interior minimum
    edge = fit_depth_width([8, 16, 32], falling)
    assert not edge.interior and edge.optimum_ratio == 32
    with pytest.raises(ValueError, match="three different"):
        fit_depth_width([8, 8, 16], [1.0, 1.0, 1.0])


def test_power_law_fit_recovers_a_and_alpha() -> None:
    compute = np.geomspace(1e-3, 10, 6)
    law = fit_power_law(list(compute), [1.87 * c ** -0.058 for c in compute])
    assert law.A == pytest.approx(1.87, rel=1e-9) and law.alpha == pytest.approx(0.058, rel=1e-9)
    assert law.compute_for(law.loss_at(3.0)) == pytest.approx(3.0, rel=1e-9)


def test_compute_multiplier_of_the_papers_fits_is_1_25() -> None:
    block = PowerLaw(*paper.POWER_LAWS["block"], r2=1.0)
    base = PowerLaw(*paper.POWER_LAWS["baseline"], r2=1.0)
    m = compute_multiplier(block, base, paper.MULTIPLIER_AT_PFLOPS_DAYS)
    assert m == pytest.approx(paper.COMPUTE_MULTIPLIER["block"], abs=0.01)
    assert compute_multiplier(base, base, 1.0) == pytest.approx(1.0)
