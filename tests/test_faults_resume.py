"""Issue 10, items 13 and 14: interrupted cells are run again by `launch`, `worker` and
`study resume` alike, from their checkpoint; a checkpoint of another study (a reused name
in a new storage) or another config is never picked up; a corrupt one is moved aside and
the trial starts from scratch.

Real training runs (tiny models on CPU); the Ctrl-C test uses real processes and SIGINT.
"""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import textwrap
import time
import warnings
from collections import Counter
from pathlib import Path
from typing import Any

import optuna
import pytest
from optuna.trial import TrialState

from attnres_search.study.attrs import ATTR_CELL, ATTR_ERROR, ATTR_RETRY
from attnres_search.study.handle import new_study, open_study
from attnres_search.study.space_file import parse_space
from attnres_search.study.storage import open_storage
from attnres_search.study.worker import run_worker
from attnres_search.training.config import RunConfig, RunResult
from cli_runner import sigint_default

pytestmark = pytest.mark.slow

TINY = """
model: {n_layers: 1, d_model: 16, n_heads: 2, seq_len: 16}
train: {steps: %(steps)d, tokens: null, batch_size: 4, val_every: %(val)d, val_windows: 2, diagnostics_every: 100000,
        ckpt_every: %(ckpt)d}
variants: %(variants)s
seeds: 1
"""


def space_text(steps: int = 8, val: int = 4, ckpt: int = 4, variants: str = "[baseline]") -> str:
    return textwrap.dedent(TINY % {"steps": steps, "val": val, "ckpt": ckpt, "variants": variants})


def completed_per_cell(study: optuna.Study) -> Counter:
    return Counter(t.user_attrs[ATTR_CELL] for t in study.get_trials(states=(TrialState.COMPLETE,)))


def _wait_for(predicate: Any, timeout: float, what: str, proc: subprocess.Popen) -> None:
    deadline = time.monotonic() + timeout
    while not predicate():
        if proc.poll() is not None:
            raise AssertionError(f"exited early ({proc.returncode}) while waiting for {what}")
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out waiting for {what}")
        time.sleep(0.2)


def test_launch_after_ctrl_c_redoes_the_interrupted_cells_from_their_checkpoint(tmp_path: Path) -> None:
    (tmp_path / "stop.yaml").write_text(space_text(steps=3000, val=1000, ckpt=20, variants="[baseline, block-s2]"))
    url = f"sqlite:///{tmp_path / 'studies.db'}"
    env = dict(os.environ, OMP_NUM_THREADS="1", ATTNRES_RUNS_DIR=str(tmp_path / "runs"))
    env.pop("ATTNRES_STORAGE", None)
    command = [sys.executable, "-m", "attnres_search"]
    made = subprocess.run([*command, "study", "start", str(tmp_path / "stop.yaml"), "--storage", url, "--n-trials",
                           "0"], env=env, capture_output=True, text=True, timeout=300)
    assert made.returncode == 0, made.stderr
    study = optuna.load_study(study_name="stop", storage=url)

    launch = subprocess.Popen([*command, "launch", "stop", "--storage", url, "--workers", "1", "--quiet"], env=env,
                              stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, preexec_fn=sigint_default)
    try:
        checkpoints = lambda: list((tmp_path / "runs" / "stop").glob("*/attempt-*/checkpoints/last.ckpt"))  # noqa: E731
        _wait_for(lambda: bool(checkpoints()), 300, "the first checkpoint", launch)
        launch.send_signal(signal.SIGINT)  # Ctrl-C
        out, err = launch.communicate(timeout=120)
    finally:
        if launch.poll() is None:
            launch.kill()
    assert launch.returncode == 130, out + err
    interrupted = study.get_trials(states=(TrialState.FAIL,))
    assert len(interrupted) == 1 and "interrupted" in interrupted[0].user_attrs[ATTR_ERROR]
    assert interrupted[0].user_attrs[ATTR_RETRY]
    assert not study.get_trials(states=(TrialState.RUNNING,))

    again = subprocess.run([*command, "launch", "stop", "--storage", url, "--workers", "1", "--quiet"], env=env,
                           capture_output=True, text=True, timeout=900)
    assert again.returncode == 0, again.stdout + again.stderr
    per_cell = completed_per_cell(study)
    assert len(per_cell) == 2 and set(per_cell.values()) == {1}  # old code: the study stayed at 0 or 1 of 2
    retry = next(t for t in study.get_trials(states=(TrialState.COMPLETE,))
                 if t.user_attrs[ATTR_CELL] == interrupted[0].user_attrs[ATTR_CELL])
    assert retry.system_attrs.get("failed_trial") == interrupted[0].number
    assert 0 < retry.user_attrs["resumed_from_step"] < 3000 and retry.user_attrs["steps"] == 3000


