"""Distributed trials and crash safety, with real processes on CPU (issue: workers).

Every test runs real `attnres-search` processes against a real storage and asserts on
what the storage holds afterwards: which cells completed, how often, and from which step
a retried trial resumed.
"""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import textwrap
import time
from collections import Counter
from pathlib import Path

import optuna
import pytest
import torch
from optuna.trial import TrialState

from attnres_search.study.attrs import ATTR_CELL, ATTR_ERROR, ATTR_SKIPPED
from attnres_search.study.handle import open_study
from attnres_search.study.storage import open_storage
from attnres_search.study.worker import run_worker
from tests.cli_runner import cli as run_cli
from tests.cli_runner import sigint_default
from tests.pg_server import postgres_url  # noqa: F401 - the fixture

pytestmark = pytest.mark.slow

TINY = """
model: {n_layers: 1, d_model: 16, n_heads: 2, seq_len: 16}
train: {steps: %(steps)d, tokens: null, batch_size: 4, val_every: %(val_every)d, val_windows: 2, diagnostics_every: 1000 %(extra)s}
"""


def write_space(tmp: Path, name: str, body: str, steps: int = 6, val_every: int = 3, extra: str = "") -> Path:
    path = tmp / f"{name}.yaml"
    path.write_text(TINY % {"steps": steps, "val_every": val_every, "extra": extra} + textwrap.dedent(body))
    return path


def cli(*args: str, env: dict[str, str] | None = None, **kw) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "attnres_search", *args], capture_output=True, text=True,
                          env=env, timeout=600, **kw)


def worker_env(tmp: Path, **extra: str) -> dict[str, str]:
    env = dict(os.environ, OMP_NUM_THREADS="1", ATTNRES_RUNS_DIR=str(tmp / "runs"), **extra)
    env.pop("ATTNRES_STORAGE", None)
    return env


def completed_per_cell(study: optuna.Study) -> Counter:
    return Counter(t.user_attrs[ATTR_CELL] for t in study.get_trials(states=(TrialState.COMPLETE,)))


def create(space: Path, name: str, url: str, env: dict[str, str]) -> None:
    out = cli("study", "start", str(space), "--name", name, "--storage", url, "--n-trials", "0", env=env)
    assert out.returncode == 0, out.stderr


def test_four_cpu_workers_run_a_16_cell_grid_exactly_once(tmp_path: Path) -> None:
    space = write_space(tmp_path, "grid16", """
        variants: [baseline, block-s2]
        axes: {lr: [1.0e-3, 3.0e-3]}
        seeds: 4
    """)
    url = f"sqlite:///{tmp_path / 'studies.db'}"
    env = worker_env(tmp_path)
    create(space, "grid16", url, env)
    out = cli("launch", "grid16", "--storage", url, "--workers", "4", "--quiet", env=env)
    assert out.returncode == 0, out.stdout + out.stderr
    assert out.stdout.count(": finished") == 4, out.stdout
    logs = "".join(p.read_text() for p in (tmp_path / "runs" / "grid16" / "logs").glob("worker-*.log"))
    assert "database is locked" not in logs
    study = optuna.load_study(study_name="grid16", storage=url)
    per_cell = completed_per_cell(study)
    assert len(per_cell) == 16 and set(per_cell.values()) == {1}, per_cell
    assert not [t for t in study.trials if t.state == TrialState.FAIL]
    # Any other trial is a duplicate the objective refused before training.
    others = [t for t in study.trials if t.state != TrialState.COMPLETE]
    assert all(ATTR_SKIPPED in t.user_attrs for t in others)


def _wait_for(predicate, timeout: float, what: str, proc: subprocess.Popen | None = None) -> None:
    deadline = time.monotonic() + timeout
    while not predicate():
        if proc is not None and proc.poll() is not None:
            raise AssertionError(f"worker exited early ({proc.returncode}) while waiting for {what}")
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out waiting for {what}")
        time.sleep(0.2)


