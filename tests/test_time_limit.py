"""Issue 20, item 1: ``--time-limit`` lets a study grow across time-limited allocations.

Unit tests for the duration parsing and the claim decision; a real study (tiny models on
CPU) run across three time-limited worker runs whose clock the test moves at chosen steps
(a deadline mid-trial, a claim refused for lack of time); and the CLI with a real clock.
"""

from __future__ import annotations

import datetime
import os
import re
import subprocess
import sys
import textwrap
import time
from collections import Counter
from pathlib import Path
from types import SimpleNamespace
from typing import Any

import lightning as L
import optuna
import pytest
from optuna.trial import TrialState

from attnres_search.study.attrs import ATTR_CELL, ATTR_RETRY
from attnres_search.study.handle import new_study, open_study
from attnres_search.study.space_file import parse_space
from attnres_search.study.storage import open_storage
from attnres_search.study.time_limit import (TimeLimit, TimeLimitReached, claim_estimate, full_run_s, may_claim,
                                             reserve_s, stop_line)
from attnres_search.study.worker import run_worker
from attnres_search.training.config import RunConfig, RunResult
from attnres_search.units import format_duration, parse_duration
from cli_runner import cli

# ------------------------------------------------------------------------------- durations


@pytest.mark.parametrize("text, seconds", [
    ("90s", 90), ("10m", 600), ("1h30m", 5400), ("2.5h", 9000), ("1d2h", 93600), ("1h 30m", 5400),
    ("1:30:00", 5400), ("5:00", 300), ("0.5s", 0.5), ("45M", 2700),
])
def test_durations_parse(text: str, seconds: float) -> None:
    assert parse_duration(text) == seconds


@pytest.mark.parametrize("text, message", [
    ("90", "give a unit"),  # Slurm would read minutes, most tools seconds: refused, not guessed
    ("0s", "must be positive"), ("0:00", "must be positive"), ("-5s", "not a duration"), ("1m1h", "not a duration"),
    ("10m10m", "not a duration"), ("1:75", "not a duration"), ("soon", "not a duration"), ("", "not a duration"),
])
def test_bad_durations_are_refused(text: str, message: str) -> None:
    with pytest.raises(ValueError, match=message):
        parse_duration(text, "--time-limit")


def test_durations_format_back() -> None:
    assert [format_duration(s) for s in (0, 59.6, 95, 5400, 93784)] == ["0s", "1m", "1m35s", "1h30m", "1d2h3m4s"]


# ------------------------------------------------------------------------- claim decision


def finished(variant: str, seconds: float, steps: int = 100, resumed: int | None = None) -> Any:
    start = datetime.datetime(2025, 1, 1, 12, 0, 0)
    return SimpleNamespace(datetime_start=start, datetime_complete=start + datetime.timedelta(seconds=seconds),
                           params={"variant": variant, "seed": 0},
                           user_attrs={"steps": steps, "resumed_from_step": resumed})


def test_a_resumed_run_counts_as_long_as_the_whole_run() -> None:
    assert full_run_s(finished("full", 30.0)) == 30.0
    assert full_run_s(finished("full", 30.0, steps=100, resumed=75)) == 120.0  # ran the last quarter in 30 s


def test_the_estimate_is_the_longest_run_of_a_variant_waiting_to_run() -> None:
    done = [finished("baseline", 40.0), finished("baseline", 50.0), finished("mhc", 200.0)]
    assert claim_estimate(done, ["baseline", "baseline"]) == 50.0
    assert claim_estimate(done, ["baseline", "mhc"]) == 200.0
    assert claim_estimate(done, ["full"]) == 200.0  # no full run finished yet: the longest of any variant
    assert claim_estimate([], ["baseline"]) is None


@pytest.mark.parametrize("estimate, left, limit, claim", [
    (None, 5.0, 600.0, True),  # nothing finished yet: start one, nothing else says how long it takes
    (50.0, 60.0, 600.0, True),  # 1.1 x 50 fits in 60
    (50.0, 54.0, 600.0, False),  # 55 does not fit in 54
    (None, 0.0, 600.0, False),  # the deadline has passed
    (900.0, 400.0, 600.0, True),  # longer than any allocation: start it while half the limit is left
    (900.0, 250.0, 600.0, False),
])
def test_claim_decision(estimate: float | None, left: float, limit: float, claim: bool) -> None:
    assert may_claim(estimate, left, limit) is claim


def test_the_deadline_keeps_a_reserve_to_checkpoint_and_exit() -> None:
    now = [100.0]
    limit = TimeLimit(600.0, clock=lambda: now[0])
    assert reserve_s(600.0) == 30.0 and reserve_s(60.0) == 3.0
    assert limit.left() == 570.0 and not limit.expired()
    now[0] += 570.0
    assert limit.expired()
    with pytest.raises(ValueError, match="positive"):
        TimeLimit(0.0)


