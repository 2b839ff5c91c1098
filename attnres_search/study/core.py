"""Optuna studies over a search space: create, resume, and the worker loop that runs trials.

How a grid never runs a cell twice, even with many workers on one storage:

1. ``create_study`` stores the whole validated space in the study's user attributes (so a
   resume never re-reads a file that may have changed) and enqueues every cell x seed
   exactly once as a WAITING trial carrying its ``cell`` key.
2. ``run_worker`` pulls WAITING trials; Optuna claims each atomically (WAITING -> RUNNING
   is a conditional update), so two workers never get the same one. It stops when every
   cell has a finished trial, and waits while other trials still run: they either finish
   or stop sending heartbeats, are failed after the grace period and re-queued by the
   storage's retry callback, and this worker picks them up.
3. The objective itself refuses a duplicate: a trial whose cell already has a COMPLETE
   trial, or a RUNNING one with a lower number, is marked PRUNED with a ``skipped`` user
   attribute and costs nothing. That covers double enqueues and the rare fresh trial a
   worker creates when another worker emptied the queue between its check and its ask.

Sampled (TPE/random) spaces are simpler: workers ask the sampler until the study holds
``n_trials`` finished trials.
"""

from __future__ import annotations

import contextlib
import os
import re
import signal
import socket
import threading
import time
import warnings
from dataclasses import dataclass, replace
from typing import TYPE_CHECKING, Any, Callable, Iterator, Protocol

from attnres_search import __version__
from attnres_search.study.space import Space, cell_key, make_pruner, make_sampler, space_from_dict
from attnres_search.study.storage import display_url, open_storage, runs_dir

if TYPE_CHECKING:
    import optuna

    from attnres_search.training.config import RunResult

Runner = Callable[..., "RunResult"]

# Study user attributes.
ATTR_SPACE = "space"
ATTR_SPACE_NAME = "space_name"
ATTR_KIND = "kind"
ATTR_BASELINE = "baseline"
ATTR_CELLS = "n_cells"
# Trial user attributes (besides every RunResult field but ``config``).
ATTR_CELL = "cell"
ATTR_SKIPPED = "skipped"
ATTR_ERROR = "error"
_RESULT_FIELDS_SKIPPED = ("config",)


class StudyProgress(Protocol):
    """What a worker tells its display. All calls are cheap and may be ignored."""

    def trial_started(self, number: int, position: int, total: int | None, cell: str) -> None: ...

    def step(self, step: int, total: int, val_loss: float | None) -> None: ...

    def trial_finished(self, number: int, state: str, value: float | None) -> None: ...

    def waiting(self, running: int) -> None: ...


@dataclass
class WorkerSummary:
    """What one ``run_worker`` call did, and what the study still lacks."""

    ran: int = 0
    completed: int = 0
    failed: int = 0
    pruned: int = 0
    skipped: int = 0
    missing: int = 0  # grid cells x seeds with no finished trial when the worker stopped


@dataclass
class CellStatus:
    """Where a study stands, for ``study status`` and the worker's stop rule."""

    total: int | None  # cells x seeds (grid) or n_trials (sampled)
    done: int
    running: int
    waiting: int
    failed: int  # cells whose every trial failed (grid) / failed trials (sampled)
    skipped: int
    mean_trial_s: float | None

    @property
    def remaining(self) -> int | None:
        return None if self.total is None else max(0, self.total - self.done)

    def eta_s(self) -> float | None:
        """Remaining trials x mean duration, shared by the workers now running (at least one)."""
        if self.remaining is None or self.mean_trial_s is None:
            return None
        return self.remaining * self.mean_trial_s / max(1, self.running)


# ------------------------------------------------------------------------------ create / load

def create_study(space: Space, name: str, storage: Any) -> "optuna.Study":
    """A new study for ``space`` with every grid cell x seed enqueued once."""
    import optuna

    try:
        study = optuna.create_study(study_name=name, storage=storage, direction="minimize",
                                    sampler=make_sampler(space), pruner=make_pruner(space))
    except optuna.exceptions.DuplicatedStudyError:
        raise ValueError(f"a study named {name!r} already exists in {display_url(storage.url)}; "
                         f"continue it with `attnres-search study resume {name}` or pick another --name") from None
    study.set_user_attr(ATTR_SPACE, space.source)
    study.set_user_attr(ATTR_SPACE_NAME, space.name)
    study.set_user_attr(ATTR_KIND, space.kind)
    study.set_user_attr(ATTR_BASELINE, space.baseline)
    study.set_user_attr("attnres_search_version", __version__)
    if space.is_grid:
        cells = space.cells()
        study.set_user_attr(ATTR_CELLS, len(cells))
        for params in cells:
            study.enqueue_trial(params, user_attrs={ATTR_CELL: cell_key(params)})
    return study


