"""The worker loop: claim a trial, run it, until the space is exhausted or Ctrl-C.

Workers share nothing but the storage. ``run_worker`` pulls WAITING trials; Optuna claims
each atomically (WAITING -> RUNNING is a conditional update, made atomic on SQLite by
``BEGIN IMMEDIATE``, see :mod:`attnres_search.study.storage`), so two workers never get the
same one. A grid worker stops when every cell has a finished trial, and waits while other
trials still run: they either finish or stop sending heartbeats, are failed after the
grace period and re-queued by the storage's retry callback, and a worker picks them up.
Sampled (TPE/random) spaces are simpler: workers ask the sampler until the study holds
``n_trials`` finished trials.

Every worker starts by queueing what is left to run (one rule for ``worker``, ``launch``
and ``study resume``, see :func:`attnres_search.study.status.left_to_run`), and uses the
study's own heartbeat settings, re-read before each trial. A trial stopped by Ctrl-C or
SIGTERM is failed with its reason and re-queued at once (Optuna's public retry callback,
which links the retry to it), so the next worker continues it from its checkpoint. A full
disk does the same and stops the worker with a "disk full" :class:`DiskFull`. A trial
another worker failed as stale while it ran here is let go: its result stays in its log.

With a time limit (:mod:`attnres_search.study.time_limit`) the worker claims a trial only
when it is expected to finish in time, and at the deadline checkpoints the running trial,
re-queues it and stops; the summary then says what is left (``stop_line``).
"""

from __future__ import annotations

import contextlib
import signal
import threading
import time
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, Iterator

from attnres_search.study.attrs import ATTR_ERROR, ATTR_LOG, ATTR_RETRY, ATTR_SKIPPED
from attnres_search.study.cells import cell_label
from attnres_search.study.heartbeats import fail_stale_trials
from attnres_search.study.objective import (DiskFull, Runner, StudyProgress, TrialObjective, disk_full_reason,
                                            make_objective, stored_state, taken_note)
from attnres_search.study.status import NO_REASON, FailedTrial, trial_params
from attnres_search.study.time_limit import TimeLimit, TimeLimitReached, claim_estimate, may_claim, stop_line
from attnres_search.study.trial_logs import TrialLogRouter, route_optuna_logs, trial_log_path, write_trial_log

__all__ = ["DiskFull", "WorkerInterrupts", "WorkerSummary", "run_worker"]

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
    interrupted: int = 0  # stopped by Ctrl-C / SIGTERM / a full disk, and re-queued
    taken: int = 0  # failed as stale by another worker while running here (result in the trial's log)
    missing: int = 0  # grid cells x seeds with no finished trial when the worker stopped
    time_limited: bool = False  # stopped by its time limit with work left
    requeued: TimeLimitReached | None = None  # the trial its deadline stopped and re-queued
    next_estimate_s: float | None = None  # the claim refused for lack of time: its expected duration
    left_s: float | None = None  # ... and the seconds that were left

    def time_limit_line(self) -> str | None:
        """The one line a worker stopped by its time limit reports (None otherwise)."""
        if not self.time_limited:
            return None
        return stop_line(finished=self.completed + self.pruned + self.failed, requeued=self.requeued,
                         left=self.missing, estimate_s=self.next_estimate_s, left_s=self.left_s)


def run_worker(handle: "StudyHandle", *, n_trials: int | None = None, progress: StudyProgress | None = None,
               runner: Runner | None = None, requeue_failed: bool = False, poll_s: float = 2.0,
               devices_per_trial: int = 1, time_limit: TimeLimit | None = None) -> WorkerSummary:
    """Run trials of the study until its space is exhausted (or ``n_trials`` ran here).

    ``devices_per_trial > 1`` runs each trial with Lightning DDP on that many devices; this
    process stays the only one that talks to Optuna (see :mod:`attnres_search.training.ddp`).
    Safe to run in many processes and on many machines at once against one storage.
    It first queues what is left to run; ``requeue_failed`` (``study resume``) includes
    the cells whose runs failed. ``runner`` defaults to :func:`attnres_search.training.run`;
    tests inject a fake. Ctrl-C stops at the next safe point and raises ``KeyboardInterrupt``
    afterwards; SIGTERM raises ``SystemExit(143)``; a full disk raises :class:`DiskFull`.
    ``time_limit``: claim only trials that fit, checkpoint and re-queue the running one at
    the deadline, and return (``summary.time_limited`` when work is left).
    """
    from attnres_search.training.provenance import git_commit
    if runner is None:
        from attnres_search.training.run import run as runner
    git_commit()  # pin the commit of the code this process imported, before any run
    handle.sync_heartbeat()
    handle.enqueue_missing(include_failed=requeue_failed)
    with WorkerInterrupts() as interrupts, route_optuna_logs() as logs:
        objective = make_objective(handle, runner, progress=progress, devices_per_trial=devices_per_trial,
                                   interrupts=interrupts, logs=logs, time_limit=time_limit)
        summary = _work(handle, objective, interrupts, logs, n_trials=n_trials, progress=progress, poll_s=poll_s,
                        time_limit=time_limit)
    if interrupts.requested:
        raise KeyboardInterrupt
    return summary


