"""Issue 10, item 12: heartbeat interval and grace belong to the study, a worker whose
trial was taken from it lets it go and goes on, and every trial attempt has its own run
folder.

The first tests open studies in-process with a fake runner; the last one is the issue's
scenario with real worker processes: worker A is frozen (SIGSTOP) mid-trial, worker B
fails A's trial as stale and runs the retry, A is thawed, finishes, and exits 0.
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import textwrap
import time
import warnings
from pathlib import Path
from typing import Any

import optuna
import pytest
from optuna.trial import TrialState

from attnres_search.study.attrs import ATTR_CELL
from attnres_search.study.handle import StudyHandle, new_study, open_study
from attnres_search.study.space_file import parse_space
from attnres_search.study.storage import open_storage
from attnres_search.study.worker import run_worker
from attnres_search.training.config import RunConfig, RunResult
from tests.cli_runner import cli

SPACE = """
name: beats
model: {n_layers: 2, d_model: 32, n_heads: 2, seq_len: 32}
train: {tokens: 10k, batch_size: 4}
variants: [baseline, block-s2]
seeds: 1
"""


def fake_runner(cfg: RunConfig, *, callbacks: Any = (), progress: Any = None) -> RunResult:
    loss = 3.0 + (0.5 if cfg.model.residual.kind == "prenorm" else 0.25)
    return RunResult(config=cfg.to_dict(), params_total=1234, params_non_embedding=1000, flops_per_token=10.0,
                     flops_total=10.0 * cfg.tokens, tokens=cfg.tokens, steps=5, tokens_per_s=99.0, wall_time_s=0.01,
                     final_val_loss=loss, best_val_loss=loss, val_curve=[(5, loss)], device_name="cpu",
                     versions={"torch": "x"}, git_commit="abc")


@pytest.fixture
def url(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> str:
    monkeypatch.setenv("ATTNRES_RUNS_DIR", str(tmp_path / "runs"))
    monkeypatch.delenv("ATTNRES_HEARTBEAT_INTERVAL", raising=False)
    monkeypatch.delenv("ATTNRES_HEARTBEAT_GRACE", raising=False)
    return f"sqlite:///{tmp_path / 'studies.db'}"


def opened(url: str, name: str = "beats") -> StudyHandle:
    return open_study(name, open_storage(url, mode="write"))


def test_heartbeat_settings_are_stored_with_the_study_and_changed_only_by_study_set(
        url: str, tmp_path: Path, monkeypatch, capsys) -> None:
    (tmp_path / "beats.yaml").write_text(SPACE)
    monkeypatch.setenv("ATTNRES_HEARTBEAT_GRACE", "1")  # must not reach a study created with explicit values
    code, _, err = cli(["study", "start", str(tmp_path / "beats.yaml"), "--storage", url, "--n-trials", "0",
                        "--heartbeat-interval", "2", "--heartbeat-grace", "7"], monkeypatch, capsys)
    assert code == 0, err
    monkeypatch.setenv("ATTNRES_HEARTBEAT_INTERVAL", "1")  # a worker with other settings in its environment
    handle = opened(url)
    assert (handle.heartbeat_interval_s, handle.grace_s) == (2, 7)
    assert (handle.storage.heartbeat_interval, handle.storage.grace_period) == (2, 7)

    code, out, err = cli(["study", "set", "beats", "--storage", url, "--heartbeat-grace", "11"], monkeypatch, capsys)
    assert code == 0 and "every 2 s" in out and "after 11 s" in out, err
    assert (opened(url).heartbeat_interval_s, opened(url).grace_s) == (2, 11)
    before = (tmp_path / "studies.db").read_bytes()
    code, _, err = cli(["study", "set", "beats", "--storage", url, "--heartbeat-grace", "1"], monkeypatch, capsys)
    assert code == 2 and "at least the heartbeat interval" in err and len(err.strip().splitlines()) == 1
    assert (tmp_path / "studies.db").read_bytes() == before
    code, out, _ = cli(["study", "status", "beats", "--storage", url], monkeypatch, capsys)
    assert code == 0 and "heartbeat every 2 s, stale after 11 s" in out
    code, out, _ = cli(["study", "start", "--help"], monkeypatch, capsys)
    assert "--heartbeat-interval" in out and "--heartbeat-grace" in out


def test_environment_at_creation_is_the_default_and_stays_with_the_study(url: str, monkeypatch) -> None:
    monkeypatch.setenv("ATTNRES_HEARTBEAT_INTERVAL", "1")
    monkeypatch.setenv("ATTNRES_HEARTBEAT_GRACE", "3")
    new_study(parse_space(SPACE), "beats", open_storage(url, mode="create"))
    monkeypatch.setenv("ATTNRES_HEARTBEAT_INTERVAL", "100")
    monkeypatch.setenv("ATTNRES_HEARTBEAT_GRACE", "1000")
    assert (opened(url).heartbeat_interval_s, opened(url).grace_s) == (1, 3)


class _StopWaiting(Exception):
    pass


class _Progress:
    """A display that ends the test when the worker starts waiting for other workers' trials."""

    def trial_started(self, *a: Any) -> None: ...
    def step(self, *a: Any) -> None: ...
    def trial_finished(self, *a: Any) -> None: ...
    def trial_failed(self, *a: Any) -> None: ...

    def waiting(self, running: int) -> None:
        raise _StopWaiting(running)