def test_killed_worker_trial_is_retried_from_its_checkpoint(tmp_path: Path) -> None:
    space = write_space(tmp_path, "crash", """
        variants: [baseline, block-s2]
        seeds: 1
    """, steps=400, val_every=100, extra=", ckpt_every: 40")
    url = f"sqlite:///{tmp_path / 'studies.db'}"
    env = worker_env(tmp_path, ATTNRES_HEARTBEAT_INTERVAL="1", ATTNRES_HEARTBEAT_GRACE="3")
    create(space, "crash", url, env)
    study = optuna.load_study(study_name="crash", storage=url)

    worker = subprocess.Popen([sys.executable, "-m", "attnres_search", "worker", "crash", "--storage", url, "--quiet"],
                              env=env, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, start_new_session=True)
    try:
        # Kill it in the middle of its second trial, once that trial has a checkpoint.
        first_done = lambda: len(completed_per_cell(study)) == 1  # noqa: E731
        _wait_for(first_done, 300, "the first trial to complete", worker)
        _wait_for(lambda: bool(study.get_trials(states=(TrialState.RUNNING,))), 60, "the second trial", worker)
        run_folders = tmp_path / "runs" / "crash"
        checkpoints = lambda: [p for p in run_folders.glob("*/attempt-*/checkpoints/last.ckpt")]  # noqa: E731
        _wait_for(lambda: len(checkpoints()) == 2, 300, "the second trial's checkpoint", worker)
    finally:
        os.killpg(worker.pid, signal.SIGKILL)
        worker.wait()
    completed_before = {t.number: t.value for t in study.get_trials(states=(TrialState.COMPLETE,))}
    killed = study.get_trials(states=(TrialState.RUNNING,))
    assert len(killed) == 1
    killed_cell = killed[0].user_attrs[ATTR_CELL]
    saved_steps = {p: torch.load(p, map_location="cpu", weights_only=False)["global_step"] for p in checkpoints()}

    out = cli("worker", "crash", "--storage", url, "--quiet", env=env)
    assert out.returncode == 0, out.stderr

    study = optuna.load_study(study_name="crash", storage=url)
    per_cell = completed_per_cell(study)
    assert set(per_cell.values()) == {1} and len(per_cell) == 2
    assert {t.number: t.value for t in study.get_trials(states=(TrialState.COMPLETE,))
            if t.number in completed_before} == completed_before, "a completed trial changed"
    assert study.trials[killed[0].number].state == TrialState.FAIL
    retry = next(t for t in study.get_trials(states=(TrialState.COMPLETE,)) if t.user_attrs[ATTR_CELL] == killed_cell)
    assert retry.system_attrs.get("failed_trial") == killed[0].number
    resumed = retry.user_attrs["resumed_from_step"]
    assert resumed is not None and 0 < resumed < 400
    assert resumed in saved_steps.values(), (resumed, saved_steps)
    assert retry.user_attrs["steps"] == 400


def test_two_workers_on_postgresql(tmp_path: Path, postgres_url: str) -> None:  # noqa: F811
    space = write_space(tmp_path, "pg", """
        variants: [baseline, block-s2]
        seeds: 2
    """)
    env = worker_env(tmp_path)
    create(space, "pg", postgres_url, env)
    out = cli("launch", "pg", "--storage", postgres_url, "--workers", "2", "--quiet", env=env)
    assert out.returncode == 0, out.stdout + out.stderr
    study = optuna.load_study(study_name="pg", storage=postgres_url)
    per_cell = completed_per_cell(study)
    assert len(per_cell) == 4 and set(per_cell.values()) == {1}
    hosts = {t.user_attrs["host"] for t in study.get_trials(states=(TrialState.COMPLETE,))}
    assert len(hosts) >= 1


def test_ddp_trial_with_two_cpu_processes_reports_one_value(tmp_path: Path) -> None:
    space = write_space(tmp_path, "ddp", """
        variants: [block-s2]
        seeds: 1
    """, steps=10, val_every=5)
    url = f"sqlite:///{tmp_path / 'studies.db'}"
    env = worker_env(tmp_path)
    create(space, "ddp", url, env)
    out = cli("worker", "ddp", "--storage", url, "--devices-per-trial", "2", "--quiet", env=env)
    assert out.returncode == 0, out.stderr
    study = optuna.load_study(study_name="ddp", storage=url)
    assert len(study.trials) == 1
    trial = study.trials[0]
    assert trial.state == TrialState.COMPLETE and trial.value is not None
    assert trial.user_attrs["config"]["devices"] == 2
    assert trial.user_attrs["tokens"] == 10 * 4 * 16 * 2  # both ranks' batches count


