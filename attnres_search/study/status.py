"""Where a study stands: cells done, running, waiting and failed, and why trials failed.

The same rule serves ``study status``, ``study list``, the progress displays, the report's
progress note and the worker's stop rule, so they never disagree. A failed trial whose
run was completed afterwards, by Optuna's retry of a stale trial or by ``study resume``,
is *superseded*: it is history, not a failure anyone needs to act on.

What is left to run (:func:`left_to_run`) is one rule too, used by ``worker``, ``launch``
and ``study resume`` alike: a cell with no finished trial and no waiting or running one
(trials of dead workers are failed first, so "running" means a fresh heartbeat). A cell
whose trial failed through no fault of its run (interrupted, disk full, its worker died)
is left to run for every worker; one whose run itself failed (diverged, out of memory)
only for ``study resume``, which is the explicit "try the failures again".
"""

from __future__ import annotations

import json
import warnings
from collections import Counter
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, Iterable

from attnres_search.study.attrs import ATTR_CELL, ATTR_ERROR, ATTR_LOG, ATTR_RETRY, ATTR_SKIPPED
from attnres_search.study.cells import cell_key, cell_label

if TYPE_CHECKING:
    import optuna

    from attnres_search.study.handle import StudyHandle

STATES = ("COMPLETE", "RUNNING", "WAITING", "FAIL", "PRUNED")
NO_REASON = "worker died or was interrupted (no heartbeat)"


@dataclass
class CellStatus:
    """Where a study stands, for ``study status`` and the worker's stop rule."""

    total: int | None  # cells x seeds (grid) or n_trials (sampled)
    done: int
    running: int
    waiting: int
    failed: int  # cells whose every trial failed (grid) / failed trials not superseded (sampled)
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


@dataclass(frozen=True)
class FailedTrial:
    number: int
    run: str  # the cell x seed, as a person reads it
    reason: str
    log: str | None  # the trial's log file (its traceback), when the worker wrote one


def counts_as_done(trial: "optuna.trial.FrozenTrial") -> bool:
    """Complete, or pruned by the pruner (a duplicate the objective skipped is not done)."""
    from optuna.trial import TrialState

    return trial.state == TrialState.COMPLETE or (trial.state == TrialState.PRUNED
                                                  and ATTR_SKIPPED not in trial.user_attrs)


def failed_by_its_run(trial: "optuna.trial.FrozenTrial") -> bool:
    """A FAIL whose run itself failed (a stored reason, not marked for retry): only
    ``study resume`` runs such a cell again. Interrupted, disk-full and dead-worker trials
    are not."""
    from optuna.trial import TrialState

    return (trial.state == TrialState.FAIL and bool(trial.user_attrs.get(ATTR_ERROR))
            and not trial.user_attrs.get(ATTR_RETRY))


def left_to_run(handle: "StudyHandle", *, include_failed: bool = False) -> list[dict[str, Any]]:
    """Grid cells x seeds with no finished trial and no waiting or running one; cells whose
    run failed only with ``include_failed``. Call after failing stale trials (see
    :meth:`~attnres_search.study.handle.StudyHandle.enqueue_missing`)."""
    from optuna.trial import TrialState

    if not handle.space.is_grid:
        return []
    trials = handle.trials()
    taken = {trial_cell(t) for t in trials if t.state in (TrialState.WAITING, TrialState.RUNNING) or counts_as_done(t)}
    run_failed = {trial_cell(t) for t in trials if failed_by_its_run(t)}
    return [params for params in handle.space.cells()
            if cell_key(params) not in taken and (include_failed or cell_key(params) not in run_failed)]


def trial_cell(trial: "optuna.trial.FrozenTrial") -> str | None:
    """The cell key of a trial: the one it was enqueued with, else its parameters'."""
    key = trial.user_attrs.get(ATTR_CELL)
    if key is None and trial.params:
        key = cell_key(trial.params)
    return key


def trial_params(trial: "optuna.trial.FrozenTrial") -> dict[str, Any]:
    """The parameters a trial runs: its own, or (while it waits) those its cell key names."""
    if trial.params:
        return dict(trial.params)
    key = trial.user_attrs.get(ATTR_CELL)
    return dict(json.loads(key)) if key else {}


