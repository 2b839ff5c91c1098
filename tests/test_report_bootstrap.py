"""Bootstrap over seeds for the fits: synthetic studies with a known optimum d_model/L_b and
a known compute multiplier. A shift shared by all cells of a seed (what pairing cancels)
leaves every resample's fit exactly at the truth; independent noise widens the interval
around it. Same storage, same report: the generator's seed is fixed."""

from __future__ import annotations

import json
import math
from pathlib import Path

import numpy as np
import pytest

from attnres_search.reports.bootstrap import (BOOTSTRAP_SEED, SeedTable, bootstrap_multipliers, bootstrap_optima,
                                              percentile_interval, replicate_means)
from attnres_search.reports.fits import PowerLaw, compute_multiplier
from attnres_search.study.space_file import parse_space
from tests.cli_runner import cli
from tests.report_synth import optima_by_variant, store_trials

RATIOS = [8.0, 16.0, 32.0, 64.0, 128.0]
OPTIMUM = {"baseline": 40.0, "full": 20.0}


def _bowl(ratio: float, optimum: float) -> float:
    return 2.0 + 0.05 * (math.log(ratio) - math.log(optimum)) ** 2


def test_replicate_means_resample_seeds_once_for_every_cell() -> None:
    table = SeedTable.build({("a", 1.0): {0: 1.0, 1: 2.0, 2: 4.0}, ("b", 1.0): {0: 10.0, 2: 40.0}})
    assert table.seeds == [0, 1, 2] and math.isnan(table.losses[1, 1])
    means = replicate_means(table, replicates=50, seed=3)
    draws = np.random.default_rng(3).integers(0, 3, size=(50, 3))  # the same draws, replayed
    for r, idx in enumerate(draws):
        assert means[r, 0] == pytest.approx(np.mean(table.losses[0, idx]))
        present = [table.losses[1, i] for i in idx if not math.isnan(table.losses[1, i])]
        assert (math.isnan(means[r, 1]) if not present else means[r, 1] == pytest.approx(np.mean(present)))


def test_percentile_interval() -> None:
    iv = percentile_interval([*np.arange(1, 101, dtype=float), math.nan])
    assert (iv.low, iv.high, iv.valid) == (pytest.approx(np.percentile(np.arange(1, 101), 2.5)),
                                           pytest.approx(np.percentile(np.arange(1, 101), 97.5)), 100)
    assert percentile_interval([math.nan]).low is None


def _optimum_cells(noise: float, seeds: int = 6, rng_seed: int = 0) -> dict:
    rng = np.random.default_rng(rng_seed)
    shift = rng.normal(0, 0.05, size=seeds)  # per seed, shared by every variant and shape
    return {(v, r): {s: _bowl(r, opt) + shift[s] + rng.normal(0, noise) for s in range(seeds)}
            for v, opt in OPTIMUM.items() for r in RATIOS}


def test_optimum_interval_collapses_on_the_truth_when_seeds_only_shift_the_loss() -> None:
    result = bootstrap_optima(_optimum_cells(noise=0.0), "baseline", replicates=300)
    for variant, opt in OPTIMUM.items():
        iv = result[variant].interval
        assert iv.valid == 300
        assert iv.low == pytest.approx(opt, rel=1e-6) and iv.high == pytest.approx(opt, rel=1e-6)
    assert result["full"].p_below_baseline == 1.0 and result["baseline"].p_below_baseline is None


def test_optimum_interval_covers_the_truth_under_noise() -> None:
    result = bootstrap_optima(_optimum_cells(noise=0.002), "baseline", replicates=500)
    noisier = bootstrap_optima(_optimum_cells(noise=0.01), "baseline", replicates=500)
    for variant, opt in OPTIMUM.items():
        iv, wide = result[variant].interval, noisier[variant].interval
        assert iv.low < opt < iv.high and wide.low < opt < wide.high
        assert wide.high - wide.low > 2 * (iv.high - iv.low) > 0  # more noise, a wider interval
    assert result["full"].p_below_baseline > 0.95
    # the same optimum for both: neither is reliably below the other
    first, second = _optimum_cells(noise=0.004, rng_seed=5), _optimum_cells(noise=0.004, rng_seed=6)
    same = {("baseline", r): first[("baseline", r)] for r in RATIOS}
    same.update({("twin", r): second[("baseline", r)] for r in RATIOS})
    p = bootstrap_optima(same, "baseline", replicates=500)["twin"].p_below_baseline
    assert 0.05 < p < 0.95
    again = bootstrap_optima(_optimum_cells(noise=0.002), "baseline", replicates=500)
    assert again == result  # fixed generator seed: reproducible