def load_study(name: str, storage: Any) -> tuple["optuna.Study", Space]:
    """An existing study and the space it was created from."""
    import optuna

    names = optuna.get_all_study_names(storage)
    if name not in names:
        known = ", ".join(names) if names else "none"
        raise ValueError(f"no study named {name!r} in {display_url(storage.url)} (studies: {known})")
    probe = optuna.load_study(study_name=name, storage=storage)
    if ATTR_SPACE not in probe.user_attrs:
        raise ValueError(f"study {name!r} was not created by attnres-search (it records no search space)")
    space = space_from_dict(probe.user_attrs[ATTR_SPACE])
    study = optuna.load_study(study_name=name, storage=storage, sampler=make_sampler(space),
                              pruner=make_pruner(space))
    return study, space


def enqueue_missing(study: "optuna.Study", space: Space) -> int:
    """Re-queue grid cells x seeds that have no finished, running or waiting trial (those
    whose trials all failed). Returns how many were queued."""
    if not space.is_grid:
        return 0
    from optuna.trial import TrialState

    taken = {t.user_attrs.get(ATTR_CELL) for t in study.get_trials(deepcopy=False)
             if t.state in (TrialState.WAITING, TrialState.RUNNING) or _counts_as_done(t)}
    queued = 0
    for params in space.cells():
        key = cell_key(params)
        if key not in taken:
            study.enqueue_trial(params, user_attrs={ATTR_CELL: key})
            queued += 1
    return queued


def _counts_as_done(trial: "optuna.trial.FrozenTrial") -> bool:
    from optuna.trial import TrialState

    return trial.state == TrialState.COMPLETE or (trial.state == TrialState.PRUNED
                                                  and ATTR_SKIPPED not in trial.user_attrs)


def study_status(study: "optuna.Study", space: Space) -> CellStatus:
    from optuna.trial import TrialState

    trials = study.get_trials(deepcopy=False)
    done_trials = [t for t in trials if _counts_as_done(t)]
    durations = [(t.datetime_complete - t.datetime_start).total_seconds() for t in done_trials
                 if t.datetime_complete is not None and t.datetime_start is not None]
    count = lambda state: sum(t.state == state for t in trials)  # noqa: E731
    skipped = sum(ATTR_SKIPPED in t.user_attrs for t in trials)
    if space.is_grid:
        done_cells = {t.user_attrs.get(ATTR_CELL) for t in done_trials}
        pending = {t.user_attrs.get(ATTR_CELL) for t in trials if t.state in (TrialState.WAITING, TrialState.RUNNING)}
        failed_cells = {t.user_attrs.get(ATTR_CELL) for t in trials if t.state == TrialState.FAIL}
        failed = len(failed_cells - done_cells - pending)
        total: int | None = len(space.cells())
        done = len(done_cells & {cell_key(p) for p in space.cells()})
    else:
        retried = {n for t in trials for n in t.system_attrs.get("retry_history", [])}
        failed = sum(t.state == TrialState.FAIL and t.number not in retried for t in trials)
        total, done = space.n_trials, len(done_trials)
    return CellStatus(total=total, done=done, running=count(TrialState.RUNNING), waiting=count(TrialState.WAITING),
                      failed=failed, skipped=skipped,
                      mean_trial_s=sum(durations) / len(durations) if durations else None)


# ------------------------------------------------------------------------------- the objective

def _suggest(trial: "optuna.Trial", space: Space) -> dict[str, Any]:
    params = {name: trial.suggest_categorical(name, list(values)) for name, values in space.choices().items()}
    for axis in space.axes:
        if axis.is_grid:
            continue
        assert axis.low is not None and axis.high is not None
        if axis.integer:
            params[axis.name] = trial.suggest_int(axis.name, int(axis.low), int(axis.high), log=axis.log)
        else:
            params[axis.name] = trial.suggest_float(axis.name, axis.low, axis.high, log=axis.log)
    return params


