"""The function Optuna calls per trial: one training run of one cell x seed.

Everything the run measured is stored on the trial, its final validation loss returned. A
failure (diverged loss, out of memory, anything else) fails only this trial, with its
reason stored and its traceback in the trial's log file.

The objective also refuses duplicates, the last line of "a grid never runs a cell twice":
a trial whose cell already has a finished trial, or a RUNNING one with a lower number, is
marked PRUNED with a ``skipped`` user attribute and costs nothing. That covers double
enqueues and the rare fresh trial a worker creates when another worker emptied the queue
between its check and its ask.

Each trial attempt writes its own run folder (:mod:`attnres_search.study.attempts`) and
continues from a copy of an earlier attempt's checkpoint. Failures that are not the run's
fault are marked for retry (``retry_reason``) and told to the worker through
:class:`TrialOutcome`: Ctrl-C or SIGTERM (the worker re-queues the trial and stops), a full
disk (the same, with "disk full" in the reason and the worker's message), the worker's
time limit (the run checkpoints at its deadline; the worker re-queues the trial and stops,
see :mod:`attnres_search.study.time_limit`), and a trial another worker failed as stale
while this one still ran it (its result is kept in the trial's log, and the worker goes on).
"""

from __future__ import annotations

import contextlib
import errno
import json
import os
import socket
from pathlib import Path
from dataclasses import dataclass, replace
from typing import TYPE_CHECKING, Any, Callable, Protocol

from attnres_search.study.attempts import adopt_checkpoint, attempt_dir, cell_dir, fingerprint
from attnres_search.study.attrs import ATTR_CELL, ATTR_ERROR, ATTR_LOG, ATTR_RETRY, ATTR_SKIPPED, ATTR_SLURM_JOB
from attnres_search.study.cells import cell_key, cell_label, cell_slug
from attnres_search.study.slurm import current_slurm_task
from attnres_search.study.space import Space
from attnres_search.study.status import counts_as_done
from attnres_search.study.time_limit import TimeLimit, TimeLimitReached
from attnres_search.study.trial_logs import TrialLogRouter, trial_log_path, write_trial_log

if TYPE_CHECKING:
    import optuna

    from attnres_search.study.handle import StudyHandle
    from attnres_search.study.status import FailedTrial
    from attnres_search.study.worker import WorkerInterrupts
    from attnres_search.training.config import RunConfig, RunResult

Runner = Callable[..., "RunResult"]
_RESULT_FIELDS_SKIPPED = ("config",)  # stored once, as the resolved RunConfig


class StudyProgress(Protocol):
    """What a worker tells its display. All calls are cheap and may be ignored."""

    def trial_started(self, number: int, position: int, total: int | None, cell: str) -> None: ...

    def step(self, step: int, total: int, val_loss: float | None) -> None: ...

    def trial_finished(self, number: int, state: str, value: float | None) -> None: ...

    def trial_failed(self, failure: "FailedTrial") -> None: ...

    def waiting(self, running: int) -> None: ...


def suggest(trial: "optuna.Trial", space: Space) -> dict[str, Any]:
    """The trial's parameters: fixed ones for an enqueued grid trial, else sampled."""
    params = {name: trial.suggest_categorical(name, list(values))
              for name, values in space.choices().items() if name != "seed"}
    params["seed"] = suggest_seed(trial, space)
    for axis in space.axes:
        if axis.is_grid:
            continue
        low, high = axis.ends()
        if axis.integer:
            params[axis.name] = trial.suggest_int(axis.name, low, high, log=axis.log)
        else:
            params[axis.name] = trial.suggest_float(axis.name, low, high, log=axis.log)
    return params


def suggest_seed(trial: "optuna.Trial", space: Space) -> int:
    """The seed as an integer parameter over the seeds' range: a categorical's choices can
    never change in Optuna, and ``study extend`` adds seeds. Studies created before keep
    their categorical seed, so they still resume."""
    import optuna

    seeds = space.all_seeds()
    for other in trial.study.get_trials(deepcopy=False):
        dist = other.distributions.get("seed")
        if dist is not None:
            if isinstance(dist, optuna.distributions.CategoricalDistribution):
                return trial.suggest_categorical("seed", list(dist.choices))
            break
    return trial.suggest_int("seed", min(seeds), max(seeds))


