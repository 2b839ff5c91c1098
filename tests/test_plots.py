"""Figures of a run: every PNG is written, non-empty and a real PNG."""

from __future__ import annotations

import json
import shutil

import pytest

from attnres_search.model.config import ModelConfig, preset
from attnres_search.reports.run_plots import plot_run
from attnres_search.training.config import RunConfig
from attnres_search.training.run import run

PNG_MAGIC = b"\x89PNG\r\n\x1a\n"


def finished_run(directory, residual: str):
    model = ModelConfig(vocab_size=256, n_layers=1, d_model=32, n_heads=2, seq_len=32, residual=preset(residual))
    run(RunConfig(model=model, tokens=None, steps=20, batch_size=8, val_every=10, val_windows=8,
                  diagnostics_every=10, out_dir=str(directory)))
    return directory / "run.json"


def assert_pngs(paths, names):
    assert sorted(p.name for p in paths) == sorted(names)
    for path in paths:
        content = path.read_bytes()
        assert len(content) > 1000 and content.startswith(PNG_MAGIC)


def test_attnres_run_gets_all_five_figures(tmp_path):
    paths = plot_run(finished_run(tmp_path / "run", "block-s2"), tmp_path / "figs")
    assert_pngs(paths, ["loss.png", "output_rms.png", "grad_norm.png", "depth_mixing.png", "mixing.png"])


@pytest.mark.parametrize("residual", ["baseline", "highway"])
def test_other_rules_get_their_mixing_matrix_but_no_alpha_heatmap(tmp_path, residual):
    paths = plot_run(finished_run(tmp_path / "run", residual), tmp_path / "figs")
    assert_pngs(paths, ["loss.png", "output_rms.png", "grad_norm.png", "mixing.png"])


def test_run_json_alone_falls_back_to_the_final_snapshot(tmp_path):
    """A run.json copied off the training machine, without its diagnostics.json."""
    run_json = finished_run(tmp_path / "run", "full")
    alone = tmp_path / "copied" / "run.json"
    alone.parent.mkdir()
    shutil.copy(run_json, alone)
    record = json.loads(alone.read_text())
    record["diagnostics_path"] = str(tmp_path / "gone" / "diagnostics.json")
    alone.write_text(json.dumps(record))
    assert len(plot_run(alone, tmp_path / "figs")) == 5


def test_unreadable_run_file_is_a_value_error(tmp_path):
    bad = tmp_path / "run.json"
    bad.write_text("{not json")
    with pytest.raises(ValueError, match="cannot read run file"):
        plot_run(bad, tmp_path / "figs")