def test_the_stop_line_says_what_is_left() -> None:
    assert stop_line(finished=3, requeued=TimeLimitReached(120, Path("last.ckpt")), left=5) == (
        "time limit: 3 trial(s) finished, 1 requeued from its checkpoint at step 120, 5 left")
    assert stop_line(finished=0, requeued=TimeLimitReached(0, None), left=1) == (
        "time limit: 0 trial(s) finished, 1 requeued before its first step, 1 left")
    assert stop_line(finished=2, requeued=None, left=4, estimate_s=52.4, left_s=40.2) == (
        "time limit: 2 trial(s) finished, none started that would not finish (next ~52s, 40s left), 4 left")
    assert stop_line(finished=1, requeued=None, left=2, estimate_s=None, left_s=-0.5) == (
        "time limit: 1 trial(s) finished, no time left to start another, 2 left")


# ----------------------------------------------------- a real study across time-limited runs

SPACE = """
name: windows
model: {n_layers: 1, d_model: 16, n_heads: 2, seq_len: 16}
train: {steps: 30, tokens: null, batch_size: 4, val_every: 10, val_windows: 2, diagnostics_every: 100000}
variants: [baseline, block-s2]
seeds: 2
"""


class Clock:
    """A monotonic clock the test can move forward (a deadline that falls at a chosen step)."""

    def __init__(self) -> None:
        self.offset = 0.0

    def __call__(self) -> float:
        return time.monotonic() + self.offset


class MoveClock(L.Callback):
    """Move ``clock`` forward by ``seconds`` once the run has finished step ``step``."""

    def __init__(self, clock: Clock, step: int, seconds: float) -> None:
        self.clock, self.step, self.seconds = clock, step, seconds

    def on_train_batch_end(self, trainer: L.Trainer, *args: Any) -> None:
        if trainer.global_step == self.step:
            self.clock.offset += self.seconds


class StepCount(L.Callback):
    """Count every optimizer step trained, per cell (what "nothing run twice" is about)."""

    def __init__(self, counts: Counter, cell: str) -> None:
        self.counts, self.cell = counts, cell

    def on_train_batch_end(self, trainer: L.Trainer, *args: Any) -> None:
        self.counts[self.cell] += 1


