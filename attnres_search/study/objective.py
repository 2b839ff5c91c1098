"""The function Optuna calls per trial: one training run of one cell x seed.

Everything the run measured is stored on the trial, its final validation loss returned. A
failure (diverged loss, out of memory, anything else) fails only this trial, with its
reason stored and its traceback in the trial's log file.

The objective also refuses duplicates, the last line of "a grid never runs a cell twice":
a trial whose cell already has a finished trial, or a RUNNING one with a lower number, is
marked PRUNED with a ``skipped`` user attribute and costs nothing. That covers double
enqueues and the rare fresh trial a worker creates when another worker emptied the queue
between its check and its ask.
"""

from __future__ import annotations

import contextlib
import os
import socket
from dataclasses import replace
from typing import TYPE_CHECKING, Any, Callable, Protocol

from attnres_search.study.attrs import ATTR_CELL, ATTR_ERROR, ATTR_LOG, ATTR_SKIPPED
from attnres_search.study.cells import cell_key, cell_label, cell_slug
from attnres_search.study.space import Space
from attnres_search.study.status import counts_as_done
from attnres_search.study.trial_logs import TrialLogRouter, trial_log_path, write_trial_log

if TYPE_CHECKING:
    import optuna

    from attnres_search.study.handle import StudyHandle
    from attnres_search.study.status import FailedTrial
    from attnres_search.study.worker import WorkerInterrupts
    from attnres_search.training.config import RunResult

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
    params = {name: trial.suggest_categorical(name, list(values)) for name, values in space.choices().items()}
    for axis in space.axes:
        if axis.is_grid:
            continue
        low, high = axis.ends()
        if axis.integer:
            params[axis.name] = trial.suggest_int(axis.name, low, high, log=axis.log)
        else:
            params[axis.name] = trial.suggest_float(axis.name, low, high, log=axis.log)
    return params


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


def make_objective(handle: "StudyHandle", runner: Runner, *, progress: StudyProgress | None = None,
                   devices_per_trial: int = 1, interrupts: "WorkerInterrupts | None" = None,
                   logs: TrialLogRouter | None = None) -> Callable[["optuna.Trial"], float]:
    """The objective of ``handle``'s study; ``runner`` is :func:`attnres_search.training.run`
    (tests inject a fake). ``logs`` routes Optuna's records about the trial into its log file."""
    from attnres_search.study.callbacks import StepProgress, StepPruning

    space = handle.space

    def objective(trial: "optuna.Trial") -> float:
        log_path = trial_log_path(handle.logs_dir, trial.number)
        if logs is not None:
            logs.start_trial(log_path)  # Optuna's failure record, traceback included, lands there
        with interrupts.trial() if interrupts is not None else contextlib.nullcontext():
            return run_trial(trial, log_path)

    def run_trial(trial: "optuna.Trial", log_path: Any) -> float:
        import optuna

        params = suggest(trial, space)
        key = cell_key(params)
        if trial.user_attrs.get(ATTR_CELL) != key:
            trial.set_user_attr(ATTR_CELL, key)
        owner = duplicate_of(trial, key)
        if owner is not None:
            trial.set_user_attr(ATTR_SKIPPED, f"cell already run by trial {owner}")
            raise optuna.TrialPruned(f"duplicate of trial {owner}")
        if progress is not None:
            status = handle.status()
            progress.trial_started(trial.number, status.done + 1, status.total, cell_label(params))
        cfg = space.run_config(params, out_dir=str(handle.runs_dir / cell_slug(params)))
        if devices_per_trial != cfg.devices:
            cfg = replace(cfg, devices=devices_per_trial)
        variant = space.variant(params["variant"])
        host = f"{socket.gethostname()}:{os.getpid()}"
        for name, value in (("variant", variant.name), ("preset", variant.preset), ("seed", cfg.seed),
                            ("config", cfg.to_dict()), ("host", host), (ATTR_LOG, str(log_path))):
            trial.set_user_attr(name, value)
        write_trial_log(log_path, f"trial {trial.number} of study {handle.name}: {cell_label(params)} "
                                  f"on {host}, run folder {cfg.out_dir}")
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
