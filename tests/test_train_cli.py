"""``attnres-search train`` and ``plot`` through click's CliRunner."""

from __future__ import annotations

import json
from pathlib import Path

from click.testing import CliRunner

from attnres_search.cli.train_cmd import _si, plot, train

TINY = ["--layers", "1", "--width", "32", "--heads", "2", "--seq-len", "32", "--batch-size", "8",
        "--val-every", "10", "--val-windows", "8"]


def test_train_json_then_plot(tmp_path):
    out = tmp_path / "run"
    result = CliRunner().invoke(train, [*TINY, "--preset", "block-s2", "--tokens", "5k", "--seed", "3",
                                        "--optimizer", "muon", "--out", str(out), "--json"])
    assert result.exit_code == 0, result.output
    record = json.loads(result.output)
    assert record["steps"] == 5000 // (8 * 32) and record["tokens"] == 19 * 8 * 32
    for field in ("params_total", "flops_per_token", "tokens_per_s", "final_val_loss", "best_val_loss",
                  "final_val_bpb", "wall_time_s", "val_curve", "versions", "data_hash"):
        assert field in record
    assert record["config"]["seed"] == 3 and record["config"]["optimizer"] == "muon"
    assert record["config"]["model"]["residual"]["kind"] == "block"
    assert (out / "run.json").exists()

    figures = CliRunner().invoke(plot, [str(out / "run.json"), "--out", str(tmp_path / "figs")])
    assert figures.exit_code == 0, figures.output
    paths = [Path(p) for p in figures.output.split()]
    assert len(paths) == 4 and all(p.parent == tmp_path / "figs" and p.stat().st_size > 0 for p in paths)


def test_train_table_with_steps():
    result = CliRunner().invoke(train, [*TINY, "--steps", "10"])
    assert result.exit_code == 0, result.output
    assert "final val loss" in result.output and "tokens / s" in result.output


def test_bad_input_exits_2():
    result = CliRunner().invoke(train, [*TINY, "--steps", "2", "--data", "nowhere"])
    assert result.exit_code == 2 and "unknown data source" in result.output
    assert CliRunner().invoke(train, ["--tokens", "lots"]).exit_code == 2
    assert CliRunner().invoke(train, ["--preset", "nope"]).exit_code == 2


def test_si_formatting():
    assert _si(1234567) == "1.23M" and _si(999) == "999" and _si(2.5e12) == "2.5T"