def duplicate_of(trial: "optuna.Trial", key: str) -> int | None:
    """The trial that owns this cell already, if any (see the module docstring)."""
    from optuna.trial import TrialState

    for other in trial.study.get_trials(deepcopy=False, states=(TrialState.COMPLETE, TrialState.RUNNING,
                                                                TrialState.PRUNED)):
        if other.number == trial.number or other.user_attrs.get(ATTR_CELL) != key:
            continue
        if counts_as_done(other) or (other.state == TrialState.RUNNING and other.number < trial.number):
            return other.number
    return None


class TrialInterrupted(RuntimeError):
    """SIGTERM (a preemption) stopped the run: the trial fails, to be re-queued at once."""


class TrialTaken(RuntimeError):
    """Another worker failed this trial as stale while it still ran here."""


class DiskFull(RuntimeError):
    """The disk of the runs or of the storage is full: the worker stops (exit 1)."""


DISK_FULL_TEXTS = ("database or disk is full", "no space left on device", "disk full", "could not extend file")


def disk_full_reason(exc: BaseException) -> str | None:
    """``"disk full: <the error>"`` when ``exc`` or an exception it was raised from is an
    ENOSPC ``OSError`` or a database saying its disk is full (Optuna wraps SQLite's in a
    ``StorageInternalError`` about "exceeding max length"); None otherwise."""
    seen: set[int] = set()
    current: BaseException | None = exc
    while current is not None and id(current) not in seen:
        seen.add(id(current))
        text = str(current).strip().splitlines()[0] if str(current).strip() else ""
        if isinstance(current, OSError) and current.errno in (errno.ENOSPC, errno.EDQUOT):
            return f"disk full: {type(current).__name__}: {text}"
        if any(t in text.lower() for t in DISK_FULL_TEXTS):
            return f"disk full: {type(current).__name__}: {text}"
        current = current.__cause__ or current.__context__
    return None


@dataclass
class TrialOutcome:
    """What the worker must know about the trial the objective ran last, beyond its state."""

    number: int | None = None
    log_path: Any = None
    retry: str | None = None  # why it failed through no fault of its run (it is to be re-queued)
    sigterm: bool = False
    disk_full: str | None = None
    taken: bool = False
    result: "RunResult | None" = None
    time_limit: TimeLimitReached | None = None  # the deadline stopped it (checkpointed when a step had finished)


def stored_state(handle: "StudyHandle", number: int) -> "optuna.trial.TrialState":
    """The state the storage holds for trial ``number`` (not this process's view of it)."""
    storage = handle.storage
    trial_id = storage.get_trial_id_from_study_id_trial_number(storage.get_study_id_from_name(handle.name), number)
    return storage.get_trial(trial_id).state


