"""Bad input to the study commands is caught before anything is written (issue 10, items 1,
2, 4, 5, 8 and 20): exit 2, one `error:` line naming the problem, no study created, and a
storage that already existed is byte-for-byte what it was."""

from __future__ import annotations

import hashlib
from pathlib import Path

import optuna
import pytest

from attnres_search.study.handle import new_study
from attnres_search.study.space_file import parse_space
from attnres_search.study.storage import open_storage
from tests.cli_runner import cli

optuna.logging.set_verbosity(optuna.logging.WARNING)

GOOD = """
model: {n_layers: 2, d_model: 32, n_heads: 2, seq_len: 32}
train: {tokens: 10k, batch_size: 4}
variants: [baseline, full]
seeds: 1
"""
MODEL = "model: {n_layers: 2, d_model: 32, n_heads: 2, seq_len: 32}\n"


@pytest.fixture
def storage(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    """A storage holding one study ("kept"), written and closed as a finished process leaves it."""
    monkeypatch.chdir(tmp_path)
    monkeypatch.delenv("ATTNRES_STORAGE", raising=False)
    monkeypatch.delenv("ATTNRES_RUNS_DIR", raising=False)
    db = tmp_path / "studies.db"
    opened = open_storage(f"sqlite:///{db}", mode="create")
    new_study(parse_space(GOOD), "kept", opened)
    opened.engine.dispose()  # closes the connections: the WAL is checkpointed into the file
    return db


def snapshot(folder: Path) -> dict[str, str]:
    """Every file under ``folder`` and a hash of its bytes. SQLite's ``-wal``/``-shm`` side
    files of a WAL database come and go with any open connection, a reader's too: the
    database file itself is what must not change."""
    return {str(p.relative_to(folder)): hashlib.sha256(p.read_bytes()).hexdigest()
            for p in sorted(folder.rglob("*")) if p.is_file() and not p.name.endswith(("-wal", "-shm"))}


# --------------------------------------------------------------- item 1: the runs of a space

BAD_RUNS = {  # the space's train/model lines -> what the one error line must name
    "tokens-zero": ("train: {tokens: 0}", "tokens must be positive, got 0"),
    "tokens-negative": ("train: {tokens: -5}", "tokens must be positive, got -5"),
    "tokens-below-one-batch": ("train: {tokens: 100}", "tokens=100 is less than one step"),
    "batch-size-zero": ("train: {batch_size: 0}", "batch_size must be a positive integer, got 0"),
    "val-every-zero": ("train: {val_every: 0}", "val_every must be a positive integer, got 0"),
    "optimizer": ("train: {optimizer: sgd}", "optimizer must be one of adamw, muon; got 'sgd'"),
    "schedule": ("train: {schedule: linear}", "schedule must be one of wsd, cosine; got 'linear'"),
    "lr-nan": ("train: {lr: .nan}", "train.lr must be a finite number, got nan"),
    "tokens-inf": ("train: {tokens: .inf}", "train.tokens must be a finite number, got inf"),  # item 2
    "missing-text": ("train: {data: 'text:no-such-file.txt'}", "no-such-file.txt"),
    "too-big": ("model: {n_layers: 2, d_model: 1e9, n_heads: 2, seq_len: 32}", "GiB"),
}


@pytest.mark.parametrize("case", sorted(BAD_RUNS))
def test_a_space_whose_runs_cannot_train_creates_no_study(case: str, storage: Path, monkeypatch, capsys) -> None:
    line, message = BAD_RUNS[case]
    model = "" if line.startswith("model:") else MODEL
    (storage.parent / "bad.yaml").write_text(f"{model}{line}\nvariants: [baseline]\n")
    before = snapshot(storage.parent)
    code, out, err = cli(["study", "start", "bad.yaml", "--storage", f"sqlite:///{storage}"], monkeypatch, capsys)
    assert code == 2 and out == "", err
    assert len(err.strip().splitlines()) == 1 and err.startswith("error: search space ") and message in err, err
    assert snapshot(storage.parent) == before  # no study, no runs folder, the storage's bytes unchanged
    assert optuna.get_all_study_names(f"sqlite:///{storage}") == ["kept"]


def test_a_bad_space_on_a_fresh_path_creates_no_database(tmp_path: Path, monkeypatch, capsys) -> None:
    monkeypatch.chdir(tmp_path)
    monkeypatch.delenv("ATTNRES_STORAGE", raising=False)
    (tmp_path / "bad.yaml").write_text(MODEL + "train: {tokens: 0}\nvariants: [baseline]\n")
    code, _, err = cli(["study", "start", "bad.yaml"], monkeypatch, capsys)
    assert code == 2 and "tokens must be positive" in err
    assert sorted(p.name for p in tmp_path.iterdir()) == ["bad.yaml"]


@pytest.mark.parametrize("case", ["tokens-zero", "optimizer", "missing-text"])
def test_spaces_show_applies_the_same_checks(case: str, tmp_path: Path, monkeypatch, capsys) -> None:
    monkeypatch.chdir(tmp_path)
    line, message = BAD_RUNS[case]
    (tmp_path / "bad.yaml").write_text(f"{MODEL}{line}\nvariants: [baseline]\n")
    code, _, err = cli(["spaces", "show", "bad.yaml"], monkeypatch, capsys)
    assert code == 2 and message in err and len(err.strip().splitlines()) == 1
    assert sorted(p.name for p in tmp_path.iterdir()) == ["bad.yaml"]


def test_a_bad_cell_among_good_ones_is_named(storage: Path, monkeypatch, capsys) -> None:
    (storage.parent / "axis.yaml").write_text(MODEL + "train: {tokens: 10k}\nvariants: [baseline]\n"
                                              "axes: {batch_size: [4, 0]}\n")
    before = snapshot(storage.parent)
    code, _, err = cli(["study", "start", "axis.yaml", "--storage", f"sqlite:///{storage}"], monkeypatch, capsys)
    assert code == 2 and "cell variant=baseline batch_size=0" in err
    assert snapshot(storage.parent) == before


# ---------------------------------------------------------------------- item 4: study names

@pytest.mark.parametrize("name", ["../../escape", "a/b", "..", "two words", "naïve", ""])
def test_study_names_that_are_not_plain_folder_names_exit_2(name: str, storage: Path, monkeypatch, capsys) -> None:
    (storage.parent / "good.yaml").write_text(GOOD)
    before = snapshot(storage.parent.parent)  # the escape would land two levels up
    code, _, err = cli(["study", "start", "good.yaml", "--name", name, "--storage", f"sqlite:///{storage}",
                        "--n-trials", "0"], monkeypatch, capsys)
    assert code == 2 and "study name" in err and len(err.strip().splitlines()) == 1, err
    assert snapshot(storage.parent.parent) == before
    assert optuna.get_all_study_names(f"sqlite:///{storage}") == ["kept"]


def test_a_space_file_name_that_is_no_study_name_asks_for_one(storage: Path, monkeypatch, capsys) -> None:
    (storage.parent / "my space.yaml").write_text(GOOD)
    code, _, err = cli(["study", "start", "my space.yaml", "--storage", f"sqlite:///{storage}"], monkeypatch, capsys)
    assert code == 2 and "'my space'" in err and "--name" in err
    code, _, err = cli(["study", "start", "my space.yaml", "--name", "my_space.v2", "--storage",
                        f"sqlite:///{storage}", "--n-trials", "0"], monkeypatch, capsys)
    assert code == 0, err


# ------------------------------------------------------------------ item 5: in-memory storage

@pytest.mark.parametrize("url", ["sqlite:///:memory:", "sqlite://"])
@pytest.mark.parametrize("command", [["study", "start", "good.yaml", "--n-trials", "0"], ["study", "resume", "x"],
                                     ["worker", "x"], ["launch", "x"], ["study", "status", "x"], ["study", "list"]])
def test_in_memory_storage_is_refused(url: str, command: list[str], tmp_path: Path, monkeypatch, capsys) -> None:
    monkeypatch.chdir(tmp_path)
    (tmp_path / "good.yaml").write_text(GOOD)
    code, _, err = cli([*command, "--storage", url], monkeypatch, capsys)
    assert code == 2 and "in memory" in err and "queued" not in err, err
    assert sorted(p.name for p in tmp_path.iterdir()) == ["good.yaml"]


# ------------------------------------------------------------------- item 8: --gpus without CUDA

def test_launch_on_gpus_without_cuda_exits_2_and_starts_nothing(storage: Path, monkeypatch, capsys) -> None:
    import torch

    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)
    before = snapshot(storage.parent)
    code, out, err = cli(["launch", "kept", "--gpus", "0,1", "--storage", f"sqlite:///{storage}"], monkeypatch, capsys)
    assert code == 2 and "CUDA is not available" in err and len(err.strip().splitlines()) == 1, out + err
    assert "gpu 0" not in out
    assert snapshot(storage.parent) == before  # no worker logs, no trial claimed