def _duplicate_of(trial: "optuna.Trial", key: str) -> int | None:
    """The trial that owns this cell already, if any (see the module docstring)."""
    from optuna.trial import TrialState

    for other in trial.study.get_trials(deepcopy=False, states=(TrialState.COMPLETE, TrialState.RUNNING,
                                                                TrialState.PRUNED)):
        if other.number == trial.number or other.user_attrs.get(ATTR_CELL) != key:
            continue
        if _counts_as_done(other) or (other.state == TrialState.RUNNING and other.number < trial.number):
            return other.number
    return None


def _slug(params: dict[str, Any]) -> str:
    text = "_".join(f"{k}-{v}" for k, v in params.items())
    return re.sub(r"[^A-Za-z0-9._=-]+", "-", text)[:120]


def make_objective(space: Space, study_name: str, storage_url: str, runner: Runner,
                   progress: StudyProgress | None, devices_per_trial: int = 1,
                   interrupts: "WorkerInterrupts | None" = None) -> Callable[["optuna.Trial"], float]:
    """The function Optuna calls per trial: one training run, everything it measured
    stored on the trial, its final validation loss returned. A failure (diverged loss,
    out of memory, anything else) fails only this trial, with its reason stored."""
    from attnres_search.study.callbacks import StepProgress, StepPruning

    base_dir = runs_dir(storage_url) / study_name

    def objective(trial: "optuna.Trial") -> float:
        with interrupts.trial() if interrupts is not None else contextlib.nullcontext():
            return run_trial(trial)

    def run_trial(trial: "optuna.Trial") -> float:
        import optuna

        params = _suggest(trial, space)
        key = cell_key(params)
        if trial.user_attrs.get(ATTR_CELL) != key:
            trial.set_user_attr(ATTR_CELL, key)
        owner = _duplicate_of(trial, key)
        if owner is not None:
            trial.set_user_attr(ATTR_SKIPPED, f"cell already run by trial {owner}")
            raise optuna.TrialPruned(f"duplicate of trial {owner}")
        if progress is not None:
            status = study_status(trial.study, space)
            progress.trial_started(trial.number, status.done + 1, status.total, _describe(params))
        cfg = space.run_config(params, out_dir=str(base_dir / _slug(params)))
        if devices_per_trial != cfg.devices:
            cfg = replace(cfg, devices=devices_per_trial)
        variant = space.variant(params["variant"])
        for name, value in (("variant", variant.name), ("preset", variant.preset), ("seed", cfg.seed),
                            ("config", cfg.to_dict()), ("host", f"{socket.gethostname()}:{os.getpid()}")):
            trial.set_user_attr(name, value)
        callbacks: list[Any] = [StepPruning(trial)] if space.pruner is not None else []
        if progress is not None:
            callbacks.append(StepProgress(progress))
        try:
            result = runner(cfg, callbacks=callbacks, progress=False)
        except Exception as exc:
            if not isinstance(exc, optuna.TrialPruned):
                trial.set_user_attr(ATTR_ERROR, f"{type(exc).__name__}: {exc}")
            if _is_out_of_memory(exc):
                _free_memory()  # the worker goes on with the next trial
            raise
        _record(trial, result, curve_reported=space.pruner is not None)
        return result.final_val_loss

    return objective


def _is_out_of_memory(exc: BaseException) -> bool:
    import torch

    return isinstance(exc, torch.cuda.OutOfMemoryError) or "out of memory" in str(exc).lower()


def _free_memory() -> None:
    import gc

    import torch

    gc.collect()
    torch.cuda.empty_cache()  # a no-op without CUDA


def _record(trial: "optuna.Trial", result: "RunResult", curve_reported: bool) -> None:
    for name, value in result.to_dict().items():
        if name not in _RESULT_FIELDS_SKIPPED:
            trial.set_user_attr(name, value)
    if not curve_reported:  # the loss curve in optuna-dashboard (the pruning callback reports it otherwise)
        for step, loss in result.val_curve:
            trial.report(loss, step=step)


def _describe(params: dict[str, Any]) -> str:
    return " ".join(f"{k}={v}" for k, v in params.items())


# ------------------------------------------------------------------------------------ workers

