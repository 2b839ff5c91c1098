"""`report --plots`: the figures drawn from every seed (loss curves with bands, forest plot,
depth-mixing heatmaps side by side, output-RMS and gradient-norm profiles) are written and
hold a picture; the numbers they draw are the mean over seeds (numpy/scipy references)."""

from __future__ import annotations

import math
from pathlib import Path
from typing import Any

import matplotlib.image as mpimg
import numpy as np
import pytest

from attnres_search.reports.plots import optimum_marker
from attnres_search.reports.variant_plots import mean_curve, mean_matrix, mean_profile
from attnres_search.study.space_file import parse_space
from tests.cli_runner import cli
from tests.report_synth import store_trials

SPACE = """
name: pics
model: {n_layers: 2, d_model: 32, n_heads: 2, seq_len: 32}
train: {tokens: 10k, batch_size: 4}
variants: [baseline, full, block-s2]
seeds: 3
"""
LOSSES = {"baseline": [3.00, 3.10, 2.95], "full": [2.90, 3.02, 2.91], "block-s2": [2.92, 3.05, 2.90]}
N_SUB = 4  # 2 blocks = 4 sublayers


def _alpha(variant: str, seed: int) -> list[list[float] | None]:
    """A made-up mean α per reading point (4 sublayers + head): point i reads i + 1 sources."""
    if variant == "baseline":
        return [None] * (N_SUB + 1)
    rows = []
    for i in range(N_SUB + 1):
        w = np.arange(1, i + 2, dtype=float) ** (2 if variant == "full" else 0.5) + seed
        rows.append(list(w / w.sum()))
    return rows


def _attrs(params: dict[str, Any], loss: float) -> dict[str, Any]:
    variant, seed = params["variant"], params["seed"]
    growth = {"baseline": 1.5, "full": 1.1, "block-s2": 1.25}[variant]  # output RMS per sublayer: ×growth
    spread = {"baseline": 2.0, "full": 1.0, "block-s2": 0.5}[variant]  # gradient norms fall off with depth
    return {"steps": 20, "tokens": 20 * 128, "flops_per_token": 6e3 if variant == "baseline" else 7e3,
            "wall_time_s": 4.0 if variant == "baseline" else 5.0,
            "val_curve": [[s, loss + 0.05 * (20 - s)] for s in (5, 10, 15, 20)],
            "diagnostics_summary": {"step": 20, "output_rms": [growth ** i * (1 + 0.1 * seed) for i in range(N_SUB)],
                                    "grad_norm": [1.0 / (i + 1) ** spread + 0.05 * seed for i in range(N_SUB)],
                                    "alpha": _alpha(variant, seed), "sources": [["b0"]]}}


def _picture(path: Path) -> np.ndarray:
    image = mpimg.imread(path)
    assert image.ndim == 3 and image.shape[0] > 200 and image.shape[1] > 300
    return image


TAB10 = {"C0": (0x1F, 0x77, 0xB4), "C1": (0xFF, 0x7F, 0x0E), "C2": (0x2C, 0xA0, 0x2C), "paper": (0xDC, 0x14, 0x3C)}


def _pixels_of(image: np.ndarray, rgb: tuple[int, int, int]) -> int:
    """How many pixels have (almost exactly) this colour: a line or marker drawn in it."""
    return int((np.abs(image[..., :3] - np.array(rgb) / 255).max(axis=2) < 0.02).sum())


def _assert_drawn(path: Path, colours: tuple[str, ...] = ()) -> None:
    """A real figure, not an empty frame: an empty axes with a title is all greys (text and
    frame are antialiased black), so it needs coloured pixels, and each named series colour."""
    image = _picture(path)
    rgb = image[..., :3]
    assert ((rgb.max(axis=2) - rgb.min(axis=2)) > 0.2).mean() > 0.001
    for name in colours:
        assert _pixels_of(image, TAB10[name]) > 100, f"{path.name}: no {name} series drawn"


