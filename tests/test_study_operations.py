"""What a researcher sees while running and tending studies (issue 10, items 17-19): a
failed trial is one line (its traceback in the trial's log file), studies can be deleted,
and `study status` shows heartbeat ages, flags stale trials, and does not list failures
that a later run of the same cell already made good."""

from __future__ import annotations

import io
import os
import subprocess
import sys
import time
import warnings
from pathlib import Path
from typing import Any

import optuna
import pytest
from optuna.trial import TrialState

from attnres_search.study.handle import StudyHandle, new_study, open_study
from attnres_search.study.space_file import parse_space
from attnres_search.study.status import superseded_failures
from attnres_search.study.storage import open_storage
from attnres_search.study.worker import run_worker
from attnres_search.training.config import RunConfig, RunResult
from tests.cli_runner import cli

optuna.logging.set_verbosity(optuna.logging.WARNING)

SPACE = """
model: {n_layers: 2, d_model: 32, n_heads: 2, seq_len: 32}
train: {tokens: 10k, batch_size: 4}
variants: [baseline, full]
seeds: 2
"""


def fake_runner(cfg: RunConfig, **_: Any) -> RunResult:
    loss = 3.0 + 0.01 * cfg.seed
    return RunResult(config=cfg.to_dict(), params_total=10, params_non_embedding=5, flops_per_token=1.0,
                     flops_total=1.0, tokens=cfg.tokens, steps=2, tokens_per_s=1.0, wall_time_s=0.1,
                     final_val_loss=loss, best_val_loss=loss, val_curve=[(1, loss + 1), (2, loss)])