def test_a_worker_with_a_short_grace_in_its_environment_leaves_a_healthy_trial_alone(url: str, monkeypatch) -> None:
    new_study(parse_space(SPACE), "beats", open_storage(url, mode="create"))  # the default: 60 s, 180 s grace
    other = open_storage(url, mode="write")
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", UserWarning)
        healthy = optuna.load_study(study_name="beats", storage=other).ask()  # worker A's trial
    other.record_heartbeat(healthy._trial_id)
    time.sleep(1.5)  # older than the 1 s grace worker B's environment asks for, far within the study's
    monkeypatch.setenv("ATTNRES_HEARTBEAT_INTERVAL", "1")
    monkeypatch.setenv("ATTNRES_HEARTBEAT_GRACE", "1")
    with pytest.raises(_StopWaiting):  # B runs the other cell, then waits for A's trial instead of taking it
        run_worker(opened(url), runner=fake_runner, progress=_Progress(), poll_s=0.1)
    study = optuna.load_study(study_name="beats", storage=url)
    assert study.trials[healthy.number].state == TrialState.RUNNING
    assert len(study.get_trials(states=(TrialState.COMPLETE,))) == 1
    assert not study.get_trials(states=(TrialState.FAIL,))


def test_a_worker_whose_trial_was_taken_keeps_its_result_in_the_log_and_goes_on(url: str) -> None:
    new_study(parse_space(SPACE), "beats", open_storage(url, mode="create"))
    handle = opened(url)
    taken: list[int] = []

    def runner(cfg: RunConfig, **kw: Any) -> RunResult:
        if not taken:  # meanwhile another worker fails this trial as stale and re-queues it
            other = open_storage(url, mode="write")
            study = optuna.load_study(study_name="beats", storage=other)
            trial = study.get_trials(states=(TrialState.RUNNING,))[0]
            assert other.set_trial_state_values(trial._trial_id, state=TrialState.FAIL)
            other.get_heartbeat_stale_trial_callback()(study, other.get_trial(trial._trial_id))
            taken.append(trial.number)
        return fake_runner(cfg, **kw)

    summary = run_worker(handle, runner=runner)  # old code: ValueError "Cannot tell a FAIL trial"
    assert summary.taken == 1 and summary.completed == 2 and summary.missing == 0
    study = optuna.load_study(study_name="beats", storage=url)
    lost = study.trials[taken[0]]
    assert lost.state == TrialState.FAIL
    log = (handle.logs_dir / f"trial-{taken[0]}.log").read_text()
    assert "failed as stale by another worker" in log
    kept = json.loads(log.split("its result, kept here: ")[1].splitlines()[0])
    assert kept["final_val_loss"] == fake_runner(RunConfig.from_dict(lost.user_attrs["config"])).final_val_loss
    retry = next(t for t in study.trials if t.system_attrs.get("failed_trial") == taken[0])
    assert retry.state == TrialState.COMPLETE and retry.user_attrs[ATTR_CELL] == lost.user_attrs[ATTR_CELL]
    # One run folder per attempt: the retry never writes where the taken trial ran.
    folders = {t.number: Path(t.user_attrs["config"]["out_dir"]) for t in (lost, retry)}
    assert folders[lost.number] != folders[retry.number]
    assert folders[lost.number].parent == folders[retry.number].parent
    assert {p.name for p in folders.values()} == {f"attempt-{lost.number}", f"attempt-{retry.number}"}


