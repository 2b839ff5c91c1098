"""``--time-limit``: let a study grow across time-limited allocations without losing a step.

GPU time often comes in windows (a Slurm ``--time``, a preemptible queue, a lent machine
for a quarter of an hour). A worker given a time limit

1. claims a trial only when it is expected to finish in the time left (:func:`may_claim`,
   judged from the study's own finished trials by :func:`claim_estimate`; with none
   finished yet it starts one, since nothing else can tell how long a trial takes);
2. at the deadline, stops the running trial at the end of its current step, saves its
   checkpoint (whether or not the space asks for periodic ones) and re-queues it
   (:class:`TimeLimitReached`, raised by
   :class:`attnres_search.study.callbacks.CheckpointAtDeadline`); the next worker copies
   that checkpoint into its own attempt folder and continues from the same step;
3. exits 0 with one line saying what is left (:func:`stop_line`).

The deadline is the limit less a small reserve (:func:`reserve_s`) for writing the
checkpoint and leaving, so a worker given the length of its allocation ends inside it.

This module imports neither torch nor Lightning: the worker decides about claims without them.
"""

from __future__ import annotations

import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Callable, Iterable

if TYPE_CHECKING:
    import optuna

CLAIM_MARGIN = 1.1  # a trial is claimed when 1.1 x its estimated duration fits in the time left
RESERVE_FRACTION, RESERVE_MAX_S = 0.05, 30.0  # kept back from the limit to checkpoint and exit


def reserve_s(limit_s: float) -> float:
    """Seconds kept back from a limit for the checkpoint and the exit: 5%, at most 30 s."""
    return min(RESERVE_MAX_S, RESERVE_FRACTION * limit_s)


@dataclass
class TimeLimit:
    """A worker's time limit of ``seconds`` from its creation. ``clock`` is a monotonic
    clock in seconds (tests pass their own to make a deadline fall at a chosen step)."""

    seconds: float
    clock: Callable[[], float] = time.monotonic
    started: float = field(init=False)

    def __post_init__(self) -> None:
        if not self.seconds > 0:
            raise ValueError(f"a time limit must be positive, got {self.seconds!r} s")
        self.started = self.clock()

    @property
    def deadline(self) -> float:
        """When training must stop: the limit less :func:`reserve_s`."""
        return self.started + self.seconds - reserve_s(self.seconds)

    def left(self) -> float:
        """Seconds until the deadline (negative once it has passed)."""
        return self.deadline - self.clock()

    def expired(self) -> bool:
        return self.left() <= 0


class TimeLimitReached(Exception):
    """The deadline stopped a trial after ``step`` optimizer steps; ``checkpoint`` holds
    them (None when no step had finished: nothing to keep). The worker re-queues the trial."""

    def __init__(self, step: int, checkpoint: Path | None) -> None:
        self.step, self.checkpoint = step, checkpoint
        where = f"checkpoint {checkpoint}" if checkpoint is not None else "no step to keep"
        super().__init__(f"time limit reached after step {step}; {where}")

    @property
    def retry_reason(self) -> str:
        """What the stopped trial stores as its reason (it is re-queued, not failed)."""
        if self.checkpoint is None:
            return "time limit reached before the first step; re-queued"
        return f"time limit reached after step {self.step}; checkpointed and re-queued"


def full_run_s(trial: "optuna.trial.FrozenTrial") -> float | None:
    """How long ``trial`` (complete) took, scaled up to the whole run when it resumed from
    a checkpoint (it then ran only the steps after it): None without timestamps."""
    if trial.datetime_start is None or trial.datetime_complete is None:
        return None
    seconds = (trial.datetime_complete - trial.datetime_start).total_seconds()
    steps, resumed = trial.user_attrs.get("steps"), trial.user_attrs.get("resumed_from_step")
    if isinstance(steps, int) and isinstance(resumed, int) and 0 < resumed < steps:
        seconds *= steps / (steps - resumed)
    return seconds


def claim_estimate(finished: Iterable["optuna.trial.FrozenTrial"], next_variants: Iterable[str]) -> float | None:
    """Expected seconds of the next trial: the longest finished run of any variant waiting
    to run (variants differ in cost: mHC steps cost several baseline steps), else the
    longest finished run of any variant; None when no trial has finished. The longest, not
    a mean: a claim that overruns costs a checkpoint and a restart, a refused one only
    the idle end of an allocation."""
    longest: dict[str, float] = {}
    for trial in finished:
        seconds = full_run_s(trial)
        if seconds is None:
            continue
        variant = str(trial.params.get("variant", trial.user_attrs.get("variant", "")))
        longest[variant] = max(seconds, longest.get(variant, 0.0))
    if not longest:
        return None
    waiting = [longest[v] for v in set(next_variants) if v in longest]
    return max(waiting) if waiting else max(longest.values())


def may_claim(estimate_s: float | None, left_s: float, limit_s: float, margin: float = CLAIM_MARGIN) -> bool:
    """Whether a worker with ``left_s`` seconds to its deadline (of a ``limit_s`` limit)
    starts a trial expected to take ``estimate_s``.

    No estimate (nothing finished yet): start one. A trial that fits: start it. A trial
    longer than the whole limit can never finish inside one allocation, only across
    several: start it while at least half the limit is left, or the study would never
    move."""
    if left_s <= 0:
        return False
    if estimate_s is None:
        return True
    needed = margin * estimate_s
    if needed <= left_s:
        return True
    return needed > limit_s and left_s >= limit_s / 2


def stop_line(*, finished: int, requeued: "TimeLimitReached | None", left: int | None,
              estimate_s: float | None = None, left_s: float | None = None) -> str:
    """The one line a worker stopped by its time limit ends with: what ran, what was
    re-queued and from which step, and what is left."""
    from attnres_search.units import format_duration

    parts = [f"time limit: {finished} trial(s) finished"]
    if requeued is None:
        if estimate_s is not None and left_s is not None and left_s > 0:
            parts.append(f"none started that would not finish (next ~{format_duration(estimate_s)}, "
                         f"{format_duration(left_s)} left)")
        elif left_s is not None:
            parts.append("no time left to start another")
    elif requeued.checkpoint is not None:
        parts.append(f"1 requeued from its checkpoint at step {requeued.step}")
    else:
        parts.append("1 requeued before its first step")
    parts.append(f"{left} left" if left is not None else "the sampler decides what is left")
    return ", ".join(parts)
