"""Δ at equal training FLOPs and at equal wall-clock, read off synthetic loss curves whose
answer is known: linear in the step, so the interpolation is exact and the expected losses
can be written down by hand."""

from __future__ import annotations

import json
import math
from pathlib import Path
from typing import Any

import numpy as np
import pytest
from scipy import stats as sps

from attnres_search.reports.budgets import (curve, flops_curve, pair_at_equal_budget, seconds_per_step, time_curve,
                                            val_points)
from attnres_search.study.space_file import parse_space
from tests.cli_runner import cli
from tests.report_synth import store_trials


def test_val_points_accept_pairs_and_triples() -> None:
    attrs = {"val_curve": [[10, 3.0], [20, 2.5, 4.2], [30, "x"], [40], [50, 2.0, None]]}
    assert val_points(attrs) == [(10.0, 3.0, None), (20.0, 2.5, 4.2), (50.0, 2.0, None)]
    assert val_points({}) == []


def test_flops_curve_is_step_times_tokens_per_step_times_flops_per_token() -> None:
    attrs = {"steps": 100, "tokens": 5000, "flops_per_token": 6000.0,
             "val_curve": [[10, 5.0], [50, 4.0], [100, 3.5]]}
    c = flops_curve(attrs)
    assert c is not None and not c.estimated
    np.testing.assert_allclose(c.budget, [10 * 50 * 6000, 50 * 50 * 6000, 100 * 50 * 6000])
    assert c.reached == 3.0e7
    assert c.loss_at(2.0e7) == pytest.approx(4.0 + (2.0e7 - 1.5e7) / (3.0e7 - 1.5e7) * (3.5 - 4.0))
    assert math.isnan(c.loss_at(1.0e6)) and math.isnan(c.loss_at(3.1e7))  # never extrapolated
    assert flops_curve({**attrs, "flops_per_token": None}) is None and flops_curve({**attrs, "steps": 0}) is None


def test_time_curve_stored_or_estimated() -> None:
    base = {"steps": 100, "wall_time_s": 20.0, "val_curve": [[50, 4.0], [100, 3.5]]}
    est = time_curve(base)
    assert est is not None and est.estimated
    np.testing.assert_allclose(est.budget, [10.0, 20.0])  # step × 20 s / 100 steps
    stored = time_curve({**base, "val_curve": [[50, 4.0, 12.5], [100, 3.5, 21.0]]})
    assert stored is not None and not stored.estimated
    np.testing.assert_allclose(stored.budget, [12.5, 21.0])
    mixed = time_curve({**base, "val_curve": [[50, 4.0, 12.5], [100, 3.5]]})  # one point without: estimate all
    assert mixed is not None and mixed.estimated
    # a run resumed at step 60 timed only its last 40 steps
    assert seconds_per_step({**base, "resumed_from_step": 60}) == pytest.approx(0.5)
    assert time_curve({"steps": 100, "val_curve": [[50, 4.0]]}) is None
    with pytest.raises(ValueError, match="budget must be one of"):
        curve(base, "tokens")


def test_pair_is_read_where_the_costlier_arm_stood() -> None:
    cheap = flops_curve({"steps": 10, "tokens": 10, "flops_per_token": 1.0, "val_curve": [[5, 3.0], [10, 2.0]]})
    costly = flops_curve({"steps": 10, "tokens": 10, "flops_per_token": 2.0, "val_curve": [[5, 2.8], [10, 1.8]]})
    assert cheap is not None and costly is not None
    pair = pair_at_equal_budget(0, costly, cheap)
    assert pair is not None and pair.budget == 10.0  # the cheap arm's final FLOPs
    assert pair.baseline_loss == 2.0 and pair.variant_loss == 2.8  # costly arm at its step 5
    late = flops_curve({"steps": 10, "tokens": 10, "flops_per_token": 4.0, "val_curve": [[5, 2.8], [10, 1.8]]})
    assert late is not None and pair_at_equal_budget(0, late, cheap) is None  # B = 10 < its first point (20)


SPACE = """
name: fair
model: {n_layers: 2, d_model: 32, n_heads: 2, seq_len: 32}
train: {tokens: 10k, batch_size: 4}
variants: [baseline, full, block-s2]
seeds: 4
"""
FINAL = {"baseline": [3.00, 3.10, 2.95, 3.05], "full": [2.90, 3.02, 2.91, 2.96], "block-s2": [2.97, 3.04, 2.96, 3.00]}
STEPS = (20, 40, 60, 80, 100)
SLOPE = 0.01  # loss falls 0.01 per step, all arms, so the curves are straight lines in the step
COST = {  # flops per token, wall seconds (full: 1.5x the FLOPs, 2x slower); block-s2 stores elapsed = 1 + 0.15·step
    "baseline": (6000.0, 10.0), "full": (9000.0, 20.0), "block-s2": (6000.0, 16.0)}


