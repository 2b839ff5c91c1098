"""``attnres-search train`` and ``plot`` through click's CliRunner."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
from click.testing import CliRunner

from attnres_search.cli.train_cmd import _si, plot, train
from attnres_search.errors import BadInput
from attnres_search.training.data import load_corpus, write_shard
from tests.cli_runner import cli

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
    assert len(paths) == 5 and all(p.parent == tmp_path / "figs" and p.stat().st_size > 0 for p in paths)
    assert "mixing.png" in {p.name for p in paths}, "every rule's effective mixing matrix is drawn"
    assert "hardware" in record and record["hardware"]["cpu"]


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


# ---------------------------------------------------------------- bad input: exit 2, nothing written


def _no_training(monkeypatch):
    """Make any attempt to build a Trainer fail the test: bad input must stop before it."""
    import attnres_search.training.run as run_module

    def refuse(*args, **kwargs):
        raise AssertionError("training started despite bad input")

    monkeypatch.setattr(run_module, "build_trainer", refuse)


def test_infinite_token_budget_is_exit_2_naming_the_value(monkeypatch, capsys):
    _no_training(monkeypatch)
    for value in ("inf", "nan", "-inf", "infk"):
        code, out, err = cli(["train", *TINY, "--tokens", value], monkeypatch, capsys)
        assert code == 2, err
        assert repr(value) in err and "finite" in err and "Traceback" not in err


def test_shard_token_id_beyond_vocab_is_exit_2_naming_file_and_id(tmp_path, monkeypatch, capsys):
    write_shard(tmp_path / "train_000.bin", np.arange(2000, dtype=np.uint16) % 300)  # ids up to 299
    write_shard(tmp_path / "val_000.bin", np.zeros(2000, dtype=np.uint16))
    _no_training(monkeypatch)
    out_dir = tmp_path / "out"
    code, out, err = cli(["train", *TINY, "--steps", "2", "--data", f"shards:{tmp_path}/*.bin?vocab=256",
                          "--out", str(out_dir)], monkeypatch, capsys)
    assert code == 2, err
    assert err.startswith("error: ") and err.count("\n") == 1
    assert "train_000.bin" in err and "token id 256 at position 256" in err
    assert not out_dir.exists()


def test_shard_token_ids_are_checked_when_loading(tmp_path):
    tokens = np.zeros(2000, dtype=np.uint16)
    tokens[[7, 1500]] = (1000, 60000)
    write_shard(tmp_path / "a.bin", np.zeros(2000, dtype=np.uint16))
    write_shard(tmp_path / "b.bin", tokens)
    with pytest.raises(BadInput, match=r"b\.bin' holds token id 1000 at position 7"):
        load_corpus(f"shards:{tmp_path}/*.bin?vocab=1000")
    assert load_corpus(f"shards:{tmp_path}/*.bin?vocab=60001").val.n_tokens == 2000


def test_unwritable_out_is_exit_2_before_training(tmp_path, monkeypatch, capsys):
    # Tests run as root, which ignores permission bits: a path below a regular file cannot
    # be created by anyone.
    blocker = tmp_path / "blocker"
    blocker.write_bytes(b"a file, not a folder")
    _no_training(monkeypatch)
    code, out, err = cli(["train", *TINY, "--steps", "2", "--out", str(blocker / "run")], monkeypatch, capsys)
    assert code == 2, err
    assert err.startswith("error: out_dir") and str(blocker) in err and err.count("\n") == 1
    code, out, err = cli(["train", *TINY, "--steps", "2", "--out", str(blocker)], monkeypatch, capsys)
    assert code == 2 and str(blocker) in err  # click's own check of an existing file
    assert blocker.read_bytes() == b"a file, not a folder"
    assert sorted(p.name for p in tmp_path.iterdir()) == ["blocker"]


def test_plot_rejects_json_that_is_not_a_run_file(tmp_path, monkeypatch, capsys):
    cases = {
        "object.json": '{"a": 1}',
        "list.json": "[1, 2, 3]",
        "broken.json": "{not json",
        "curve.json": '{"config": {}, "val_curve": "nope"}',
        "config.json": '{"config": [], "val_curve": []}',
    }
    for name, text in cases.items():
        path = tmp_path / name
        path.write_text(text)
        figures = tmp_path / f"figs-{name}"
        code, out, err = cli(["plot", str(path), "--out", str(figures)], monkeypatch, capsys)
        assert code == 2, (name, err)
        assert err.startswith("error: ") and err.count("\n") == 1 and name in err, err
        assert out == "" and not figures.exists()


def test_compile_mode_reaches_torch_compile(monkeypatch: pytest.MonkeyPatch) -> None:
    """``--compile-mode`` implies ``--compile`` and is the mode ``torch.compile`` gets (stubbed:
    this checks the wiring, not Inductor); ``--compile`` alone is mode "default" and keeps
    ``compile: true`` in the config, so existing configs keep their fingerprints."""
    import torch

    modes: list[str | None] = []
    monkeypatch.setattr(torch.nn.Module, "compile", lambda self, *a, **k: modes.append(k.get("mode")))
    for args, want_mode, want_field in ((["--compile-mode", "reduce-overhead"], ["reduce-overhead"], "reduce-overhead"),
                                        (["--compile"], ["default"], True), ([], [], False)):
        modes.clear()
        result = CliRunner().invoke(train, [*TINY, "--steps", "2", "--json", *args])
        assert result.exit_code == 0, result.output
        assert modes == want_mode
        assert json.loads(result.output)["config"]["compile"] == want_field


def test_unknown_compile_mode_is_bad_input() -> None:
    from attnres_search.model.config import ModelConfig
    from attnres_search.training.checks import check_run
    from attnres_search.training.config import RunConfig

    cfg = RunConfig(model=ModelConfig(vocab_size=256, n_layers=1, d_model=16, n_heads=2, seq_len=16), steps=2,
                    compile="fast")
    with pytest.raises(BadInput, match="compile must be true, false or a mode"):
        check_run(cfg)
    assert CliRunner().invoke(train, [*TINY, "--steps", "2", "--compile-mode", "fast"]).exit_code == 2