# ------------------------------------------------------------------ real processes

TINY = """
model: {n_layers: 1, d_model: 16, n_heads: 2, seq_len: 16}
train: {steps: 3000, tokens: null, batch_size: 4, val_every: 1000, val_windows: 2, diagnostics_every: 100000,
        ckpt_every: 20}
variants: [baseline]
seeds: 1
"""


def _wait_for(predicate: Any, timeout: float, what: str) -> None:
    deadline = time.monotonic() + timeout
    while not predicate():
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out waiting for {what}")
        time.sleep(0.2)


@pytest.mark.slow
def test_frozen_worker_whose_trial_was_retried_elsewhere_exits_cleanly(tmp_path: Path) -> None:
    (tmp_path / "frozen.yaml").write_text(textwrap.dedent(TINY))
    url = f"sqlite:///{tmp_path / 'studies.db'}"
    env = dict(os.environ, OMP_NUM_THREADS="1", ATTNRES_RUNS_DIR=str(tmp_path / "runs"))
    env.pop("ATTNRES_STORAGE", None)
    env.pop("ATTNRES_HEARTBEAT_INTERVAL", None)
    env.pop("ATTNRES_HEARTBEAT_GRACE", None)
    command = [sys.executable, "-m", "attnres_search"]
    made = subprocess.run([*command, "study", "start", str(tmp_path / "frozen.yaml"), "--storage", url,
                           "--n-trials", "0", "--heartbeat-interval", "1", "--heartbeat-grace", "3"],
                          env=env, capture_output=True, text=True, timeout=300)
    assert made.returncode == 0, made.stderr
    study = optuna.load_study(study_name="frozen", storage=url)
    a = subprocess.Popen([*command, "worker", "frozen", "--storage", url, "--quiet"], env=env,
                         stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, start_new_session=True)
    b = None
    try:
        runs = tmp_path / "runs" / "frozen"
        _wait_for(lambda: bool(list(runs.glob("*/attempt-0/checkpoints/last.ckpt"))), 300, "worker A's first checkpoint")
        os.killpg(a.pid, signal.SIGSTOP)  # A hangs: its heartbeats stop
        time.sleep(4)  # past the study's 3 s grace
        # B fails A's trial as stale and runs the retry from a copy of A's checkpoint.
        b = subprocess.run([*command, "worker", "frozen", "--storage", url, "--quiet"], env=env,
                           capture_output=True, text=True, timeout=600)
        assert b.returncode == 0, b.stderr
    finally:
        os.killpg(a.pid, signal.SIGCONT)
    try:
        _, a_err = a.communicate(timeout=600)
    finally:
        if a.poll() is None:
            os.killpg(a.pid, signal.SIGKILL)
    assert a.returncode == 0, a_err
    assert "Cannot tell" not in a_err and "Traceback" not in a_err
    trials = optuna.load_study(study_name="frozen", storage=url).trials
    assert [t.state for t in trials] == [TrialState.FAIL, TrialState.COMPLETE]
    assert trials[1].system_attrs.get("failed_trial") == 0
    assert trials[1].user_attrs["resumed_from_step"] and trials[1].user_attrs["steps"] == 3000
    log = (tmp_path / "runs" / "frozen" / "logs" / "trial-0.log").read_text()
    assert "failed as stale by another worker" in log and '"steps": 3000' in log  # A's finished run, kept
    folders = [Path(t.user_attrs["config"]["out_dir"]) for t in trials]
    assert folders[0] != folders[1] and all((f / "run.json").is_file() for f in folders)
    assert json.loads((folders[0] / "run.json").read_text())["steps"] == 3000
    assert study.trials[0].state == TrialState.FAIL