def _work(handle: "StudyHandle", objective: TrialObjective, interrupts: "WorkerInterrupts",
          logs: TrialLogRouter, *, n_trials: int | None, progress: StudyProgress | None,
          poll_s: float, time_limit: TimeLimit | None = None) -> WorkerSummary:
    """The worker loop proper: claim a trial, run it, until nothing is left or Ctrl-C."""
    space, study = handle.space, handle.study
    summary = WorkerSummary()
    while (n_trials is None or summary.ran < n_trials) and not interrupts.requested:
        handle.sync_heartbeat()  # `study set` may have changed them
        fail_stale_trials(handle)  # dead workers' trials -> FAIL -> re-queued
        status = handle.status()
        if status.waiting == 0:
            if not space.is_grid:
                if status.done + status.failed >= (space.n_trials or 0):
                    break
            elif status.remaining == 0 or status.running == 0:
                break  # all done, or what is left failed (`study resume` re-queues that)
            elif time_limit is not None and time_limit.expired():
                summary.time_limited = True  # other workers' trials: theirs to finish or re-queue
                break
            else:  # other workers' trials: they finish, or go stale and come back as WAITING
                if progress is not None:
                    progress.waiting(status.running)
                time.sleep(poll_s)
                continue
        if time_limit is not None and not _claim_fits(handle, time_limit, summary):
            break
        objective.forget()  # `last` must describe this iteration's trial, or none
        try:
            study.optimize(objective, n_trials=1, catch=(Exception,),
                           callbacks=[lambda _study, trial: _tally(handle, summary, trial, progress)])
        except KeyboardInterrupt:
            # Optuna failed the trial (the objective stored why); queue it again and stop.
            _requeue(handle, objective.last.number)
            interrupts.requested = True
            break
        except SystemExit as exc:
            # SIGTERM outside the objective (which turns it into a failed, re-queued trial):
            # leave with 128 + SIGTERM, never 0; a trial left RUNNING goes stale and is re-run.
            raise SystemExit(143 if exc.code in (None, 0) else exc.code) from exc
        except Exception as exc:
            if _let_go_if_taken(handle, objective):
                summary.taken += 1
                continue
            reason = disk_full_reason(exc)
            if reason is None:
                raise
            raise DiskFull(_storage_full_message(handle, objective, reason)) from None
        finally:
            logs.end_trial()
        last = objective.last
        if last.time_limit is not None:
            _requeue(handle, last.number)
            summary.time_limited, summary.requeued = True, last.time_limit
            break
        if last.sigterm:
            _requeue(handle, last.number)
            raise SystemExit(143)
        if last.disk_full is not None:
            _requeue(handle, last.number)
            raise DiskFull(f"{last.disk_full}; trial {last.number} was stopped and re-queued: free space for "
                           f"the runs in {handle.runs_dir} (and the storage), then start the worker again")
    summary.missing = handle.status().remaining or 0
    return summary


def _claim_fits(handle: "StudyHandle", time_limit: TimeLimit, summary: WorkerSummary) -> bool:
    """Whether the next trial is expected to finish before the deadline (see
    :func:`attnres_search.study.time_limit.may_claim`); if not, the summary says why."""
    from optuna.trial import TrialState

    trials = handle.trials()
    waiting = [str(trial_params(t).get("variant")) for t in trials if t.state == TrialState.WAITING]
    estimate = claim_estimate((t for t in trials if t.state == TrialState.COMPLETE), waiting)
    left = time_limit.left()
    if may_claim(estimate, left, time_limit.seconds):
        return True
    summary.time_limited, summary.next_estimate_s, summary.left_s = True, estimate, left
    return False


def _requeue(handle: "StudyHandle", number: int | None) -> None:
    """Queue a retry of trial ``number`` if it failed (Optuna's retry callback links the
    retry to it, so its checkpoint and its history carry over); a trial left RUNNING is
    failed first. Best effort: a storage that refuses writes leaves it to the stale check."""
    if number is None:
        return
    from optuna.trial import TrialState

    storage = handle.storage
    try:
        trial_id = storage.get_trial_id_from_study_id_trial_number(storage.get_study_id_from_name(handle.name),
                                                                   number)
        if storage.get_trial(trial_id).state == TrialState.RUNNING:
            storage.set_trial_state_values(trial_id, state=TrialState.FAIL)
        callback = storage.get_heartbeat_stale_trial_callback()
        if callback is not None:
            callback(handle.study, storage.get_trial(trial_id))
    except Exception:  # noqa: BLE001 - a full disk; the trial then goes stale and is retried
        pass


