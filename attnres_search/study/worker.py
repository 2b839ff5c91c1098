"""The worker loop: claim a trial, run it, until the space is exhausted or Ctrl-C.

Workers share nothing but the storage. ``run_worker`` pulls WAITING trials; Optuna claims
each atomically (WAITING -> RUNNING is a conditional update, made atomic on SQLite by
``BEGIN IMMEDIATE``, see :mod:`attnres_search.study.storage`), so two workers never get the
same one. A grid worker stops when every cell has a finished trial, and waits while other
trials still run: they either finish or stop sending heartbeats, are failed after the
grace period and re-queued by the storage's retry callback, and a worker picks them up.
Sampled (TPE/random) spaces are simpler: workers ask the sampler until the study holds
``n_trials`` finished trials.
"""

from __future__ import annotations

import contextlib
import signal
import threading
import time
import warnings
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, Callable, Iterator

from attnres_search.study.attrs import ATTR_ERROR, ATTR_LOG, ATTR_SKIPPED
from attnres_search.study.cells import cell_label
from attnres_search.study.heartbeats import fail_trials_without_heartbeat
from attnres_search.study.objective import Runner, StudyProgress, make_objective
from attnres_search.study.status import NO_REASON, FailedTrial, trial_params
from attnres_search.study.trial_logs import TrialLogRouter, route_optuna_logs, trial_log_path

if TYPE_CHECKING:
    import optuna

    from attnres_search.study.handle import StudyHandle


@dataclass
class WorkerSummary:
    """What one ``run_worker`` call did, and what the study still lacks."""

    ran: int = 0
    completed: int = 0
    failed: int = 0
    pruned: int = 0
    skipped: int = 0
    missing: int = 0  # grid cells x seeds with no finished trial when the worker stopped


def run_worker(handle: "StudyHandle", *, n_trials: int | None = None, progress: StudyProgress | None = None,
               runner: Runner | None = None, requeue_failed: bool = False, poll_s: float = 2.0,
               devices_per_trial: int = 1) -> WorkerSummary:
    """Run trials of the study until its space is exhausted (or ``n_trials`` ran here).

    ``devices_per_trial > 1`` runs each trial with Lightning DDP on that many devices; this
    process stays the only one that talks to Optuna (see :mod:`attnres_search.training.ddp`).
    Safe to run in many processes and on many machines at once against one storage.
    ``requeue_failed`` (``study resume``) first re-queues cells whose trials all failed.
    ``runner`` defaults to :func:`attnres_search.training.run`; tests inject a fake.
    Ctrl-C stops at the next safe point and raises ``KeyboardInterrupt`` afterwards.
    """
    if runner is None:
        from attnres_search.training.run import run as runner
    if requeue_failed:
        handle.enqueue_missing()
    with WorkerInterrupts() as interrupts, route_optuna_logs() as logs:
        objective = make_objective(handle, runner, progress=progress, devices_per_trial=devices_per_trial,
                                   interrupts=interrupts, logs=logs)
        summary = _work(handle, objective, interrupts, logs, n_trials=n_trials, progress=progress, poll_s=poll_s)
    if interrupts.requested:
        raise KeyboardInterrupt
    return summary


def _work(handle: "StudyHandle", objective: Callable[["optuna.Trial"], float], interrupts: "WorkerInterrupts",
          logs: TrialLogRouter, *, n_trials: int | None, progress: StudyProgress | None,
          poll_s: float) -> WorkerSummary:
    """The worker loop proper: claim a trial, run it, until nothing is left or Ctrl-C."""
    import optuna

    space, study = handle.space, handle.study
    summary = WorkerSummary()
    while (n_trials is None or summary.ran < n_trials) and not interrupts.requested:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", optuna.exceptions.ExperimentalWarning)
            optuna.storages.fail_stale_trials(study)  # dead workers' trials -> FAIL -> re-queued
        fail_trials_without_heartbeat(handle)
        status = handle.status()
        if status.waiting == 0:
            if not space.is_grid:
                if status.done + status.failed >= (space.n_trials or 0):
                    break
            elif status.remaining == 0 or status.running == 0:
                break  # all done, or what is left failed (`study resume` re-queues that)
            else:  # other workers' trials: they finish, or go stale and come back as WAITING
                if progress is not None:
                    progress.waiting(status.running)
                time.sleep(poll_s)
                continue
        try:
            study.optimize(objective, n_trials=1, catch=(Exception,),
                           callbacks=[lambda _study, trial: _tally(handle, summary, trial, progress)])
        except SystemExit as exc:
            # Lightning turns SIGTERM (a preemption) into SystemExit(None), i.e. exit status 0.
            # Leave with 128 + SIGTERM instead; the trial stays RUNNING, stops beating, and is
            # re-run by the next worker once its grace period is over.
            raise SystemExit(143 if exc.code in (None, 0) else exc.code) from exc
        finally:
            logs.end_trial()
    summary.missing = handle.status().remaining or 0
    return summary


class WorkerInterrupts:
    """Ctrl-C for a worker. While a trial runs it raises KeyboardInterrupt at once (Optuna
    fails that trial, to be re-run). Elsewhere it is only noted and acted on at the next
    safe point: between Optuna claiming a trial and the objective starting, an interrupt
    would escape Optuna's bookkeeping and leave the trial RUNNING until its heartbeat went
    stale. Only the main thread can own signal handlers; elsewhere this does nothing."""

    def __init__(self) -> None:
        self.requested = False
        self._in_trial = False
        self._previous: Any = None

    def __enter__(self) -> "WorkerInterrupts":
        if threading.current_thread() is threading.main_thread():
            self._previous = signal.signal(signal.SIGINT, self._handle)
        return self

    def __exit__(self, *exc: object) -> None:
        if self._previous is not None:
            signal.signal(signal.SIGINT, self._previous)

    def _handle(self, signum: int, frame: object) -> None:
        self.requested = True
        if self._in_trial:
            raise KeyboardInterrupt

    @contextlib.contextmanager
    def trial(self) -> Iterator[None]:
        if self.requested:
            raise KeyboardInterrupt
        self._in_trial = True
        try:
            yield
        finally:
            self._in_trial = False


def _tally(handle: "StudyHandle", summary: WorkerSummary, trial: "optuna.trial.FrozenTrial",
           progress: StudyProgress | None) -> None:
    """Count a trial this worker just finished (Optuna calls this after each trial)."""
    from optuna.trial import TrialState

    if ATTR_SKIPPED in trial.user_attrs:
        summary.skipped += 1
        return
    summary.ran += 1
    if trial.state == TrialState.COMPLETE:
        summary.completed += 1
    elif trial.state == TrialState.PRUNED:
        summary.pruned += 1
    else:
        summary.failed += 1
    if progress is None:
        return
    if trial.state == TrialState.FAIL:
        log = trial.user_attrs.get(ATTR_LOG) or str(trial_log_path(handle.logs_dir, trial.number))
        progress.trial_failed(FailedTrial(trial.number, cell_label(trial_params(trial)),
                                          trial.user_attrs.get(ATTR_ERROR, NO_REASON), log))
    progress.trial_finished(trial.number, trial.state.name.lower(), trial.value)
