"""Samplers: which parameters a fresh trial gets.

Grid spaces enqueue every cell x seed when the study is created, so their sampler
decides nothing for those trials; TPE and random spaces ask their sampler each time.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

import optuna

if TYPE_CHECKING:
    from attnres_search.study.space import Space


class QueuedGridSampler(optuna.samplers.GridSampler):
    """GridSampler whose ``after_trial`` leaves stopping to the worker loop. Optuna's reads
    the trial's ``grid_id`` once one grid point looks unvisited, but enqueued trials carry
    none (they never mark a grid point visited either), so a one-cell grid raised KeyError
    after its only trial; the worker loop already stops when every cell is done."""

    def after_trial(self, study: Any, trial: Any, state: Any, values: Any) -> None:
        return None


def make_sampler(space: "Space") -> optuna.samplers.BaseSampler:
    """QueuedGridSampler for grid spaces. Their trials are all enqueued with fixed
    parameters, so it only fills a fresh trial that a worker creates when another emptied
    the queue under it, and the objective skips that one if it duplicates a cell.
    (BruteForceSampler is no good here: it rebuilds its tree from every trial and raises on
    a failed trial that never got parameters, e.g. one killed right after its claim.)"""
    if space.is_grid:
        return QueuedGridSampler(space.choices(), seed=0)
    if space.sampler == "random":
        return optuna.samplers.RandomSampler()
    return optuna.samplers.TPESampler()