def test_multiplier_interval_collapses_on_the_truth_and_covers_it_under_noise() -> None:
    base, block = PowerLaw(1.891, 0.057, 1.0), PowerLaw(1.870, 0.058, 1.0)
    compute = [1e-3, 1e-2, 1e-1, 1.0]
    truth = compute_multiplier(block, base, 1.0)
    rng = np.random.default_rng(1)
    factor = np.exp(rng.normal(0, 0.01, size=5))  # per seed, multiplies every loss: cancels in the multiplier

    def points(noise: float) -> dict:
        return {(name, c): {s: law.loss_at(c) * factor[s] * math.exp(rng.normal(0, noise)) for s in range(5)}
                for name, law in (("baseline", base), ("block", block)) for c in compute}

    exact = bootstrap_multipliers(points(0.0), "baseline", 1.0, replicates=200)["block"]
    # the seed factor k cancels: (A_b·k / (A_v·k·C^-α_v))^(1/α_b) / C
    assert exact.interval.low == pytest.approx(truth, rel=1e-6) and exact.interval.high == pytest.approx(truth, rel=1e-6)
    assert exact.p_above_one == 1.0
    noisy = bootstrap_multipliers(points(0.0005), "baseline", 1.0, replicates=400)["block"]
    assert noisy.interval.low < truth < noisy.interval.high


DEPTH_WIDTH = """
name: dwb
model: {seq_len: 32}
train: {batch_size: 4}
variants: [baseline, full]
shapes: {ratios: [4, 8, 16, 32, 64], params: 200k, head_dim: 4}
budget: {flops: 1.0e11}
seeds: 4
"""


def test_depth_width_report_has_bootstrap_intervals(tmp_path: Path, monkeypatch, capsys) -> None:
    space = parse_space(DEPTH_WIDTH)
    actual = {r: (lambda m: m.d_model / m.n_layers)(space.run_config({"variant": "baseline", "ratio": r,
                                                                        "seed": 0}).model)
              for r in space.shapes.ratios}
    optimum = {"baseline": 20.0, "full": 10.0}
    shift = [0.0, 0.03, -0.02, 0.01]
    losses = {(("variant", v), ("ratio", r)): [_bowl(actual[r], opt) + s for s in shift]
              for v, opt in optimum.items() for r in space.shapes.ratios}
    url = f"sqlite:///{tmp_path / 'dwb.db'}"
    store_trials(url, space, losses)
    code, out, _ = cli(["report", "dwb", "--format", "json", "--storage", url], monkeypatch, capsys)
    assert code == 0
    doc = json.loads(out)
    optima = optima_by_variant(doc)
    for variant, opt in optimum.items():
        assert optima[variant]["optimum_ci_low"] == pytest.approx(opt, rel=1e-6)
        assert optima[variant]["optimum_ci_high"] == pytest.approx(opt, rel=1e-6)
        assert optima[variant]["bootstrap_replicates"] == 2000
    assert optima["full"]["p_below_baseline"] == 1.0 and optima["baseline"]["p_below_baseline"] is None
    notes = " ".join(doc["notes"])
    assert f"generator seed {BOOTSTRAP_SEED}" in notes and "P(full's optimum below baseline's) = 1.000" in notes
    code, again, _ = cli(["report", "dwb", "--format", "json", "--storage", url], monkeypatch, capsys)
    assert again == out  # byte for byte
    code, table, _ = cli(["report", "dwb", "--storage", url], monkeypatch, capsys)
    assert "95% CI (bootstrap)" in table and "20.0 – 20.0" in table and "P(below baseline)" in table


SCALING = """
name: scb
model: {seq_len: 32}
train: {batch_size: 4, tokens: 10k}
variants: [baseline, block-s2]
sizes:
  s: {n_layers: 1, d_model: 16, n_heads: 2}
  m: {n_layers: 2, d_model: 32, n_heads: 2}
  l: {n_layers: 4, d_model: 64, n_heads: 2}
seeds: 3
"""


def test_scaling_report_has_a_multiplier_interval_beside_the_papers(tmp_path: Path, monkeypatch, capsys) -> None:
    space = parse_space(SCALING)
    pfd = 8.64e19
    compute = {"s": 1e-3, "m": 1e-2, "l": 1e-1}
    laws = {"baseline": (1.891, 0.057), "block-s2": (1.870, 0.058)}
    factor = [1.0, 1.01, 0.995]
    losses = {(("size", s), ("variant", v)): [a * c ** -al * k for k in factor]
              for v, (a, al) in laws.items() for s, c in compute.items()}
    by_dmodel = {space.sizes[k]["model"]["d_model"]: c * pfd for k, c in compute.items()}
    url = f"sqlite:///{tmp_path / 'scb.db'}"
    store_trials(url, space, losses,
                 attrs=lambda p, loss: {"flops_total": by_dmodel[space.run_config(p).model.d_model]})
    code, out, _ = cli(["report", "scb", "--format", "json", "--storage", url], monkeypatch, capsys)
    assert code == 0
    mult = json.loads(out)["tables"]["multiplier"][0]
    expected = (1.891 / (1.870 * 0.1 ** -0.058)) ** (1 / 0.057) / 0.1
    assert mult["multiplier"] == pytest.approx(expected, rel=1e-6)
    assert mult["multiplier_ci_low"] == pytest.approx(expected, rel=1e-6)
    assert mult["multiplier_ci_high"] == pytest.approx(expected, rel=1e-6)
    assert mult["paper_multiplier"] == 1.25 and mult["p_multiplier_above_1"] == 1.0
    code, table, _ = cli(["report", "scb", "--storage", url], monkeypatch, capsys)
    assert code == 0 and "95% CI (bootstrap)" in table and "1.25x" in table and f"{expected:.2f}x – " in table
