"""The report's depth-mixing section and figure: every variant's M side by side on one colour
scale, the table's numbers against a hand computation, and sinks printed and framed."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import matplotlib.image as mpimg
import numpy as np
import pytest

from attnres_search.reports.mixing_plots import shared_scale
from attnres_search.study.space_file import parse_space
from tests.cli_runner import cli
from tests.report_synth import store_trials

SPACE = """
name: mix
model: {n_layers: 2, d_model: 32, n_heads: 2, seq_len: 32}
train: {tokens: 10k, batch_size: 4}
variants: [baseline, full, highway]
seeds: 3
"""
LOSSES = {"baseline": [3.00, 3.10, 2.95], "full": [2.90, 3.02, 2.91], "highway": [2.95, 3.05, 2.93]}
N_SUB = 4


def _mixing(variant: str) -> list[list[float]]:
    if variant == "baseline":
        return [[1.0] * (l + 1) for l in range(N_SUB + 1)]
    if variant == "full":  # the embedding draws half of every row
        return [[1.0]] + [[0.5] + [0.5 / l] * l for l in range(1, N_SUB + 1)]
    g = 0.25  # Highway with one constant gate
    return [[(1 - g) ** l] + [g * (1 - g) ** (l - j) for j in range(1, l + 1)] for l in range(N_SUB + 1)]


def _sinks(variant: str, seed: int, sink: bool) -> dict[str, Any] | None:
    if variant != "full":
        return None
    flagged = [{"point": 3, "source": 0, "label": "b0", "fraction": 0.95, "members": [0]}] if sink and seed < 2 else []
    return {"k": 2.0, "p": 0.9, "fraction": [], "members": [], "flagged": flagged}


def _store(url: str, sink: bool = True, with_mixing: bool = True) -> None:
    def attrs(params: dict[str, Any], loss: float) -> dict[str, Any]:
        variant, seed = params["variant"], params["seed"]
        summary: dict[str, Any] = {"step": 20, "output_rms": [1.0] * N_SUB, "grad_norm": [1.0] * N_SUB,
                                   "alpha": [None] * (N_SUB + 1)}
        if with_mixing:
            std = [[0.0 if variant == "baseline" else 0.01 * (seed + 1)] * (l + 1) for l in range(N_SUB + 1)]
            summary.update(mixing={"mean": _mixing(variant), "std": std,
                                   "sources": ["v0"] + [f"f{i}" for i in range(1, N_SUB + 1)]},
                           sinks=_sinks(variant, seed, sink))
            if variant == "full":
                summary["alpha"] = _mixing("full")
        return {"steps": 20, "tokens": 2560, "wall_time_s": 4.0, "diagnostics_summary": summary,
                "val_curve": [[s, loss + 0.05 * (20 - s)] for s in (5, 10, 15, 20)]}

    store_trials(url, parse_space(SPACE), LOSSES, attrs=attrs)


def _report(tmp_path: Path, monkeypatch, capsys, **store: Any) -> dict[str, Any]:
    url = f"sqlite:///{tmp_path / 'mix.db'}"
    _store(url, **store)
    code, out, err = cli(["report", "mix", "--format", "json", "--storage", url], monkeypatch, capsys)
    assert code == 0, err
    return json.loads(out)


def test_the_report_table_reads_M_per_variant(tmp_path: Path, monkeypatch, capsys) -> None:
    rows = {r["variant"]: r for r in _report(tmp_path, monkeypatch, capsys)["tables"]["mixing"]}
    base, full, hw = rows["baseline"], rows["full"], rows["highway"]
    assert base["n"] == full["n"] == hw["n"] == 3
    # baseline: points l = 1..4 read l + 1 sources with equal weight
    assert base["effective_depth"] == pytest.approx(np.mean([(l + 2) / 2 for l in range(1, 5)]))
    assert base["embedding_share"] == pytest.approx(np.mean([1 / (l + 1) for l in range(1, 5)]))
    assert base["distance_from_uniform"] == 0.0 and base["spread"] == 0.0
    assert base["row_sum"] == pytest.approx(np.mean([1, 2, 3, 4, 5]))
    # full: half on the embedding (distance l + 1), half spread over f_1..f_l (distance l + 1 - j)
    depth = [0.5 * (l + 1) + sum(0.5 / l * (l + 1 - j) for j in range(1, l + 1)) for l in range(1, 5)]
    assert full["effective_depth"] == pytest.approx(np.mean(depth))
    assert full["embedding_share"] == pytest.approx(0.5)
    assert full["distance_from_uniform"] == pytest.approx(np.mean([0.5 - 1 / (l + 1) for l in range(1, 5)]))
    # spread: sum of std over sum |M| (rows sum to 1), mean over seeds of 0.01 (seed + 1) (l + 1)
    assert full["spread"] == pytest.approx(np.mean([0.02 * (l + 1) for l in range(1, 5)]))
    assert full["sinks"] == "mlp2←b0 (2/3)" and base["sinks"] is None and hw["sinks"] is None
    g = 0.25
    assert hw["embedding_share"] == pytest.approx(np.mean([(1 - g) ** l for l in range(1, 5)]))


def test_the_table_prints_sinks_and_old_studies_have_no_section(tmp_path: Path, monkeypatch, capsys) -> None:
    url = f"sqlite:///{tmp_path / 'mix.db'}"
    _store(url)
    code, out, err = cli(["report", "mix", "--storage", url], monkeypatch, capsys)
    assert code == 0, err
    assert "Effective depth-mixing matrix M" in out and "mlp2←b0 (2/3)" in out
    (tmp_path / "old").mkdir()
    old = _report(tmp_path / "old", monkeypatch, capsys, with_mixing=False)  # diagnostics from before M
    assert "mixing" not in old["tables"]


def _red_pixels(path: Path) -> int:
    rgb = mpimg.imread(path)[..., :3]
    return int(((rgb[..., 0] > 0.9) & (rgb[..., 1] < 0.15) & (rgb[..., 2] < 0.15)).sum())


def test_plots_draw_every_variants_M_and_frame_the_sinks(tmp_path: Path, monkeypatch, capsys) -> None:
    url = f"sqlite:///{tmp_path / 'mix.db'}"
    _store(url)
    figs = tmp_path / "figs"
    code, _, err = cli(["report", "mix", "--plots", str(figs), "--storage", url], monkeypatch, capsys)
    assert code == 0, err
    image = mpimg.imread(figs / "mixing_matrix.png")
    assert image.shape[1] > 1.5 * image.shape[0]  # three panels in a row
    assert _red_pixels(figs / "mixing_matrix.png") > 20  # flagged in 2 of 3 seeds: a majority, framed
    assert _red_pixels(figs / "depth_mixing.png") > 20
    for variant in ("baseline", "highway", "full"):  # each run's own M
        assert (figs / "runs" / variant / "mixing.png").exists()


def test_no_frame_without_a_sink(tmp_path: Path) -> None:
    import optuna

    from attnres_search.reports.records import load_records
    from attnres_search.reports.variant_plots import depth_mixing_plots, mixing_matrix_plots

    url = f"sqlite:///{tmp_path / 'mix.db'}"
    _store(url, sink=False)
    records = load_records(optuna.load_study(study_name="mix", storage=url), parse_space(SPACE))
    drawn = mixing_matrix_plots(records, "t", tmp_path) + depth_mixing_plots(records, "t", tmp_path)
    assert [p.name for p in drawn] == ["mixing_matrix.png", "depth_mixing.png"]
    assert all(_red_pixels(p) == 0 for p in drawn)


def test_one_colour_scale_covers_every_panel() -> None:
    a, b = np.array([[1.0, np.nan], [0.5, 0.5]]), np.array([[3.0, np.nan], [0.1, 0.2]])
    norm, cmap = shared_scale([a, b])
    assert (norm.vmin, norm.vmax) == (0.0, 3.0) and cmap.name.startswith("viridis")
    norm, cmap = shared_scale([a, -b])  # a negative weight (trained DenseFormer, HC): diverging, symmetric
    assert (norm.vmin, norm.vmax) == (-3.0, 3.0) and cmap.name.startswith("RdBu_r")
    assert norm(0.0) == pytest.approx(0.5)