def test_a_study_grows_across_time_limited_runs_and_loses_no_step(tmp_path: Path,
                                                                  monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("ATTNRES_RUNS_DIR", str(tmp_path / "runs"))
    url = f"sqlite:///{tmp_path / 'studies.db'}"
    new_study(parse_space(textwrap.dedent(SPACE)), "windows", open_storage(url, mode="create"))
    from attnres_search.training.run import run as real_run

    steps: Counter = Counter()
    moves: dict[int, MoveClock] = {}  # trial number -> the clock move made while it trains

    def runner(cfg: RunConfig, *, callbacks: list[L.Callback] = (), **kw: Any) -> RunResult:
        number = int(Path(cfg.out_dir).name.removeprefix("attempt-"))
        cell = Path(cfg.out_dir).parent.name
        extra = [StepCount(steps, cell)] + ([moves[number]] if number in moves else [])
        return real_run(cfg, callbacks=[*extra, *callbacks], **kw)  # the clock moves before the deadline is read

    def worker(clock: Clock) -> Any:
        return run_worker(open_study("windows", open_storage(url, mode="write")), runner=runner,
                          time_limit=TimeLimit(3600.0, clock=clock))

    # Run 1: trial 0 finishes; the deadline falls after step 10 of trial 1, which is checkpointed
    # there (the space sets no ckpt_every) and re-queued; the worker stops, exit 0 in the CLI.
    clock = Clock()
    moves[1] = MoveClock(clock, 10, 10 * 3600.0)  # a validation is due at step 10: it runs once, on resume
    first = worker(clock)
    assert first.time_limited and first.completed == 1 and first.missing == 3
    assert first.requeued is not None and first.requeued.step == 10 and first.requeued.checkpoint.is_file()
    assert first.time_limit_line() == "time limit: 1 trial(s) finished, 1 requeued from its checkpoint at step 10, 3 left"
    study = optuna.load_study(study_name="windows", storage=url)
    [stopped] = study.get_trials(states=(TrialState.FAIL,))
    assert stopped.number == 1 and stopped.user_attrs[ATTR_RETRY].startswith("time limit reached after step 10")
    [retry] = [t for t in study.get_trials(states=(TrialState.WAITING,)) if t.system_attrs.get("failed_trial") == 1]

    # Run 2: trial 2 finishes, then only a fraction of a second is left: no trial that
    # would not finish is started.
    clock = Clock()
    moves[2] = MoveClock(clock, 30, 3600.0 - reserve_s(3600.0) - 0.2)
    second = worker(clock)
    assert second.time_limited and second.completed == 1 and second.requeued is None and second.missing == 2
    assert second.next_estimate_s is not None and second.next_estimate_s > second.left_s
    assert re.fullmatch(r"time limit: 1 trial\(s\) finished, (none started that would not finish "
                        r"\(next ~\d+s, 0s left\)|no time left to start another), 2 left", second.time_limit_line())

    # Run 3: the rest, the re-queued trial continuing from its checkpoint at step 10.
    third = worker(Clock())
    assert not third.time_limited and third.time_limit_line() is None
    assert third.completed == 2 and third.missing == 0
    done = study.get_trials(states=(TrialState.COMPLETE,))
    assert len(done) == 4 and len({t.user_attrs[ATTR_CELL] for t in done}) == 4  # every cell once
    resumed = next(t for t in done if t.number == retry.number)
    assert resumed.user_attrs["resumed_from_step"] == 10 and resumed.user_attrs["steps"] == 30
    assert sorted(t.user_attrs["resumed_from_step"] is None for t in done) == [False, True, True, True]
    # Nothing trained twice: 30 steps per cell in all, the stopped cell's 10 + 20 included.
    assert sorted(steps.values()) == [30, 30, 30, 30]
    # And nothing lost: the resumed run ends exactly where one uninterrupted run of its cell ends.
    config = RunConfig.from_dict({**resumed.user_attrs["config"], "out_dir": str(tmp_path / "straight"),
                                  "resume": False})
    from attnres_search.training.run import run as real_run

    straight = real_run(config, progress=False)
    assert resumed.value == straight.final_val_loss
    assert resumed.user_attrs["val_curve"] == [list(p) for p in straight.val_curve]


# ---------------------------------------------------------------------------------- the CLI

LONG = """
model: {n_layers: 1, d_model: 16, n_heads: 2, seq_len: 16}
train: {steps: 100000, tokens: null, batch_size: 4, val_every: 100000, val_windows: 2, diagnostics_every: 100000}
variants: [baseline]
seeds: 1
"""
REQUEUED = r"time limit: 0 trial\(s\) finished, 1 requeued (from its checkpoint at step \d+|before its first step), 1 left"


@pytest.mark.parametrize("command", [["worker", "long"], ["study", "resume", "long"], ["launch", "long", "--workers", "1"]])
@pytest.mark.parametrize("value", ["90", "0s", "ten minutes"])
def test_a_bad_time_limit_is_one_line_and_writes_nothing(tmp_path: Path, monkeypatch: pytest.MonkeyPatch,
                                                         capsys: pytest.CaptureFixture, command: list[str],
                                                         value: str) -> None:
    storage = tmp_path / "studies.db"
    code, out, err = cli([*command, "--storage", f"sqlite:///{storage}", "--time-limit", value], monkeypatch, capsys)
    assert code == 2 and len(err.strip().splitlines()) == 1, err
    assert err.startswith("error: --time-limit: ") or err.startswith("error: --time-limit must"), err
    assert not storage.exists()


def test_study_resume_stops_at_its_time_limit_and_says_what_is_left(tmp_path: Path, monkeypatch: pytest.MonkeyPatch,
                                                                    capsys: pytest.CaptureFixture) -> None:
    monkeypatch.setenv("ATTNRES_RUNS_DIR", str(tmp_path / "runs"))
    (tmp_path / "long.yaml").write_text(textwrap.dedent(LONG))
    url = f"sqlite:///{tmp_path / 'studies.db'}"
    code, _, err = cli(["study", "start", str(tmp_path / "long.yaml"), "--storage", url, "--n-trials", "0"],
                       monkeypatch, capsys)
    assert code == 0, err
    started = time.monotonic()
    code, _, err = cli(["study", "resume", "long", "--storage", url, "--time-limit", "2s", "--quiet"], monkeypatch, capsys)
    assert code == 0, err
    assert time.monotonic() - started < 60  # 100,000 steps would take many minutes
    assert re.fullmatch(REQUEUED, err.strip().splitlines()[-1]), err
    study = optuna.load_study(study_name="long", storage=url)
    assert [t.state for t in study.trials] == [TrialState.FAIL, TrialState.WAITING]


@pytest.mark.slow
def test_launch_passes_its_time_limit_to_the_workers(tmp_path: Path) -> None:
    (tmp_path / "long.yaml").write_text(textwrap.dedent(LONG))
    url = f"sqlite:///{tmp_path / 'studies.db'}"
    env = dict(os.environ, OMP_NUM_THREADS="1", ATTNRES_RUNS_DIR=str(tmp_path / "runs"))
    env.pop("ATTNRES_STORAGE", None)
    command = [sys.executable, "-m", "attnres_search"]
    made = subprocess.run([*command, "study", "start", str(tmp_path / "long.yaml"), "--storage", url, "--n-trials", "0"],
                          env=env, capture_output=True, text=True, timeout=300)
    assert made.returncode == 0, made.stderr
    done = subprocess.run([*command, "launch", "long", "--storage", url, "--workers", "1", "--time-limit", "3s",
                           "--quiet"], env=env, capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, done.stdout + done.stderr
    assert done.stderr.strip().splitlines()[-1] == ("time limit: 0 run(s) done, 1 left; launch again to continue "
                                                    "(re-queued trials continue from their checkpoints)")
    log = (tmp_path / "runs" / "long" / "logs" / "worker-0.log").read_text()
    # The worker's own line (its 3 s may run out while it starts, before it claims the trial).
    assert re.search(rf"({REQUEUED}|time limit: 0 trial\(s\) finished, no time left to start another, 1 left)",
                     log), log