class TrialObjective:
    """The objective of ``handle``'s study; ``runner`` is :func:`attnres_search.training.run`
    (tests inject a fake). ``logs`` routes Optuna's records about the trial into its log
    file. ``time_limit``: the worker's, whose deadline checkpoints and stops a run.
    ``last`` describes the trial it ran last."""

    def __init__(self, handle: "StudyHandle", runner: Runner, *, progress: StudyProgress | None = None,
                 devices_per_trial: int = 1, interrupts: "WorkerInterrupts | None" = None,
                 logs: TrialLogRouter | None = None, time_limit: TimeLimit | None = None) -> None:
        self.handle, self.runner, self.progress = handle, runner, progress
        self.devices_per_trial, self.interrupts, self.logs = devices_per_trial, interrupts, logs
        self.time_limit = time_limit
        self.last = TrialOutcome()

    def forget(self) -> None:
        """Before the next trial: nothing is known about it yet."""
        self.last = TrialOutcome()

    def __call__(self, trial: "optuna.Trial") -> float:
        log_path = trial_log_path(self.handle.logs_dir, trial.number)
        self.last = TrialOutcome(number=trial.number, log_path=log_path)
        if self.logs is not None:
            self.logs.start_trial(log_path)  # Optuna's failure record, traceback included, lands there
        try:
            if self.interrupts is not None:
                self.interrupts.check()  # Ctrl-C while Optuna claimed the trial
            return self._run(trial, log_path)
        except KeyboardInterrupt:
            self._mark_retry(trial, "interrupted (Ctrl-C / SIGINT); re-queued")
            raise
        except TimeLimitReached as exc:  # Optuna fails the trial; the worker re-queues it and stops
            self.last.time_limit = exc
            self._mark_retry(trial, exc.retry_reason)
            raise
        except SystemExit as exc:  # RunInterrupted, or Lightning's own exit on SIGTERM
            self.last.sigterm = True
            reason = f"interrupted by SIGTERM ({exc}); re-queued" if str(exc) else "interrupted by SIGTERM; re-queued"
            self._mark_retry(trial, reason)
            raise TrialInterrupted(reason) from exc

    def _run(self, trial: "optuna.Trial", log_path: Any) -> float:
        import optuna

        from attnres_search.study.callbacks import StepProgress, StepPruning, StopOnInterrupt

        handle, space = self.handle, self.handle.space
        params = suggest(trial, space)
        key = cell_key(params)
        if trial.user_attrs.get(ATTR_CELL) != key:
            trial.set_user_attr(ATTR_CELL, key)
        owner = duplicate_of(trial, key)
        if owner is not None:
            trial.set_user_attr(ATTR_SKIPPED, f"cell already run by trial {owner}")
            raise optuna.TrialPruned(f"duplicate of trial {owner}")
        for name in (ATTR_ERROR, ATTR_RETRY):  # a retry inherits its predecessor's attributes
            if trial.user_attrs.get(name):
                trial.set_user_attr(name, "")
        if self.progress is not None:
            status = handle.status()
            self.progress.trial_started(trial.number, status.done + 1, status.total, cell_label(params))
        cfg = self._run_config(trial, params, log_path)
        variant = space.variant(params["variant"])
        host = f"{socket.gethostname()}:{os.getpid()}"
        for name, value in (("variant", variant.name), ("preset", variant.preset), ("seed", cfg.seed),
                            ("config", cfg.to_dict()), ("host", host), (ATTR_LOG, str(log_path))):
            trial.set_user_attr(name, value)
        slurm_job = current_slurm_task()
        if slurm_job is not None:  # the Slurm array task running it, for `study status`
            trial.set_user_attr(ATTR_SLURM_JOB, slurm_job)
        callbacks: list[Any] = [StepPruning(trial)] if space.pruner is not None else []
        if self.progress is not None:
            callbacks.append(StepProgress(self.progress))
        waiting: contextlib.AbstractContextManager[None] = contextlib.nullcontext()
        if self.interrupts is not None:
            self.interrupts.check()  # Ctrl-C during the storage writes above
            if cfg.devices > 1:  # this process only waits for the ranks: Ctrl-C may stop it at once
                waiting = self.interrupts.interruptible()
            else:
                callbacks.append(StopOnInterrupt(self.interrupts))
        if self.time_limit is not None and cfg.devices == 1:
            from attnres_search.study.callbacks import CheckpointAtDeadline
            from attnres_search.training.trainer import last_checkpoint

            callbacks.append(CheckpointAtDeadline(self.time_limit, last_checkpoint(cfg)))
        try:
            with waiting:
                result = self.runner(cfg, callbacks=callbacks, progress=False)
        except Exception as exc:
            if not isinstance(exc, optuna.TrialPruned):
                self._fail_reason(trial, exc)
            if _is_out_of_memory(exc):
                _free_memory()  # the worker goes on with the next trial
            raise
        self.last.result = result
        if stored_state(handle, trial.number).is_finished():
            self._taken(trial, log_path, result)
        try:
            _record(trial, result, curve_reported=space.pruner is not None)
        except Exception as exc:
            self._fail_reason(trial, exc)
            raise
        if cfg.out_dir is not None:  # run.json and figures for optuna-dashboard (best effort)
            from attnres_search.study.artifacts import artifact_store, upload_run_artifacts
            from attnres_search.study.storage import runs_dir

            try:
                store = artifact_store(handle.url, runs_dir(handle.url), create=True)
                upload_run_artifacts(trial, Path(cfg.out_dir), store)
            except OSError as exc:  # the result is stored already: a missing upload loses nothing
                write_trial_log(log_path, f"could not upload the run's artifacts: {exc}")
        return result.final_val_loss

    def _run_config(self, trial: "optuna.Trial", params: dict[str, Any], log_path: Any) -> "RunConfig":
        """The trial's run in its own attempt folder, with an earlier attempt's checkpoint
        copied in when the run resumes (see :mod:`attnres_search.study.attempts`)."""
        from attnres_search.training.lit_module import RESUME_FREE_FIELDS
        from attnres_search.training.trainer import last_checkpoint

        handle = self.handle
        cfg = handle.space.run_config(params)
        if self.devices_per_trial != cfg.devices:
            cfg = replace(cfg, devices=self.devices_per_trial)
        cell = cell_dir(handle.runs_dir, cell_slug(params), fingerprint(handle.identity, cfg.to_dict(),
                                                                         RESUME_FREE_FIELDS))
        out_dir = attempt_dir(cell, trial.number)
        # Lightning loggers (train.logger in the space): one logger run per cell x seed, in the study's experiment.
        cfg = replace(cfg, out_dir=str(out_dir), run_name=f"{handle.name} {cell_label(params)}",
                      experiment=handle.name, log_dir=cfg.log_dir or str(handle.runs_dir))
        write_trial_log(log_path, f"trial {trial.number} of study {handle.name}: {cell_label(params)} "
                                  f"on {socket.gethostname()}:{os.getpid()}, run folder {out_dir}")
        # Also without periodic checkpoints (``resume`` off): an attempt stopped by a time
        # limit left one at its deadline, and a retry continues from it.
        target = last_checkpoint(cfg)
        adopted = adopt_checkpoint(cell, trial.number, target, target.relative_to(out_dir),
                                   note=lambda text: write_trial_log(log_path, text))
        if adopted is not None and not cfg.resume:
            cfg = replace(cfg, resume=True)
        return cfg

    def _taken(self, trial: "optuna.Trial", log_path: Any, result: "RunResult") -> None:
        """Another worker failed this trial as stale (and re-queued it) while it ran here:
        keep what the run measured in the trial's log, and stop without telling Optuna."""
        self.last.taken = True
        write_trial_log(log_path, taken_note(self.handle, trial.number, result))
        raise TrialTaken(f"trial {trial.number} was failed as stale by another worker while it ran here; "
                         f"its result is kept in {log_path}")

    def _fail_reason(self, trial: "optuna.Trial", exc: BaseException) -> None:
        disk = disk_full_reason(exc)
        if disk is not None:
            self.last.disk_full = disk
            self._mark_retry(trial, disk)
            return
        _best_effort(trial.set_user_attr, ATTR_ERROR, f"{type(exc).__name__}: {exc}")

    def _mark_retry(self, trial: "optuna.Trial", reason: str) -> None:
        """Store why the trial failed through no fault of its run; every worker re-runs it."""
        self.last.retry = reason
        _best_effort(trial.set_user_attr, ATTR_ERROR, reason)
        _best_effort(trial.set_user_attr, ATTR_RETRY, reason)