@pytest.fixture
def url(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> str:
    monkeypatch.chdir(tmp_path)
    monkeypatch.setenv("ATTNRES_RUNS_DIR", str(tmp_path / "runs"))
    monkeypatch.delenv("ATTNRES_STORAGE", raising=False)
    return f"sqlite:///{tmp_path / 'studies.db'}"


def create(url: str, name: str = "x") -> StudyHandle:
    return new_study(parse_space(SPACE), name, open_storage(url, mode="create"))


def opened(url: str, name: str = "x") -> StudyHandle:
    return open_study(name, open_storage(url, mode="write"))


# -------------------------------------------------------- item 17: one line per failed trial

@pytest.mark.slow
@pytest.mark.parametrize("quiet", [False, True], ids=["display", "quiet"])
def test_a_failed_trial_is_one_line_and_its_traceback_is_in_its_log(quiet: bool, tmp_path: Path) -> None:
    (tmp_path / "nan.yaml").write_text(
        "model: {n_layers: 1, d_model: 16, n_heads: 2, seq_len: 16}\n"
        "train: {steps: 4, tokens: null, batch_size: 4, val_every: 2, val_windows: 2, diagnostics_every: 1000}\n"
        "variants: [baseline]\naxes: {lr: [1.0e+30]}\n")
    env = dict(os.environ, OMP_NUM_THREADS="1", ATTNRES_RUNS_DIR=str(tmp_path / "runs"))
    env.pop("ATTNRES_STORAGE", None)
    out = subprocess.run([sys.executable, "-m", "attnres_search", "study", "start", "nan.yaml",
                          *(["--quiet"] if quiet else [])], cwd=tmp_path, env=env, capture_output=True, text=True,
                         timeout=600)
    assert out.returncode == 1, out.stderr
    log = tmp_path / "runs" / "nan" / "logs" / "trial-0.log"
    failure = [line for line in out.stderr.splitlines() if "failed:" in line]
    assert failure == [f"trial 0 failed: variant=baseline lr=1e+30 seed=0: NonFiniteLoss: "
                       f"{failure[0].split('NonFiniteLoss: ', 1)[1]}"], out.stderr
    assert failure[0].endswith(f"(log {log})")
    assert "Traceback" not in out.stderr and "optuna" not in out.stderr.lower(), out.stderr
    assert out.stderr.strip().splitlines()[-1].startswith("error: 1 trial(s) failed")
    text = log.read_text()
    assert "Traceback (most recent call last)" in text and "NonFiniteLoss" in text
    trial = optuna.load_study(study_name="nan", storage=f"sqlite:///{tmp_path / 'studies.db'}").trials[0]
    assert trial.state == TrialState.FAIL and trial.user_attrs["log"] == str(log)


# ------------------------------------------------------------------- item 18: study delete

def test_delete_asks_and_removes_only_that_study(url: str, monkeypatch, capsys) -> None:
    create(url, "x")
    create(url, "y")
    monkeypatch.setattr(sys, "stdin", io.StringIO("n\n"))
    code, _, err = cli(["study", "delete", "x", "--storage", url], monkeypatch, capsys)
    assert code == 1 and "delete study x and its 4 trial(s)" in err and "not deleted" in err
    assert optuna.get_all_study_names(url) == ["x", "y"]
    monkeypatch.setattr(sys, "stdin", io.StringIO("y\n"))
    code, _, err = cli(["study", "delete", "x", "--storage", url], monkeypatch, capsys)
    assert code == 0 and "deleted study x" in err
    assert optuna.get_all_study_names(url) == ["y"]
    code, _, err = cli(["study", "delete", "y", "--yes", "--storage", url], monkeypatch, capsys)
    assert code == 0 and optuna.get_all_study_names(url) == []
    code, _, err = cli(["study", "delete", "y", "--yes", "--storage", url], monkeypatch, capsys)
    assert code == 2 and "no study named 'y'" in err


def test_start_on_an_existing_name_says_how_to_resume_or_delete(url: str, tmp_path: Path, monkeypatch,
                                                                capsys) -> None:
    create(url, "x")
    (tmp_path / "x.yaml").write_text(SPACE)
    code, _, err = cli(["study", "start", "x.yaml", "--storage", url], monkeypatch, capsys)
    assert code == 2 and len(err.strip().splitlines()) == 1
    assert "already exists" in err and "study resume x" in err and "study delete x" in err
    code, _, err = cli(["study", "delete", "x", "--yes", "--storage", url], monkeypatch, capsys)
    assert code == 0
    code, _, err = cli(["study", "start", "x.yaml", "--storage", url, "--n-trials", "0"], monkeypatch, capsys)
    assert code == 0, err


# --------------------------------------------- item 19: heartbeat ages and superseded failures

def test_status_shows_heartbeat_ages_and_flags_stale_trials(url: str, monkeypatch, capsys) -> None:
    monkeypatch.setenv("ATTNRES_HEARTBEAT_INTERVAL", "1")
    monkeypatch.setenv("ATTNRES_HEARTBEAT_GRACE", "1")
    handle = create(url)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", UserWarning)  # "heartbeat is meant for optimize": the point here
        beating = optuna.load_study(study_name="x", storage=handle.storage).ask()
        silent = optuna.load_study(study_name="x", storage=handle.storage).ask()
    handle.storage.record_heartbeat(beating._trial_id)
    code, out, _ = cli(["study", "status", "x", "--storage", url], monkeypatch, capsys)
    assert code == 0 and "Running trials" in out
    rows = {line.split("│")[1].strip(): line for line in out.splitlines() if line.count("│") >= 3}
    assert "s ago" in rows[str(beating.number)] and "alive" in rows[str(beating.number)]
    assert "never" in rows[str(silent.number)]
    time.sleep(2.2)  # both outlive the 1 s grace: a dead worker's trials look like this
    code, out, _ = cli(["study", "status", "x", "--storage", url], monkeypatch, capsys)
    rows = {line.split("│")[1].strip(): line for line in out.splitlines() if line.count("│") >= 3}
    assert "stale" in rows[str(beating.number)] and "stale" in rows[str(silent.number)]
    assert [t.state for t in opened(url).trials()].count(TrialState.RUNNING) == 2  # status only reads


def test_failures_a_later_run_made_good_are_not_listed(url: str, monkeypatch, capsys) -> None:
    monkeypatch.setenv("ATTNRES_HEARTBEAT_INTERVAL", "1")
    monkeypatch.setenv("ATTNRES_HEARTBEAT_GRACE", "1")
    handle = create(url)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", UserWarning)
        dead = optuna.load_study(study_name="x", storage=handle.storage).ask()  # its worker "dies"
    handle.storage.record_heartbeat(dead._trial_id)
    time.sleep(1.5)

    def flaky(cfg: RunConfig, **kwargs: Any) -> RunResult:
        if cfg.model.residual.kind == "full" and cfg.seed == 1:
            raise ValueError("loss became nan at step 3")
        return fake_runner(cfg, **kwargs)

    summary = run_worker(opened(url), runner=flaky, poll_s=0.2)  # the dead trial is failed and retried
    assert summary.failed == 1 and summary.missing == 1
    code, out, _ = cli(["study", "status", "x", "--storage", url], monkeypatch, capsys)
    assert code == 0 and "Failed trials" in out and "loss became nan" in out and "failed 1" in out
    assert f"│ {dead.number} " not in out.split("Failed trials")[1]  # retried and completed: not a failure

    run_worker(opened(url), runner=fake_runner, requeue_failed=True)  # `study resume` completes the cell
    handle = opened(url)
    failed = {t.number for t in handle.trials((TrialState.FAIL,))}
    assert len(failed) == 2 and superseded_failures(handle.trials()) == failed
    code, out, _ = cli(["study", "status", "x", "--storage", url], monkeypatch, capsys)
    assert code == 0 and "Failed trials" not in out and "failed 0" in out and "complete" in out
    per_variant = {line.split("│")[1].strip(): line.split("│")[5].strip() for line in out.splitlines()
                   if line.count("│") >= 6}
    assert per_variant["baseline"] == per_variant["full"] == "0"  # the failed column