def test_worker_and_resume_share_what_is_left_to_run(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """An interrupted trial whose re-queue never happened (its worker died right after
    failing it) is run by a plain worker; a failed run is left to `study resume`."""
    monkeypatch.setenv("ATTNRES_RUNS_DIR", str(tmp_path / "runs"))
    url = f"sqlite:///{tmp_path / 'studies.db'}"
    new_study(parse_space("name: left\n" + space_text(variants="[baseline, block-s2]")), "left",
              open_storage(url, mode="create"))
    storage = open_storage(url, mode="write")
    study = optuna.load_study(study_name="left", storage=storage)
    for reason, retry in (("interrupted (Ctrl-C / SIGINT); re-queued", True), ("NonFiniteLoss: loss is nan", False)):
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", UserWarning)  # "heartbeat is meant for optimize": a worker's claim here
            trial = study.ask()
        trial.suggest_categorical("variant", ["baseline", "block-s2"])
        trial.set_user_attr(ATTR_ERROR, reason)
        if retry:
            trial.set_user_attr(ATTR_RETRY, reason)
        study.tell(trial, state=TrialState.FAIL)  # and the worker died before re-queueing it
    from attnres_search.training.run import run as real_run

    ran: list[str] = []

    def runner(cfg: RunConfig, **kw: Any) -> RunResult:
        ran.append(cfg.model.residual.kind)
        return real_run(cfg, **kw)

    summary = run_worker(open_study("left", open_storage(url, mode="write")), runner=runner)
    assert summary.completed == 1 and summary.missing == 1 and ran == ["prenorm"]  # the interrupted cell only
    summary = run_worker(open_study("left", open_storage(url, mode="write")), runner=runner, requeue_failed=True)
    assert summary.completed == 1 and summary.missing == 0
    assert set(completed_per_cell(study).values()) == {1} and len(completed_per_cell(study)) == 2


def test_checkpoints_of_a_reused_study_name_or_another_config_are_never_resumed(tmp_path: Path,
                                                                                monkeypatch) -> None:
    monkeypatch.setenv("ATTNRES_RUNS_DIR", str(tmp_path / "runs"))  # every storage writes its runs here

    def run_study(db: str, steps: int) -> optuna.trial.FrozenTrial:
        url = f"sqlite:///{tmp_path / db}"
        new_study(parse_space("name: reuse\n" + space_text(steps=steps)), "reuse", open_storage(url, mode="create"))
        summary = run_worker(open_study("reuse", open_storage(url, mode="write")))
        assert summary.completed == 1, summary
        return optuna.load_study(study_name="reuse", storage=url).trials[0]

    first = run_study("one.db", steps=8)
    assert first.user_attrs["resumed_from_step"] is None
    assert list((tmp_path / "runs" / "reuse").glob("*/attempt-0/checkpoints/last.ckpt"))
    same = run_study("two.db", steps=8)  # the same name and config in a new storage: a new study
    assert same.state == TrialState.COMPLETE and same.user_attrs["resumed_from_step"] is None
    longer = run_study("three.db", steps=12)  # old code: "cannot resume: ... different steps", failing forever
    assert longer.state == TrialState.COMPLETE and longer.user_attrs["resumed_from_step"] is None
    assert longer.user_attrs["steps"] == 12
    assert len({Path(t.user_attrs["config"]["out_dir"]).parent for t in (first, same, longer)}) == 3


def test_a_corrupt_checkpoint_is_moved_aside_and_the_trial_restarts(tmp_path: Path, monkeypatch) -> None:
    monkeypatch.setenv("ATTNRES_RUNS_DIR", str(tmp_path / "runs"))
    url = f"sqlite:///{tmp_path / 'studies.db'}"
    new_study(parse_space("name: torn\n" + space_text(steps=8)), "torn", open_storage(url, mode="create"))
    from attnres_search.training.run import run as real_run

    def breaks_after_training(cfg: RunConfig, **kw: Any) -> RunResult:
        real_run(cfg, **kw)  # leaves a checkpoint at step 8
        raise RuntimeError("the node went away")

    run_worker(open_study("torn", open_storage(url, mode="write")), runner=breaks_after_training)
    [checkpoint] = (tmp_path / "runs" / "torn").glob("*/attempt-0/checkpoints/last.ckpt")
    checkpoint.write_bytes(checkpoint.read_bytes()[: checkpoint.stat().st_size // 2])  # truncated

    handle = open_study("torn", open_storage(url, mode="write"))
    summary = run_worker(handle, requeue_failed=True)  # old code: PyTorch "failed finding central directory"
    assert summary.completed == 1 and summary.failed == 0
    retry = optuna.load_study(study_name="torn", storage=url).trials[1]
    assert retry.state == TrialState.COMPLETE and retry.user_attrs["resumed_from_step"] is None
    attempt = Path(retry.user_attrs["config"]["out_dir"])
    assert attempt.name == "attempt-1"
    assert (attempt / "checkpoints" / "last.ckpt.corrupt-attempt-0").is_file()
    log = (handle.logs_dir / "trial-1.log").read_text()
    assert "warning: the checkpoint of attempt 0" in log and "corrupt" in log and "starting from scratch" in log


def test_a_sound_checkpoint_of_an_earlier_attempt_is_continued(tmp_path: Path, monkeypatch) -> None:
    monkeypatch.setenv("ATTNRES_RUNS_DIR", str(tmp_path / "runs"))
    url = f"sqlite:///{tmp_path / 'studies.db'}"
    new_study(parse_space("name: sound\n" + space_text(steps=8)), "sound", open_storage(url, mode="create"))
    from attnres_search.training.run import run as real_run

    def breaks_after_training(cfg: RunConfig, **kw: Any) -> RunResult:
        real_run(cfg, **kw)
        raise RuntimeError("the node went away")

    run_worker(open_study("sound", open_storage(url, mode="write")), runner=breaks_after_training)
    [checkpoint] = (tmp_path / "runs" / "sound").glob("*/attempt-0/checkpoints/last.ckpt")
    before = checkpoint.read_bytes()
    run_worker(open_study("sound", open_storage(url, mode="write")), requeue_failed=True)
    retry = optuna.load_study(study_name="sound", storage=url).trials[1]
    assert retry.state == TrialState.COMPLETE and retry.user_attrs["resumed_from_step"] == 8
    assert checkpoint.read_bytes() == before  # the earlier attempt's folder was only read