def run_worker(study_name: str, storage_url: str | None = None, *, n_trials: int | None = None,
               progress: StudyProgress | None = None, runner: Runner | None = None,
               requeue_failed: bool = False, poll_s: float = 2.0, devices_per_trial: int = 1) -> WorkerSummary:
    """Run trials of a study until its space is exhausted (or ``n_trials`` ran here).

    ``devices_per_trial > 1`` runs each trial with Lightning DDP on that many devices; this
    process stays the only one that talks to Optuna (see :mod:`attnres_search.training.ddp`).
    Safe to run in many processes and on many machines at once against one storage.
    ``requeue_failed`` (``study resume``) first re-queues cells whose trials all failed.
    ``runner`` defaults to :func:`attnres_search.training.run`; tests inject a fake.
    """
    storage = open_storage(storage_url, must_exist=True)
    study, space = load_study(study_name, storage)
    if runner is None:
        from attnres_search.training.run import run as runner
    if requeue_failed:
        enqueue_missing(study, space)
    with WorkerInterrupts() as interrupts:
        summary = _work(study, space, storage, make_objective(space, study_name, storage.url, runner, progress,
                                                              devices_per_trial, interrupts),
                        interrupts, n_trials=n_trials, progress=progress, poll_s=poll_s)
    if interrupts.requested:
        raise KeyboardInterrupt
    return summary


def _work(study: "optuna.Study", space: Space, storage: Any, objective: Callable[["optuna.Trial"], float],
          interrupts: "WorkerInterrupts", *, n_trials: int | None, progress: StudyProgress | None,
          poll_s: float) -> WorkerSummary:
    """The worker loop proper: claim a trial, run it, until nothing is left or Ctrl-C."""
    import optuna

    summary = WorkerSummary()
    while (n_trials is None or summary.ran < n_trials) and not interrupts.requested:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", optuna.exceptions.ExperimentalWarning)
            optuna.storages.fail_stale_trials(study)  # dead workers' trials -> FAIL -> re-queued
        fail_trials_without_heartbeat(study, storage)
        status = study_status(study, space)
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
                           callbacks=[lambda _study, trial: _tally(summary, trial, progress)])
        except SystemExit as exc:
            # Lightning turns SIGTERM (a preemption) into SystemExit(None), i.e. exit status 0.
            # Leave with 128 + SIGTERM instead; the trial stays RUNNING, stops beating, and is
            # re-run by the next worker once its grace period is over.
            raise SystemExit(143 if exc.code in (None, 0) else exc.code) from exc
    summary.missing = study_status(study, space).remaining or 0
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


def fail_trials_without_heartbeat(study: "optuna.Study", storage: Any) -> list[int]:
    """Fail and re-queue RUNNING trials that never recorded a heartbeat and are older than
    the grace period: their worker died between claiming them and its first beat, and
    Optuna's stale check, which only looks at recorded beats, would wait for them forever.
    Optuna has no public query for "has a heartbeat", hence its RDB model here."""
    import datetime

    import optuna
    import sqlalchemy.orm
    from optuna.storages._rdb import models
    from optuna.trial import TrialState

    grace = datetime.timedelta(seconds=storage.grace_period or 2 * storage.heartbeat_interval)
    now = datetime.datetime.now()  # the clock datetime_start was written with
    old = [t for t in study.get_trials(deepcopy=False, states=(TrialState.RUNNING,))
           if t.datetime_start is not None and now - t.datetime_start > grace]
    if not old:
        return []
    study_id = storage.get_study_id_from_name(study.study_name)
    ids = {storage.get_trial_id_from_study_id_trial_number(study_id, t.number): t.number for t in old}
    with sqlalchemy.orm.Session(storage.engine) as session:
        beating = {row[0] for row in session.query(models.TrialHeartbeatModel.trial_id)
                   .filter(models.TrialHeartbeatModel.trial_id.in_(list(ids)))}
    failed = []
    for trial_id in set(ids) - beating:
        try:
            if not storage.set_trial_state_values(trial_id, state=TrialState.FAIL):
                continue
        except optuna.exceptions.UpdateFinishedTrialError:
            continue  # it finished (or another worker failed it) meanwhile
        storage.get_heartbeat_stale_trial_callback()(study, storage.get_trial(trial_id))
        failed.append(ids[trial_id])
    return failed


def _tally(summary: WorkerSummary, trial: "optuna.trial.FrozenTrial", progress: StudyProgress | None) -> None:
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
    if progress is not None:
        progress.trial_finished(trial.number, trial.state.name.lower(), trial.value)