def _attrs(params: dict[str, Any], loss: float) -> dict[str, Any]:
    variant = params["variant"]
    per_token, wall = COST[variant]
    curve_points: list[list[float]] = [[s, loss + SLOPE * (100 - s)] for s in STEPS]
    if variant == "block-s2":
        curve_points = [[s, v, 1.0 + 0.15 * s] for s, v in curve_points]
    return {"steps": 100, "tokens": 100 * 50, "flops_per_token": per_token, "flops_total": per_token * 5000,
            "wall_time_s": wall, "val_curve": curve_points}


def test_report_gives_delta_at_equal_flops_and_wall_clock(tmp_path: Path, monkeypatch, capsys) -> None:
    url = f"sqlite:///{tmp_path / 'fair.db'}"
    store_trials(url, parse_space(SPACE), FINAL, attrs=_attrs)
    code, out, _ = cli(["report", "fair", "--format", "json", "--storage", url], monkeypatch, capsys)
    assert code == 0
    doc = json.loads(out)
    rows = {r["variant"]: r for r in doc["tables"]["variants"]}
    base = np.array(FINAL["baseline"])
    # full at equal FLOPs: B = baseline's 3e7 = full's step 3e7 / (50 · 9000) = 66.67 → 33.3 steps before its end
    full = np.array(FINAL["full"])
    at_flops = full + SLOPE * (100 - 3.0e7 / (50 * 9000.0))
    # full at equal time: B = baseline's 10 s = full's step 50 (0.2 s per step)
    at_time = full + SLOPE * 50
    # block-s2 at equal time: elapsed 1 + 0.15·step = 10 s at step 60; equal FLOPs is its final point
    block = np.array(FINAL["block-s2"])
    block_time = block + SLOPE * 40
    cases = [("full", "flops", at_flops, 3.0e7), ("full", "time", at_time, 10.0),
             ("block-s2", "flops", block, 3.0e7), ("block-s2", "time", block_time, 10.0)]
    for variant, name, losses, budget in cases:
        row = rows[variant]
        diffs = losses - base
        assert row[f"n_pairs_{name}"] == 4
        assert row[f"delta_{name}_mean"] == pytest.approx(diffs.mean(), abs=1e-12)
        half = sps.t.ppf(0.975, 3) * np.std(diffs, ddof=1) / 2
        assert row[f"delta_{name}_ci_half"] == pytest.approx(half, rel=1e-9)
        assert row[f"p_value_{name}"] == pytest.approx(sps.ttest_rel(losses, base).pvalue, rel=1e-9)
        assert row["budget_flops" if name == "flops" else "budget_time_s"] == pytest.approx(budget)
    # at equal tokens full wins; judged at the baseline's FLOPs or time it loses
    assert rows["full"]["delta_mean"] < 0 < rows["full"]["delta_flops_mean"] < rows["full"]["delta_time_mean"]
    assert rows["baseline"]["delta_flops_mean"] is None and rows["baseline"]["n_pairs_time"] == 0
    notes = " ".join(doc["notes"])
    assert "smaller of the two arms' final training FLOPs" in notes
    assert "8 of 12 trial(s) stored no elapsed time" in notes  # baseline and full; block-s2 stores it


def test_report_without_curves_says_so(tmp_path: Path, monkeypatch, capsys) -> None:
    url = f"sqlite:///{tmp_path / 'bare.db'}"
    store_trials(url, parse_space(SPACE), FINAL, attrs=lambda p, loss: {"val_curve": []})
    code, out, _ = cli(["report", "fair", "--format", "json", "--storage", url], monkeypatch, capsys)
    assert code == 0
    doc = json.loads(out)
    full = next(r for r in doc["tables"]["variants"] if r["variant"] == "full")
    assert full["n_pairs_flops"] == 0 and full["delta_flops_mean"] is None and full["delta_time_mean"] is None
    assert any("no trial stored the loss curve" in n for n in doc["notes"])


def test_training_stores_elapsed_seconds_beside_the_curve_and_reports_use_them() -> None:
    """A real run keeps one increasing elapsed time per validation point (apart from the
    curve, so resumed runs still compare equal on it), and the budget reader takes them."""
    from attnres_search.model.config import ModelConfig
    from attnres_search.reports.budgets import val_points
    from attnres_search.residual import preset
    from attnres_search.training.config import RunConfig
    from attnres_search.training.run import run

    cfg = RunConfig(model=ModelConfig(vocab_size=256, n_layers=1, d_model=16, n_heads=2, seq_len=16,
                                      residual=preset("block-s2")),
                    tokens=16 * 2 * 12, batch_size=2, val_every=4, val_windows=2, diagnostics_every=10**6)
    result = run(cfg, progress=False)
    assert [s for s, _ in result.val_curve] == [4, 8, 12]
    assert len(result.val_elapsed_s) == 3 and 0 < result.val_elapsed_s[0] < result.val_elapsed_s[1] < result.val_elapsed_s[2]
    attrs = {"val_curve": [list(p) for p in result.val_curve], "val_elapsed_s": result.val_elapsed_s}
    assert [e for _, _, e in val_points(attrs)] == result.val_elapsed_s
