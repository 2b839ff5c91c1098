"""The diagnostics file: one entry per layer, softmax rows summing to one, finite values."""

from __future__ import annotations

import json
import math

import pytest
import torch
import torch.nn.functional as F

from attnres_search.model.config import ModelConfig, preset
from attnres_search.training.diagnostics import sublayer_grad_norms, sublayer_names
from attnres_search.model.decoder import AttnResLM
from attnres_search.training.config import RunConfig
from attnres_search.training.run import run


def diagnosed_run(tmp_path, residual: str):
    model = ModelConfig(vocab_size=256, n_layers=2, d_model=32, n_heads=2, seq_len=32, residual=preset(residual))
    cfg = RunConfig(model=model, tokens=None, steps=25, batch_size=8, val_every=25, val_windows=8,
                    diagnostics_every=10, out_dir=str(tmp_path))
    result = run(cfg)
    return result, json.loads((tmp_path / "diagnostics.json").read_text())


def _finite(values) -> bool:
    return all(math.isfinite(v) for v in values)


@pytest.mark.parametrize("residual", ["block-s2", "full"])
def test_attnres_diagnostics(tmp_path, residual):
    result, doc = diagnosed_run(tmp_path, residual)
    n_layers = 4
    assert doc["layer_names"] == ["attn1", "mlp1", "attn2", "mlp2"]
    assert doc["residual"]["kind"] == preset(residual).kind
    snapshots = doc["snapshots"]
    assert [s["step"] for s in snapshots] == [10, 20, 25]  # every 10 steps and at the end
    for snap in snapshots:
        assert len(snap["output_rms"]) == n_layers and len(snap["grad_norm"]) == n_layers
        assert _finite(snap["output_rms"]) and _finite(snap["grad_norm"])
        assert all(v > 0 for v in snap["output_rms"] + snap["grad_norm"])
        assert len(snap["alpha"]) == n_layers + 1 == len(snap["sources"])
        for row, sources in zip(snap["alpha"], snap["sources"]):
            assert len(row) == len(sources) and _finite(row)
            assert sum(row) == pytest.approx(1.0, abs=1e-5)
    assert snapshots[-1]["alpha"] != snapshots[0]["alpha"]  # the mixing weights learn
    assert result.diagnostics_summary == snapshots[-1]


def test_baseline_has_no_mixing_weights(tmp_path):
    result, doc = diagnosed_run(tmp_path, "baseline")
    assert result.diagnostics_summary["alpha"] == [None] * 5
    assert len(doc["snapshots"][-1]["grad_norm"]) == 4


def test_sigmoid_gates_are_recorded_unnormalised(tmp_path):
    _, doc = diagnosed_run(tmp_path, "full-sigmoid")
    rows = doc["snapshots"][-1]["alpha"]
    assert all(0 < v < 1 for row in rows for v in row)
    assert any(abs(sum(row) - 1) > 0.1 for row in rows)


def test_grad_norm_per_sublayer_matches_a_direct_computation():
    torch.manual_seed(0)
    model = AttnResLM(ModelConfig(vocab_size=64, n_layers=1, d_model=16, n_heads=2, seq_len=8, residual=preset("full")))
    idx = torch.randint(0, 64, (2, 9))
    F.cross_entropy(model(idx[:, :-1]).flatten(0, 1), idx[:, 1:].flatten()).backward()
    expected = [torch.cat([p.grad.flatten() for p in layer.parameters()]).norm().item() for layer in model.sublayers]
    assert sublayer_grad_norms(model) == pytest.approx(expected, rel=1e-5)
    assert sublayer_names(4) == ["attn1", "mlp1", "attn2", "mlp2"]


@pytest.mark.parametrize("residual", ["baseline", "highway", "full"])
def test_every_rule_records_its_mixing_matrix(tmp_path, residual):
    """``mixing`` rows of M for every rule (the plain residual's stay all ones, Highway's
    rows are convex combinations), ``sinks`` for AttnRes rules only."""
    result, doc = diagnosed_run(tmp_path, residual)
    for snap in doc["snapshots"]:
        mixing = snap["mixing"]
        assert mixing["sources"] == ["v0", "f1", "f2", "f3", "f4"]
        assert [len(r) for r in mixing["mean"]] == [1, 2, 3, 4, 5] == [len(r) for r in mixing["std"]]
        assert _finite(v for row in mixing["mean"] + mixing["std"] for v in row)
        if residual == "baseline":
            assert mixing["mean"] == [[1.0] * n for n in range(1, 6)]
            assert all(v == 0.0 for row in mixing["std"] for v in row)
        else:
            assert all(sum(row) == pytest.approx(1.0, abs=1e-5) for row in mixing["mean"])
            assert any(v > 0 for row in mixing["std"][1:] for v in row)  # input-dependent: differs per token
        if residual == "full":
            sinks = snap["sinks"]
            assert (sinks["k"], sinks["p"]) == (2.0, 0.9)
            assert [len(r) for r in sinks["fraction"]] == [len(r) for r in snap["alpha"]]
            assert all(0.0 <= f <= 1.0 for row in sinks["fraction"] for f in row)
            assert {(s["point"], s["source"]) for s in sinks["flagged"]} == {
                (i, j) for i, row in enumerate(sinks["fraction"]) for j, f in enumerate(row) if f >= 0.9}
        else:
            assert snap["sinks"] is None
    if residual == "highway":  # the gates learn: M moves off its initial geometric rows
        g = 1 / (1 + math.exp(2))
        assert doc["snapshots"][-1]["mixing"]["mean"][4][0] != pytest.approx((1 - g) ** 4, abs=1e-4)
    assert result.diagnostics_summary["mixing"] == doc["snapshots"][-1]["mixing"]
