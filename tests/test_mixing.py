"""The effective depth-mixing matrix M of every rule, the Highway rule, and depth-wise
attention sinks, checked in float64 against the layer inputs and hand-written equations."""

from __future__ import annotations

import math
from typing import Any, Callable

import pytest
import torch

from attnres_search.model.decoder import AttnResLM
from attnres_search.model.flops import count_params, flops_per_token
from attnres_search.residual import PRESETS, ResidualConfig, preset
from attnres_search.residual.mixing import (SINK_K, SINK_P, apply_row, flag_sinks, sink_fractions, source_names,
                                            summarize)

STATIC = {"baseline", "rezero", "denseformer", "hc", "full-static"}  # M the same for every token
SIGMA = 1 / (1 + math.exp(2.0))  # Highway's gate at initialisation, sigmoid(-2)


def _randomize(model: AttnResLM, seed: int, scale: float = 0.5) -> None:
    """Random values for the residual parameters, so every weight, gate and map differs
    from its initialisation (zero pseudo-queries would make every token alike)."""
    g = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for p in model.residual.parameters():
            p.add_(torch.randn(p.shape, generator=g, dtype=p.dtype) * scale)


def _forward(model: AttnResLM, layer_io: Callable[..., Any], seed: int = 5) -> tuple[list, list, list]:
    inputs, outputs, head = layer_io(model)
    idx = torch.randint(0, 64, (2, 16), generator=torch.Generator().manual_seed(seed))
    with torch.no_grad():
        model(idx, record=True, keep_mixing=True)
    sources = [model.embed(idx).detach()] + outputs
    return inputs + head, sources, model.recorded["mixing_rows"]


@pytest.mark.parametrize("name", list(PRESETS))
def test_every_layer_input_is_its_row_of_M_times_the_sources(name: str, tiny_config, layer_io) -> None:
    """h_l = sum_i M_{i->l} v_i per token (and channel group), to 1e-12 in float64, for each
    sublayer and the head; M varies over tokens exactly for the input-dependent rules."""
    torch.manual_seed(3)
    model = AttnResLM(tiny_config(preset(name))).double()
    _randomize(model, 4)
    targets, sources, rows = _forward(model, layer_io)
    n_points = model.cfg.n_sublayers + 1
    assert len(rows) == len(targets) == n_points
    for l, (row, target) in enumerate(zip(rows, targets)):
        assert row.shape[:-1] == (2, 16, l + 1) and row.dtype == torch.float64
        torch.testing.assert_close(apply_row(row, sources[: l + 1]), target, atol=1e-12, rtol=0)
    spread = max(float(row.std(dim=(0, 1)).max()) for row in rows)
    if name in STATIC:
        assert spread == 0.0
    else:
        assert spread > 1e-6
    mixing = model.recorded["mixing"]
    assert mixing["sources"] == source_names(model.cfg.n_sublayers)
    for l, row in enumerate(rows):
        expected = row.mean(dim=(0, 1, 3))
        assert mixing["mean"][l] == pytest.approx(expected.tolist(), abs=1e-12)