def test_report_plots_write_every_seed_figure(tmp_path: Path, monkeypatch, capsys) -> None:
    url = f"sqlite:///{tmp_path / 'pics.db'}"
    store_trials(url, parse_space(SPACE), LOSSES, attrs=_attrs)
    figs = tmp_path / "figs"
    code, _, err = cli(["report", "pics", "--plots", str(figs), "--storage", url], monkeypatch, capsys)
    assert code == 0, err
    _assert_drawn(figs / "loss_curves.png", ("C0", "C1", "C2"))  # one line per variant
    _assert_drawn(figs / "profiles.png", ("C0", "C1", "C2"))
    _assert_drawn(figs / "forest.png", ("C0", "C1", "C2", "paper"))  # Δ at tokens, FLOPs, time; paper's Δ
    _assert_drawn(figs / "variants.png")
    _assert_drawn(figs / "depth_mixing.png")
    image = _picture(figs / "depth_mixing.png")[..., :3]
    assert ((image.max(axis=2) - image.min(axis=2)) > 0.2).mean() > 0.1  # heatmaps fill the panels
    # the heatmap figure holds two panels (full and block-s2; the baseline has no α) side by
    # side, so it is much wider than tall; the profile figure has two panels too
    mixing = _picture(figs / "depth_mixing.png")
    assert mixing.shape[1] > 1.5 * mixing.shape[0]
    assert (figs / "runs" / "full" / "loss.png").exists()  # the first seed's own figures are still drawn
    assert "figure(s)" in err


def test_plots_accept_curves_with_elapsed_seconds(tmp_path: Path, monkeypatch, capsys) -> None:
    """A val_curve of [step, loss, elapsed_s] points draws like [step, loss] (the run figures too)."""
    url = f"sqlite:///{tmp_path / 'pics.db'}"

    def attrs(params: dict[str, Any], loss: float) -> dict[str, Any]:
        out = _attrs(params, loss)
        out["val_curve"] = [[s, v, 0.25 * s] for s, v in out["val_curve"]]
        return out

    store_trials(url, parse_space(SPACE), LOSSES, attrs=attrs)
    code, _, err = cli(["report", "pics", "--plots", str(tmp_path / "f"), "--storage", url], monkeypatch, capsys)
    assert code == 0, err
    _assert_drawn(tmp_path / "f" / "loss_curves.png", ("C0", "C1", "C2"))
    assert (tmp_path / "f" / "runs" / "baseline" / "loss.png").exists()


def test_mean_curve_is_the_mean_over_seeds_with_their_range() -> None:
    steps = [10, 20, 30, 40]
    seeds = [[3.0, 2.5, 2.2, 2.0], [3.2, 2.6, 2.4, 2.1], [2.9, 2.4, 2.1, 1.9]]
    curve = mean_curve([(steps, s) for s in seeds])
    values = np.array(seeds)
    assert curve is not None and curve.n == 3
    np.testing.assert_allclose(curve.x, steps)
    np.testing.assert_allclose(curve.mean, values.mean(axis=0), rtol=1e-15)
    np.testing.assert_array_equal(curve.low, [2.9, 2.4, 2.1, 1.9])
    np.testing.assert_array_equal(curve.high, [3.2, 2.6, 2.4, 2.1])
    # a seed validated at other steps is interpolated onto the first seed's grid, inside the common range
    shifted = mean_curve([(steps, seeds[0]), ([15, 25, 35, 45], [2.8, 2.3, 2.1, 2.0])])
    assert shifted is not None
    np.testing.assert_allclose(shifted.x, [20, 30, 40])
    np.testing.assert_allclose(shifted.mean, [(2.5 + 2.55) / 2, (2.2 + 2.2) / 2, (2.0 + 2.05) / 2])
    single = mean_curve([(steps, seeds[0])])
    assert single is not None and single.n == 1 and list(single.low) == list(single.high) == seeds[0]
    assert mean_curve([]) is None