def _let_go_if_taken(handle: "StudyHandle", objective: TrialObjective) -> bool:
    """True when Optuna could not record the trial because another worker had failed it
    as stale meanwhile; the result this worker measured goes to the trial's log."""
    last = objective.last
    if last.number is None:
        return False
    try:
        finished = stored_state(handle, last.number).is_finished()
    except Exception:  # noqa: BLE001 - the storage cannot say: not a taken trial
        return False
    if not finished:
        return False
    if not last.taken:
        write_trial_log(last.log_path, taken_note(handle, last.number, last.result))
    return True


def _storage_full_message(handle: "StudyHandle", objective: TrialObjective, reason: str) -> str:
    """The worker's message when the storage could not be written for a full disk; the
    reason is stored on the trial if the storage still takes that write."""
    number = objective.last.number
    stored = False
    if number is not None:
        try:
            storage = handle.storage
            trial_id = storage.get_trial_id_from_study_id_trial_number(
                storage.get_study_id_from_name(handle.name), number)
            storage.set_trial_user_attr(trial_id, ATTR_ERROR, reason)
            storage.set_trial_user_attr(trial_id, ATTR_RETRY, reason)
            stored = True
        except Exception:  # noqa: BLE001 - the disk is full: expected
            pass
        _requeue(handle, number)
    where = f"trial {number}" if number is not None else "the study"
    kept = "its reason is stored" if stored else "the storage could not record it: it is re-run once stale"
    return (f"{reason} (writing to the storage {handle.shown_url}); {where} stopped, {kept}; free space "
            "and start the worker again")


class WorkerInterrupts:
    """Ctrl-C for a worker: noted at once, acted on at the next safe point.

    A KeyboardInterrupt raised wherever the main thread happens to be can land inside a
    storage write, between SQLite's ``BEGIN IMMEDIATE`` and SQLAlchemy's bookkeeping: the
    connection then keeps the database's write lock, so this worker cannot fail its trial
    (it stays RUNNING) and every other worker waits out its busy timeout. So a signal only
    sets ``requested``; a trial stops at :meth:`check`, which the objective calls before
    training and :class:`attnres_search.study.callbacks.StopOnInterrupt` before every
    training and validation batch, where no storage call is in flight; Optuna then fails
    it and the worker re-queues it. Inside :meth:`interruptible` (waiting on DDP ranks,
    which never touch the storage) and on a second Ctrl-C it raises at once: the user
    insists, and a trial left RUNNING by that goes stale and is retried. Only the main
    thread can own signal handlers; elsewhere this does nothing."""

    def __init__(self) -> None:
        self.requested = False
        self._interruptible = False
        self._previous: Any = None

    def __enter__(self) -> "WorkerInterrupts":
        if threading.current_thread() is threading.main_thread():
            self._previous = signal.signal(signal.SIGINT, self._handle)
        return self

    def __exit__(self, *exc: object) -> None:
        if self._previous is not None:
            signal.signal(signal.SIGINT, self._previous)

    def _handle(self, signum: int, frame: object) -> None:
        forced = self.requested
        self.requested = True
        if forced or self._interruptible:
            raise KeyboardInterrupt

    def check(self) -> None:
        """Raise KeyboardInterrupt if Ctrl-C was pressed: call only where no storage
        call (or other library state) can be left half done."""
        if self.requested:
            raise KeyboardInterrupt

    @contextlib.contextmanager
    def interruptible(self) -> Iterator[None]:
        """A stretch where Ctrl-C may raise at once (the main thread only waits)."""
        self.check()
        self._interruptible = True
        try:
            yield
        finally:
            self._interruptible = False


def _tally(handle: "StudyHandle", summary: WorkerSummary, trial: "optuna.trial.FrozenTrial",
           progress: StudyProgress | None) -> None:
    """Count a trial this worker just finished (Optuna calls this after each trial)."""
    from optuna.trial import TrialState

    if ATTR_SKIPPED in trial.user_attrs:
        summary.skipped += 1
        return
    summary.ran += 1
    if trial.state == TrialState.FAIL and trial.user_attrs.get(ATTR_RETRY):
        summary.interrupted += 1  # re-queued by the worker right after; not the run's failure
        return
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
                                          trial.user_attrs.get(ATTR_ERROR) or NO_REASON, log))
    progress.trial_finished(trial.number, trial.state.name.lower(), trial.value)
