"""Ctrl-C in a study worker: noted at once, acted on where no storage call is in flight.

CI once saw `launch` stopped by Ctrl-C leave a trial RUNNING: the worker's SIGINT handler
raised KeyboardInterrupt in the middle of a storage write, SQLite's write lock stayed with
the broken connection, the worker could not fail its trial, and `launch` killed it after
its grace period. These tests send real SIGINTs to this process at chosen points.
"""

from __future__ import annotations

import signal
import sqlite3
import textwrap
from pathlib import Path
from typing import Any

import lightning as L
import optuna
import pytest
from optuna.trial import TrialState
from sqlalchemy import event

from attnres_search.model.config import ModelConfig
from attnres_search.study import storage as storage_module
from attnres_search.study.attrs import ATTR_CELL, ATTR_RETRY
from attnres_search.study.callbacks import StopOnInterrupt
from attnres_search.study.handle import new_study, open_study
from attnres_search.study.space_file import parse_space
from attnres_search.study.storage import open_storage
from attnres_search.study.worker import WorkerInterrupts, run_worker
from attnres_search.training.config import RunConfig, RunResult
from attnres_search.training.run import run

SPACE = """
name: stop
model: {n_layers: 1, d_model: 16, n_heads: 2, seq_len: 16}
train: {steps: 4, tokens: null, batch_size: 4, val_every: 2, val_windows: 2, diagnostics_every: 100000}
variants: [baseline, block-s2]
seeds: 1
"""


@pytest.fixture
def sigint_raises() -> Any:
    """SIGINT as Python sets it up in a terminal (a test run in the background may have it ignored)."""
    previous = signal.signal(signal.SIGINT, signal.default_int_handler)
    yield
    signal.signal(signal.SIGINT, previous)


def test_ctrl_c_during_a_storage_write_fails_and_requeues_the_trial(tmp_path: Path, monkeypatch: pytest.MonkeyPatch,
                                                                    sigint_raises: None) -> None:
    monkeypatch.setenv("ATTNRES_RUNS_DIR", str(tmp_path / "runs"))
    monkeypatch.setattr(storage_module, "BUSY_TIMEOUT_S", 2)  # a lock left behind fails in seconds
    url = f"sqlite:///{tmp_path / 'studies.db'}"
    new_study(parse_space(textwrap.dedent(SPACE)), "stop", open_storage(url, mode="create"))
    storage = open_storage(url, mode="write")
    sent: list[str] = []

    @event.listens_for(storage.engine, "before_cursor_execute")
    def ctrl_c_mid_write(conn: Any, cursor: Any, statement: str, parameters: Any, context: Any, many: bool) -> None:
        # Inside the objective's first attribute write, its transaction holding SQLite's write lock.
        if not sent and statement.startswith("INSERT INTO trial_user_attributes") and parameters[1] == "variant":
            sent.append(statement)
            signal.raise_signal(signal.SIGINT)

    ran: list[RunConfig] = []

    def runner(cfg: RunConfig, **kw: Any) -> RunResult:
        ran.append(cfg)
        return run(cfg, **kw)

    with pytest.raises(KeyboardInterrupt):
        run_worker(open_study("stop", storage), runner=runner)
    assert sent and not ran  # the trial stopped before training
    # The write the signal came in was finished, not torn: a KeyboardInterrupt inside one
    # can leave the connection holding the write lock (CI: a trial left RUNNING).
    study = optuna.load_study(study_name="stop", storage=url)
    failed = study.get_trials(states=(TrialState.FAIL,))
    assert len(failed) == 1 and failed[0].user_attrs.get("variant") == "baseline", failed
    # Nobody holds the write lock: another worker writes at once.
    other = sqlite3.connect(tmp_path / "studies.db", timeout=0.5, isolation_level=None)
    other.execute("BEGIN IMMEDIATE")
    other.execute("ROLLBACK")
    other.close()
    states = sorted(t.state.name for t in study.trials)
    assert states == ["FAIL", "WAITING", "WAITING"], states  # the failed trial, its retry, the other cell
    interrupted = failed[0]
    assert interrupted.user_attrs[ATTR_RETRY] == "interrupted (Ctrl-C / SIGINT); re-queued"
    retry = next(t for t in study.get_trials(states=(TrialState.WAITING,))
                 if t.system_attrs.get("failed_trial") == interrupted.number)
    assert retry.user_attrs[ATTR_CELL] == interrupted.user_attrs[ATTR_CELL]


class SigintAfter(L.Callback):
    """A real SIGINT to this process once step ``step`` has finished; records every finished step."""

    def __init__(self, step: int) -> None:
        self.step, self.finished = step, []

    def on_train_batch_end(self, trainer: L.Trainer, *args: Any) -> None:
        self.finished.append(trainer.global_step)
        if trainer.global_step == self.step:
            signal.raise_signal(signal.SIGINT)


def test_ctrl_c_during_training_stops_before_the_next_batch(tmp_path: Path, sigint_raises: None) -> None:
    model = ModelConfig(vocab_size=256, n_layers=1, d_model=16, n_heads=2, seq_len=16)
    cfg = RunConfig(model=model, tokens=None, steps=50, batch_size=4, val_every=25, val_windows=2,
                    diagnostics_every=1000, out_dir=str(tmp_path / "run"))
    sender = SigintAfter(3)
    with WorkerInterrupts() as interrupts:
        with pytest.raises(KeyboardInterrupt):
            run(cfg, callbacks=[sender, StopOnInterrupt(interrupts)], progress=False)
        assert signal.getsignal(signal.SIGINT) == interrupts._handle  # Lightning's SIG_IGN is undone
    assert sender.finished == [1, 2, 3]
    assert not (tmp_path / "run" / "run.json").exists()  # an interrupted trial records no result


def test_worker_interrupts_raise_only_where_safe_or_when_pressed_twice(sigint_raises: None) -> None:
    with WorkerInterrupts() as interrupts:
        signal.raise_signal(signal.SIGINT)  # noted, not raised
        assert interrupts.requested
        with pytest.raises(KeyboardInterrupt):
            interrupts.check()
        with pytest.raises(KeyboardInterrupt):  # a second Ctrl-C: the user insists
            signal.raise_signal(signal.SIGINT)
    assert signal.getsignal(signal.SIGINT) is signal.default_int_handler
    with WorkerInterrupts() as interrupts:
        interrupts.check()  # nothing pressed: nothing raised
        with pytest.raises(KeyboardInterrupt):
            with interrupts.interruptible():  # only waiting here: at once
                signal.raise_signal(signal.SIGINT)
        with pytest.raises(KeyboardInterrupt):  # and the flag stays for the next safe point
            with interrupts.interruptible():
                pass
