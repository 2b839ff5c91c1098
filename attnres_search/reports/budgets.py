"""Losses at equal training FLOPs and at equal wall-clock, read off each trial's validation
curve, so an arm that costs more per token (AttnRes adds FLOPs and time) is judged at the
budget the cheaper arm was given, not only at equal tokens.

The rule, for one seed and one pair of arms (a variant and the baseline, same seed): the
budget B is the smaller of the two arms' final budgets (the FLOPs or seconds their last
validation point was taken at), i.e. what the costlier or slower arm reached before the
other finished; each arm's validation loss at B is interpolated linearly between its two
validation points around B. The cheaper arm is thus read at its final point, the costlier
one part-way through its run. A pair is left out when B lies before either arm's first
validation point (nothing to interpolate from).

A validation point's FLOPs are step × (tokens / steps) × training FLOPs per token. Its time
is the elapsed seconds stored with it, ``[step, loss, elapsed_s]``; when a curve stores only
``[step, loss]``, the time is estimated as step × the run's seconds per step (wall_time_s
over the steps the process ran), which spreads start-up time evenly over the steps.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Any, Sequence

import numpy as np

BUDGETS = ("flops", "time")


@dataclass(frozen=True)
class Curve:
    """Validation loss against a budget (FLOPs or seconds), the budget strictly increasing."""

    budget: np.ndarray
    loss: np.ndarray
    estimated: bool = False  # True when the budgets were estimated (time without stored elapsed seconds)

    @property
    def reached(self) -> float:
        return float(self.budget[-1])

    def loss_at(self, budget: float) -> float:
        """Linear interpolation between validation points; NaN outside the measured range."""
        if not self.budget[0] <= budget <= self.budget[-1]:
            return math.nan
        return float(np.interp(budget, self.budget, self.loss))


def is_number(value: Any) -> bool:
    """A finite int or float (not a bool): what a stored loss, budget or Δ must be to count."""
    return isinstance(value, (int, float)) and not isinstance(value, bool) and math.isfinite(value)


def val_points(attrs: dict[str, Any]) -> list[tuple[float, float, float | None]]:
    """``(step, loss, elapsed seconds or None)`` for every well-formed point of the stored
    validation curve; both ``[step, loss]`` and ``[step, loss, elapsed_s]`` are accepted, and
    a ``val_elapsed_s`` list aligned with ``val_curve`` (what training stores) gives the times."""
    curve = attrs.get("val_curve") or []
    times = attrs.get("val_elapsed_s")
    aligned = isinstance(times, list) and len(times) == len(curve)
    out = []
    for i, point in enumerate(curve):
        if not isinstance(point, (list, tuple)) or len(point) not in (2, 3):
            continue
        if not (is_number(point[0]) and is_number(point[1])):
            continue
        elapsed = float(point[2]) if len(point) == 3 and is_number(point[2]) else None
        if elapsed is None and aligned and is_number(times[i]):
            elapsed = float(times[i])
        out.append((float(point[0]), float(point[1]), elapsed))
    return out


def _curve(xs: Sequence[float], losses: Sequence[float], estimated: bool) -> Curve | None:
    """Sorted by budget; of points at the same budget the last one stored is kept."""
    by_budget: dict[float, float] = {}
    for x, loss in zip(xs, losses):
        by_budget[x] = loss
    if not by_budget:
        return None
    budget = np.array(sorted(by_budget), dtype=float)
    return Curve(budget, np.array([by_budget[x] for x in budget], dtype=float), estimated)


def flops_curve(attrs: dict[str, Any]) -> Curve | None:
    """Loss against training FLOPs, or None when the trial lacks what it takes."""
    points = val_points(attrs)
    steps, tokens, per_token = attrs.get("steps"), attrs.get("tokens"), attrs.get("flops_per_token")
    if not points or not all(is_number(v) and v > 0 for v in (steps, tokens, per_token)):
        return None
    per_step = tokens / steps * per_token
    return _curve([p[0] * per_step for p in points], [p[1] for p in points], False)


def seconds_per_step(attrs: dict[str, Any]) -> float | None:
    """The run's wall-clock seconds per step: wall_time_s over the steps this process ran
    (a run resumed from a checkpoint timed only the steps after ``resumed_from_step``)."""
    wall, steps = attrs.get("wall_time_s"), attrs.get("steps")
    if not (is_number(wall) and is_number(steps)) or wall <= 0:
        return None
    resumed = attrs.get("resumed_from_step")
    ran = steps - resumed if is_number(resumed) else steps
    return wall / ran if ran > 0 else None


def time_curve(attrs: dict[str, Any]) -> Curve | None:
    """Loss against wall-clock seconds: the stored elapsed time of each point when every
    point has one, else step × seconds per step (``Curve.estimated``)."""
    points = val_points(attrs)
    if not points:
        return None
    if all(p[2] is not None for p in points):
        return _curve([e for _, _, e in points if e is not None], [p[1] for p in points], False)
    per_step = seconds_per_step(attrs)
    if per_step is None:
        return None
    return _curve([p[0] * per_step for p in points], [p[1] for p in points], True)


def curve(attrs: dict[str, Any], budget: str) -> Curve | None:
    if budget not in BUDGETS:
        raise ValueError(f"budget must be one of {', '.join(BUDGETS)}; got {budget!r}")
    return flops_curve(attrs) if budget == "flops" else time_curve(attrs)


@dataclass(frozen=True)
class PairAtBudget:
    seed: int
    budget: float  # B = min(final budget of either arm)
    variant_loss: float
    baseline_loss: float


def pair_at_equal_budget(seed: int, variant: Curve, baseline: Curve) -> PairAtBudget | None:
    """Both arms' losses at B, the smaller final budget (see the module's rule), or None
    when B precedes an arm's first validation point."""
    budget = min(variant.reached, baseline.reached)
    v, b = variant.loss_at(budget), baseline.loss_at(budget)
    if math.isnan(v) or math.isnan(b):
        return None
    return PairAtBudget(seed, budget, v, b)