def _m_at_init(name: str, n_sub: int) -> list[list[float]]:
    """Each rule's M at initialisation, from its definition (rows 0..L, L = the head)."""
    cfg = preset(name)
    rows = []
    for l in range(n_sub + 1):
        if name in ("baseline", "denseformer", "mhc", "mhc-lite", "hc", "hc-dynamic"):
            row = [1.0] * (l + 1)  # each starts exactly as the plain residual
        elif name == "rezero":
            row = [1.0] + [0.0] * l  # every sublayer switched off
        elif name == "highway":
            row = [(1 - SIGMA) ** l] + [SIGMA * (1 - SIGMA) ** (l - j) for j in range(1, l + 1)]
        elif name == "full-sigmoid":
            row = [0.5] * (l + 1)  # sigmoid(0) per source, not renormalised
        elif cfg.kind == "full" and cfg.window is not None:
            read = [0] + list(range(max(1, l + 1 - cfg.window), l + 1))
            row = [1.0 / len(read) if j in read else 0.0 for j in range(l + 1)]
        else:  # softmax over the sources read, uniform; a block's weight on each member
            s = 1 if cfg.kind == "full" else (cfg.block_size or n_sub // cfg.num_blocks)
            n_read = 1 + l // s + (1 if l % s else 0)
            row = [1.0 / n_read] * (l + 1)
        rows.append(row)
    return rows


@pytest.mark.parametrize("name", list(PRESETS))
def test_M_at_initialisation_is_what_each_rule_starts_as(name: str, tiny_config) -> None:
    """The closed form of every rule's M at step 0 (the list the issue's closing note gives),
    on every token."""
    torch.manual_seed(6)
    n_layers = 5 if name == "swa-8" else None  # 10 sublayers: the window cuts the head's sources
    model = AttnResLM(tiny_config(preset(name), n_layers=n_layers)).double()
    idx = torch.randint(0, 64, (2, 16))
    with torch.no_grad():
        model(idx, record=True)
    mixing = model.recorded["mixing"]
    expected = _m_at_init(name, model.cfg.n_sublayers)
    # mHC's H_pre = sigmoid(log(1/3)) = 1/4 from a bias stored in float32 before .double():
    # each row sums its four streams' 1/4 to 1 within 2e-8.
    tol = 1e-7 if name.startswith("mhc") else 1e-12
    for got, want, std in zip(mixing["mean"], expected, mixing["std"]):
        assert got == pytest.approx(want, abs=tol)
        assert max(std) < 1e-12


# ----------------------------------------------------------------------------------- Highway

def test_highway_matches_its_equations_in_float64(tiny_config, layer_io) -> None:
    """h_{l+1} = (1 - g_l) h_l + g_l f_l, g_l = sigmoid(w_l . h_l / rms(h_l) + b_l), written out."""
    torch.manual_seed(7)
    model = AttnResLM(tiny_config(preset("highway"))).double()
    _randomize(model, 8)
    inputs, outputs, head = layer_io(model)
    idx = torch.randint(0, 64, (2, 16))
    model(idx)
    w, b = model.residual.gate_weight, model.residual.gate_bias
    h = model.embed(idx)
    gates = []
    for l in range(model.cfg.n_sublayers):
        torch.testing.assert_close(inputs[l], h, atol=1e-12, rtol=0)
        x = h / torch.sqrt((h * h).mean(-1, keepdim=True) + 1e-6)
        g = 1 / (1 + torch.exp(-((x * w[l]).sum(-1, keepdim=True) + b[l])))
        gates.append(g)
        h = (1 - g) * h + g * outputs[l]
    torch.testing.assert_close(head[0], h, atol=1e-12, rtol=0)
    assert torch.cat(gates).std() > 0.01  # input-dependent gates, not one value


def test_highway_starts_carrying_and_its_gate_learns_from_step_0(tiny_config) -> None:
    model = AttnResLM(tiny_config(preset("highway")))
    assert torch.equal(model.residual.gate_bias, torch.full((4,), -2.0))
    assert torch.equal(model.residual.gate_weight, torch.zeros(4, 32))
    idx = torch.randint(0, 64, (2, 16))
    torch.nn.functional.cross_entropy(model(idx).flatten(0, 1), idx.flatten()).backward()
    assert (model.residual.gate_weight.grad.abs().sum(-1) > 0).all()
    assert (model.residual.gate_bias.grad.abs() > 0).all()
    assert ResidualConfig("highway", carry_bias=-1).carry_bias == -1
    for bad in (float("nan"), "x", True):
        with pytest.raises(ValueError, match="carry_bias"):
            ResidualConfig("highway", carry_bias=bad)


@pytest.mark.parametrize("n_layers, d_model", [(2, 32), (3, 48)])
def test_highway_flops_and_parameters_by_arithmetic(n_layers: int, d_model: int, tiny_config) -> None:
    """Per sublayer: d + 1 parameters (w_l, b_l); 8d FLOPs (RMSNorm 3d, dot 2d, blend 3d)."""
    cfg = tiny_config(preset("highway"), n_layers=n_layers, d_model=d_model)
    n_sub = 2 * n_layers
    assert count_params(cfg)["residual"] == n_sub * (d_model + 1)
    assert sum(p.numel() for p in AttnResLM(cfg).residual.parameters()) == n_sub * (d_model + 1)
    assert flops_per_token(cfg)["residual"] == 8 * n_sub * d_model


# ------------------------------------------------------------------------------------- sinks

def _sink_model(tiny_config, sink: bool) -> AttnResLM:
    """Full AttnRes in float64. With ``sink``, every embedding carries 1.0 on channel 0 and
    every pseudo-query reads that channel with weight 10, so the embedding's logit (~10 ·
    sqrt(d)) towers over every sublayer output's whatever the token."""
    torch.manual_seed(9)
    model = AttnResLM(tiny_config(preset("full"))).double()
    if sink:
        with torch.no_grad():
            model.embed.weight[:, 0] = 1.0
            model.residual.queries[:, 0] = 10.0
    return model


def test_a_hand_set_pseudo_query_makes_the_embedding_a_sink(tiny_config) -> None:
    model = _sink_model(tiny_config, sink=True)
    with torch.no_grad():
        model(torch.randint(0, 64, (4, 16)), record=True)
    sinks = model.recorded["sinks"]
    assert sinks["k"] == SINK_K and sinks["p"] == SINK_P
    # Point l reads l + 1 sources; with 1 or 2 of them no weight can exceed 2 x uniform.
    assert [(s["point"], s["source"], s["label"]) for s in sinks["flagged"]] == [(2, 0, "b0"), (3, 0, "b0"), (4, 0, "b0")]
    assert all(s["fraction"] == 1.0 and s["members"] == [0] for s in sinks["flagged"])
    assert model.recorded["mixing"]["mean"][4][0] > 0.99  # the head reads almost only the embedding


def test_without_a_sink_nothing_is_flagged(tiny_config) -> None:
    model = _sink_model(tiny_config, sink=False)  # zero pseudo-queries: uniform on every token
    with torch.no_grad():
        model(torch.randint(0, 64, (4, 16)), record=True)
    sinks = model.recorded["sinks"]
    assert sinks["flagged"] == []
    assert all(f == 0.0 for row in sinks["fraction"] for f in row)
    baseline = AttnResLM(tiny_config(preset("baseline")))
    with torch.no_grad():
        baseline(torch.randint(0, 64, (1, 8)), record=True)
    assert baseline.recorded["sinks"] is None  # not an AttnRes rule: no sources of its own to sink into


def test_sink_fractions_count_tokens_above_k_times_uniform() -> None:
    # 3 sources, 4 tokens, 1 head: source 0 above 2/3 on tokens 0-2 only; exactly 2/3 is not above.
    w = torch.tensor([[0.7, 0.8, 0.9, 2 / 3], [0.2, 0.1, 0.05, 1 / 6], [0.1, 0.1, 0.05, 1 / 6]]).unsqueeze(-1)
    assert sink_fractions(w) == pytest.approx([0.75, 0.0, 0.0])
    # sigmoid gates are judged by their share of the row: (0.9, 0.05, 0.05) of a sum of 1 or of 2
    assert sink_fractions(torch.tensor([[0.9], [0.05], [0.05]]).unsqueeze(-1) * 2) == [1.0, 0.0, 0.0]
    labels = [["b0"], ["b0", "f1"], ["b0", "f1", "f2"]]
    members = [[[0]], [[0], [1]], [[0], [1], [2]]]
    fractions = [[0.0], [1.0, 0.0], [0.9, 0.1, 0.89]]
    assert [(s["point"], s["source"]) for s in flag_sinks(fractions, labels, members, p=0.9)] == [(1, 0), (2, 0)]


def test_summary_of_known_rows() -> None:
    ones = [[1.0] * (l + 1) for l in range(5)]
    s = summarize(ones, [[0.0] * (l + 1) for l in range(5)])
    # points 1..4 read 2..5 sources uniformly: mean distance (l + 2) / 2, embedding share 1 / (l + 1)
    assert s.effective_depth == pytest.approx(sum((l + 2) / 2 for l in range(1, 5)) / 4)
    assert s.embedding_share == pytest.approx(sum(1 / (l + 1) for l in range(1, 5)) / 4)
    assert s.distance_from_uniform == 0.0 and s.spread == 0.0
    newest = summarize([[0.0] * l + [1.0] for l in range(1, 5)])  # only the newest output
    assert newest.effective_depth == 1.0 and newest.embedding_share == 0.0
    assert newest.distance_from_uniform == pytest.approx(sum(1 - 1 / (l + 1) for l in range(1, 5)) / 4)
