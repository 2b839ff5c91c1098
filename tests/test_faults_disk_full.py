"""Issue 10, item 15: a full disk says "disk full", in the worker's message and in the
trial's stored reason when the storage still takes it, and the trial is re-queued.

The full disk is simulated where it strikes: the run raising ``OSError(ENOSPC)`` (a
checkpoint or run.json write), and SQLite refusing the storage's writes ("database or
disk is full", which Optuna wraps in a ``StorageInternalError`` about "exceeding max length").
"""

from __future__ import annotations

import errno
import sqlite3
from pathlib import Path
from typing import Any

import optuna
import pytest
from optuna.trial import TrialState
from sqlalchemy import event

from attnres_search.study.attrs import ATTR_CELL, ATTR_ERROR, ATTR_RETRY
from attnres_search.study.handle import StudyHandle, new_study, open_study
from attnres_search.study.space_file import parse_space
from attnres_search.study.storage import open_storage
from attnres_search.study.worker import DiskFull, run_worker
from attnres_search.training.config import RunConfig, RunResult
from tests.cli_runner import cli

SPACE = """
name: full
model: {n_layers: 2, d_model: 32, n_heads: 2, seq_len: 32}
train: {tokens: 10k, batch_size: 4}
variants: [baseline, block-s2]
seeds: 1
"""


def fake_runner(cfg: RunConfig, *, callbacks: Any = (), progress: Any = None) -> RunResult:
    loss = 3.0 + 0.01 * cfg.seed
    return RunResult(config=cfg.to_dict(), params_total=1234, params_non_embedding=1000, flops_per_token=10.0,
                     flops_total=10.0 * cfg.tokens, tokens=cfg.tokens, steps=5, tokens_per_s=99.0, wall_time_s=0.01,
                     final_val_loss=loss, best_val_loss=loss, val_curve=[(5, loss)], device_name="cpu",
                     versions={"torch": "x"}, git_commit="abc")


@pytest.fixture
def url(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> str:
    monkeypatch.setenv("ATTNRES_RUNS_DIR", str(tmp_path / "runs"))
    url = f"sqlite:///{tmp_path / 'studies.db'}"
    new_study(parse_space(SPACE), "full", open_storage(url, mode="create"))
    return url


def opened(url: str) -> StudyHandle:
    return open_study("full", open_storage(url, mode="write"))


def enospc(path: str) -> OSError:
    return OSError(errno.ENOSPC, "No space left on device", path)


def test_enospc_in_a_run_fails_the_trial_as_disk_full_and_requeues_it(url: str) -> None:
    def runner(cfg: RunConfig, **kw: Any) -> RunResult:
        if cfg.model.residual.kind != "prenorm":  # the second cell's checkpoint write hits a full disk
            raise enospc(f"{cfg.out_dir}/checkpoints/last.ckpt")
        return fake_runner(cfg, **kw)

    with pytest.raises(DiskFull, match="^disk full: OSError: .*No space left on device") as caught:
        run_worker(opened(url), runner=runner)
    assert "re-queued" in str(caught.value)
    study = optuna.load_study(study_name="full", storage=url)
    failed = study.get_trials(states=(TrialState.FAIL,))
    assert len(failed) == 1
    assert failed[0].user_attrs[ATTR_ERROR].startswith("disk full: OSError: [Errno 28] No space left on device")
    assert failed[0].user_attrs[ATTR_RETRY].startswith("disk full")
    waiting = study.get_trials(states=(TrialState.WAITING,))
    assert [t.user_attrs[ATTR_CELL] for t in waiting] == [failed[0].user_attrs[ATTR_CELL]]
    assert len(study.get_trials(states=(TrialState.COMPLETE,))) == 1  # the completed trial is kept

    summary = run_worker(opened(url), runner=fake_runner)  # space freed: the next worker finishes the cell
    assert summary.completed == 1 and summary.missing == 0


def test_worker_command_says_disk_full_and_exits_1(url: str, monkeypatch, capsys) -> None:
    import attnres_search.training.run as training_run

    def full_disk(cfg: RunConfig, **kw: Any) -> RunResult:
        raise enospc(f"{cfg.out_dir}/run.json")

    monkeypatch.setattr(training_run, "run", full_disk)
    code, _, err = cli(["worker", "full", "--storage", url, "--quiet"], monkeypatch, capsys)
    assert code == 1
    assert err.startswith("error: disk full: OSError") and "Traceback" not in err, err
    trial = optuna.load_study(study_name="full", storage=url).get_trials(states=(TrialState.FAIL,))[0]
    assert trial.user_attrs[ATTR_ERROR].startswith("disk full")


def _refuse_writes(handle: StudyHandle, times: int | None) -> list[int]:
    """Make SQLite refuse the storage's next ``times`` writes (all, if None) as a full disk would."""
    refused: list[int] = []

    @event.listens_for(handle.storage.engine, "before_cursor_execute")
    def full(conn: Any, cursor: Any, statement: str, *args: Any) -> None:
        if statement.lstrip().upper().startswith(("INSERT", "UPDATE")) and (times is None or len(refused) < times):
            refused.append(1)
            raise sqlite3.OperationalError("database or disk is full")

    return refused


def test_storage_full_while_recording_a_result_says_disk_full_and_stores_the_reason(url: str) -> None:
    handle = opened(url)

    def runner(cfg: RunConfig, **kw: Any) -> RunResult:
        result = fake_runner(cfg, **kw)
        _refuse_writes(handle, times=1)  # recording the result fails once; the disk then has room again
        return result

    with pytest.raises(DiskFull, match="^disk full: .*database or disk is full"):
        run_worker(handle, runner=runner)
    study = optuna.load_study(study_name="full", storage=url)
    failed = study.get_trials(states=(TrialState.FAIL,))
    assert len(failed) == 1 and failed[0].user_attrs[ATTR_ERROR].startswith("disk full: ")
    assert "database or disk is full" in failed[0].user_attrs[ATTR_ERROR]
    assert len(study.get_trials(states=(TrialState.WAITING,))) == 2  # the retry and the untouched cell


@pytest.mark.filterwarnings("ignore::pytest.PytestUnhandledThreadExceptionWarning")  # the heartbeat thread's write
def test_storage_full_for_good_says_disk_full_and_that_nothing_could_be_stored(url: str) -> None:
    handle = opened(url)
    refused: list[list[int]] = []

    def runner(cfg: RunConfig, **kw: Any) -> RunResult:
        result = fake_runner(cfg, **kw)
        refused.append(_refuse_writes(handle, times=None))
        return result

    with pytest.raises(DiskFull) as caught:
        run_worker(handle, runner=runner)
    message = str(caught.value)
    assert message.startswith("disk full: ") and "database or disk is full" in message
    assert "could not record" in message and "exceeding max length" not in message
    assert refused and refused[0]