def test_nan_and_oom_trials_fail_with_their_reason_and_the_study_goes_on(tmp_path: Path, monkeypatch, capsys) -> None:
    space = write_space(tmp_path, "faults", """
        variants: [baseline, block-s2, full]
        seeds: 1
        axes: {lr: [3.0e-3, 1.0e+30]}
    """, steps=8, val_every=4)
    url = f"sqlite:///{tmp_path / 'studies.db'}"
    env = worker_env(tmp_path)
    create(space, "faults", url, env)
    from attnres_search.training.run import run as real_run

    freed: list[bool] = []

    def runner(cfg, **kw):  # the `full` cell at the sane lr runs out of (simulated) GPU memory
        if cfg.model.residual.kind == "full" and cfg.lr < 1:
            raise torch.cuda.OutOfMemoryError("CUDA out of memory. Tried to allocate 20.00 GiB")
        return real_run(cfg, **kw)

    real_empty = torch.cuda.empty_cache
    torch.cuda.empty_cache = lambda: freed.append(True)  # type: ignore[assignment]
    try:
        os.environ["ATTNRES_RUNS_DIR"] = str(tmp_path / "runs")
        summary = run_worker(open_study("faults", open_storage(url, mode="write")), runner=runner)
    finally:
        torch.cuda.empty_cache = real_empty  # type: ignore[assignment]
        os.environ.pop("ATTNRES_RUNS_DIR", None)
    study = optuna.load_study(study_name="faults", storage=url)
    states = Counter(t.state for t in study.trials)
    assert states[TrialState.COMPLETE] == 2, states  # baseline and block-s2 at lr 3e-3
    failed = {(t.params["variant"], t.params["lr"]): t.user_attrs[ATTR_ERROR] for t in study.trials
              if t.state == TrialState.FAIL}
    assert len(failed) == 4 and summary.failed == 4
    for variant in ("baseline", "block-s2", "full"):
        reason = failed[(variant, 1.0e30)]
        assert "NonFiniteLoss" in reason and ("nan" in reason or "inf" in reason), reason
    assert failed[("full", 3.0e-3)].startswith("OutOfMemoryError: CUDA out of memory")
    assert freed, "memory must be freed after an out-of-memory trial"
    code, out, _ = run_cli(["study", "status", "faults", "--storage", url], monkeypatch, capsys)
    assert code == 0
    assert out.count("NonFiniteLoss") == 3 and "OutOfMemoryError" in out


@pytest.mark.parametrize("sig", [signal.SIGINT, signal.SIGTERM])
def test_launch_forwards_ctrl_c_and_reports_each_worker(tmp_path: Path, sig: signal.Signals) -> None:
    space = write_space(tmp_path, "stop", """
        variants: [baseline, block-s2]
        seeds: 2
    """, steps=100_000, val_every=50_000)
    url = f"sqlite:///{tmp_path / 'studies.db'}"
    env = worker_env(tmp_path)
    create(space, "stop", url, env)
    study = optuna.load_study(study_name="stop", storage=url)
    launch = subprocess.Popen([sys.executable, "-m", "attnres_search", "launch", "stop", "--storage", url,
                               "--workers", "2", "--quiet"], env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                              text=True, preexec_fn=sigint_default)
    try:
        _wait_for(lambda: len(study.get_trials(states=(TrialState.RUNNING,))) == 2, 120, "two running trials", launch)
        launch.send_signal(sig)
        stdout, stderr = launch.communicate(timeout=90)
    finally:
        if launch.poll() is None:
            launch.kill()
    assert launch.returncode == 130, stdout + stderr
    exits = [line for line in stdout.splitlines() if line.startswith("cpu ")]
    assert len(exits) == 2 and all("running" not in line for line in exits), stdout
    # No worker is left behind and no trial stays RUNNING: the interrupted ones are failed, to be re-run.
    assert not study.get_trials(states=(TrialState.RUNNING,))
    assert len(study.get_trials(states=(TrialState.FAIL,))) == 2