def retry_history(trial: "optuna.trial.FrozenTrial") -> list[int]:
    """The trials this one retries (Optuna's public, experimental, retry bookkeeping)."""
    import optuna

    with warnings.catch_warnings():
        warnings.simplefilter("ignore", optuna.exceptions.ExperimentalWarning)
        return list(optuna.storages.RetryHeartbeatStaleTrialCallback.retry_history(trial))


def superseded_failures(trials: Iterable["optuna.trial.FrozenTrial"]) -> set[int]:
    """Numbers of FAIL trials whose run was done afterwards: a completed retry lists them
    in its retry history, or a later trial of the same cell finished (``study resume``
    re-queues failed cells as fresh trials). Reports and status leave these out of failures."""
    from optuna.trial import TrialState

    trials = list(trials)
    done = [t for t in trials if counts_as_done(t)]
    done_cells = {trial_cell(t) for t in done} - {None}
    retried = {n for t in done for n in retry_history(t)}
    return {t.number for t in trials
            if t.state == TrialState.FAIL and (t.number in retried or trial_cell(t) in done_cells)}


def study_status(handle: "StudyHandle") -> CellStatus:
    from optuna.trial import TrialState

    space = handle.space
    trials = handle.trials()
    done_trials = [t for t in trials if counts_as_done(t)]
    durations = [(t.datetime_complete - t.datetime_start).total_seconds() for t in done_trials
                 if t.datetime_complete is not None and t.datetime_start is not None]
    states = Counter(t.state for t in trials)
    skipped = sum(ATTR_SKIPPED in t.user_attrs for t in trials)
    if space.is_grid:
        cells = {cell_key(p) for p in space.cells()}
        done_cells = {trial_cell(t) for t in done_trials}
        pending = {trial_cell(t) for t in trials if t.state in (TrialState.WAITING, TrialState.RUNNING)}
        failed_cells = {trial_cell(t) for t in trials if t.state == TrialState.FAIL}
        failed = len(failed_cells - done_cells - pending)
        total: int | None = len(cells)
        done = len(done_cells & cells)
    else:
        superseded = superseded_failures(trials)
        failed = sum(t.state == TrialState.FAIL and t.number not in superseded and not t.user_attrs.get(ATTR_RETRY)
                     for t in trials)
        total, done = space.n_trials, len(done_trials)
    return CellStatus(total=total, done=done, running=states[TrialState.RUNNING], waiting=states[TrialState.WAITING],
                      failed=failed, skipped=skipped,
                      mean_trial_s=sum(durations) / len(durations) if durations else None)


def failed_trials(handle: "StudyHandle") -> list[FailedTrial]:
    """FAIL trials that no later run superseded, with the reason the objective stored (a
    diverged loss, out of memory...); a trial killed with its worker has none and says so."""
    from optuna.trial import TrialState

    trials = handle.trials()
    superseded = superseded_failures(trials)
    return [FailedTrial(t.number, cell_label(trial_params(t)), t.user_attrs.get(ATTR_ERROR) or NO_REASON,
                        t.user_attrs.get(ATTR_LOG))
            for t in trials if t.state == TrialState.FAIL and t.number not in superseded]


def per_variant(handle: "StudyHandle") -> dict[str, dict[str, int]]:
    """Trial states per variant (skipped duplicates and superseded failures left out)."""
    counts: dict[str, Counter] = {v.name: Counter() for v in handle.space.variants}
    trials = handle.trials()
    superseded = superseded_failures(trials)
    for trial in trials:
        variant = trial_params(trial).get("variant")
        if variant in counts and ATTR_SKIPPED not in trial.user_attrs and trial.number not in superseded:
            counts[variant][trial.state.name] += 1
    return {k: {s: v[s] for s in STATES} for k, v in counts.items()}


def hardware_counts(handle: "StudyHandle") -> dict[str, int]:
    """Finished runs per hardware (``hardware_label``): the same seed gives the same bits only
    on the same hardware, so a study whose runs span machines says so."""
    from collections import Counter

    from optuna.trial import TrialState

    from attnres_search.training.provenance import hardware_label

    counts = Counter(hardware_label(t.user_attrs.get("hardware")) for t in handle.trials()
                     if t.state == TrialState.COMPLETE and ATTR_SKIPPED not in t.user_attrs)
    return dict(counts.most_common())