def taken_note(handle: "StudyHandle", number: int, result: "RunResult | None") -> str:
    """The trial log's record of a run whose trial another worker took over."""
    note = (f"trial {number} was failed as stale by another worker (no heartbeat for over {handle.grace_s:.0f} s) "
            "and re-queued while this worker still ran it; the storage keeps the retry's result. ")
    if result is None:
        return note + "This run did not finish (see above)."
    measured = {k: v for k, v in result.to_dict().items() if k not in ("config", "val_curve", "train_curve")}
    return note + f"This run finished; its result, kept here: {json.dumps(measured, default=str)}"


def _best_effort(setter: Callable[..., Any], *args: Any) -> None:
    """Store an attribute if the storage still takes writes (a full disk may refuse it)."""
    try:
        setter(*args)
    except Exception:  # noqa: BLE001 - the failure being recorded matters more than its record
        pass


def make_objective(handle: "StudyHandle", runner: Runner, *, progress: StudyProgress | None = None,
                   devices_per_trial: int = 1, interrupts: "WorkerInterrupts | None" = None,
                   logs: TrialLogRouter | None = None, time_limit: TimeLimit | None = None) -> TrialObjective:
    """The objective of ``handle``'s study (see :class:`TrialObjective`)."""
    return TrialObjective(handle, runner, progress=progress, devices_per_trial=devices_per_trial,
                          interrupts=interrupts, logs=logs, time_limit=time_limit)


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