def test_launch_on_a_gpu_the_machine_lacks_exits_2(storage: Path, monkeypatch, capsys) -> None:
    import torch

    monkeypatch.setattr(torch.cuda, "is_available", lambda: True)
    monkeypatch.setattr(torch.cuda, "device_count", lambda: 1)
    monkeypatch.delenv("CUDA_VISIBLE_DEVICES", raising=False)
    before = snapshot(storage.parent)
    code, _, err = cli(["launch", "kept", "--gpus", "0,1", "--storage", f"sqlite:///{storage}"], monkeypatch, capsys)
    assert code == 2 and "no GPU 1" in err and len(err.strip().splitlines()) == 1, err
    assert snapshot(storage.parent) == before


# ---------------------------------------------------- item 20: a missing study, before any bar

@pytest.mark.parametrize("command", [["study", "resume", "nope"], ["worker", "nope"], ["launch", "nope"],
                                     ["study", "resume", "nope", "--quiet"]])
def test_missing_study_is_one_error_line_before_any_progress(command: list[str], storage: Path, monkeypatch,
                                                            capsys) -> None:
    before = snapshot(storage.parent)
    code, out, err = cli([*command, "--storage", f"sqlite:///{storage}"], monkeypatch, capsys)
    assert code == 2 and out == ""
    assert err.splitlines() == [f"error: no study named 'nope' in sqlite:///{storage} (studies: kept)"], err
    assert snapshot(storage.parent) == before