def test_mean_matrix_and_profile() -> None:
    a = [[1.0], [0.25, 0.75], [0.2, 0.3, 0.5]]
    b = [[1.0], [0.75, 0.25], [0.4, 0.3, 0.3]]
    m = mean_matrix([a, b, [None, None, None]])  # a rule without α is left out
    assert m is not None and m.shape == (3, 3)
    np.testing.assert_allclose(m[1, :2], [0.5, 0.5])
    np.testing.assert_allclose(m[2], [0.3, 0.3, 0.4])
    assert math.isnan(m[0, 1]) and math.isnan(m[0, 2])
    assert mean_matrix([[None, None]]) is None
    prof = mean_profile([[1.0, 2.0, 4.0], [3.0, 2.0, 6.0], [1.0]])  # another depth is left out
    assert prof is not None
    mean, low, high = prof
    np.testing.assert_allclose(mean, [2.0, 2.0, 5.0])
    np.testing.assert_allclose(low, [1.0, 2.0, 4.0])
    np.testing.assert_allclose(high, [3.0, 2.0, 6.0])
    assert mean_profile([]) is None


@pytest.mark.parametrize("kind", ["depth-width"])
def test_depth_width_plots_one_figure_per_shape(kind: str, tmp_path: Path, monkeypatch, capsys) -> None:
    space = parse_space("""
name: dwp
model: {seq_len: 32}
train: {batch_size: 4}
variants: [baseline, full]
shapes: {ratios: [4, 8, 16], params: 200k, head_dim: 4}
budget: {flops: 1.0e11}
seeds: 2
""")
    losses = {(("variant", v), ("ratio", r)): [2.0 + 0.01 * r + d, 2.01 + 0.01 * r + d]
              for v, d in (("baseline", 0.0), ("full", -0.02)) for r in (4, 8, 16)}

    def attrs(params: dict[str, Any], loss: float) -> dict[str, Any]:
        n_sub = 2 * space.run_config(params).model.n_layers
        growth = 1.0 if params["variant"] == "full" else 2.0  # different profiles, so neither line hides the other
        return {"steps": 20, "flops_per_token": 1e4, "wall_time_s": 2.0,
                "val_curve": [[10, loss + 0.1], [20, loss]],
                "diagnostics_summary": {"step": 20, "output_rms": [1.0 + growth * i for i in range(n_sub)],
                                        "grad_norm": [1.0 / (i + 1) ** growth for i in range(n_sub)],
                                        "alpha": [[1.0 / (i + 1)] * (i + 1) for i in range(n_sub + 1)]
                                        if params["variant"] == "full" else [None] * (n_sub + 1)}}

    url = f"sqlite:///{tmp_path / 'dwp.db'}"
    store_trials(url, space, losses, attrs=attrs)
    figs = tmp_path / "figs"
    code, _, err = cli(["report", "dwp", kind, "--plots", str(figs), "--storage", url], monkeypatch, capsys)
    assert code == 0, err
    for ratio in (4, 8, 16):
        _assert_drawn(figs / f"profiles_ratio-{ratio}.png", ("C0", "C1"))
        _assert_drawn(figs / f"depth_mixing_ratio-{ratio}.png")
    _assert_drawn(figs / "forest.png", ("C0",))
    _assert_drawn(figs / "loss_curves.png", tuple(f"C{i}" for i in range(3)))  # 6 lines: (variant, ratio)


def test_an_optimum_at_the_grids_edge_is_drawn_as_an_arrow_off_the_grid() -> None:
    assert optimum_marker({"interior": True, "bracketed": "widest"}) == "*"  # the fit's vertex lies inside
    assert optimum_marker({"interior": False, "bracketed": "widest"}) == ">"
    assert optimum_marker({"interior": False, "bracketed": "deepest"}) == "<"
    assert optimum_marker({"interior": False, "bracketed": "yes"}) == "*"  # a concave fit, best shape inside
