"""Curve fits behind the depth/width and scaling reports.

Depth/width: at a fixed FLOP budget, loss against the shape is close to a parabola in
log(d_model / L_b) (the paper's Figure 7 curves), so the optimum is the vertex of a
least-squares quadratic in x = ln(ratio).

Scaling: L = A * C^-alpha is a straight line in log-log space, fitted by least squares;
the compute multiplier of a variant is how much more compute the baseline needs to reach
the loss the variant reaches at a given compute (the paper's 1.25x).
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Sequence

import numpy as np


@dataclass(frozen=True)
class QuadraticFit:
    """loss = a + b·x + c·x², x = ln(ratio). ``interior`` is False when the fitted curve has
    no minimum inside the measured ratios; the optimum is then the best measured ratio."""

    a: float
    b: float
    c: float
    optimum_ratio: float
    optimum_loss: float
    interior: bool
    r2: float

    def loss_at(self, ratio: float) -> float:
        x = math.log(ratio)
        return self.a + self.b * x + self.c * x * x


def fit_depth_width(ratios: Sequence[float], losses: Sequence[float]) -> QuadraticFit:
    if len(set(ratios)) < 3:
        raise ValueError("the depth/width fit needs at least three different d_model/L_b ratios")
    x = np.log(np.asarray(ratios, dtype=float))
    y = np.asarray(losses, dtype=float)
    c, b, a = np.polyfit(x, y, 2)
    r2 = _r2(y, a + b * x + c * x * x)
    if c > 0 and x.min() <= -b / (2 * c) <= x.max():
        x_opt = -b / (2 * c)
        return QuadraticFit(a, b, c, float(math.exp(x_opt)), float(a + b * x_opt + c * x_opt**2), True, r2)
    best = int(np.argmin(y))
    return QuadraticFit(a, b, c, float(ratios[best]), float(y[best]), False, r2)


def bracketed(ratios: Sequence[float], losses: Sequence[float]) -> str | None:
    """Whether the measured curve turns up on both sides of its lowest shape ("yes"), or where
    its lowest shape sits on the grid's edge ("widest" / "deepest"): a pilot's range is good
    only when every arm reads "yes", and an edge optimum is a bound, not an estimate."""
    if len(set(ratios)) < 3:
        return None
    ordered = sorted(zip(ratios, losses))
    best = min(range(len(ordered)), key=lambda i: ordered[i][1])
    return "deepest" if best == 0 else "widest" if best == len(ordered) - 1 else "yes"


def optimum_edge(interior: bool | None, bracketed_as: str | None) -> str | None:
    """The grid edge ("widest" / "deepest") that cuts an optimum, or None where the optimum is
    an estimate: one rule for every place that prints or draws it as a bound."""
    return None if interior or bracketed_as not in ("widest", "deepest") else bracketed_as


@dataclass(frozen=True)
class PowerLaw:
    """L = A · C^-alpha."""

    A: float
    alpha: float
    r2: float

    def loss_at(self, compute: float) -> float:
        return self.A * compute ** (-self.alpha)

    def compute_for(self, loss: float) -> float:
        """The compute at which this law reaches ``loss``."""
        return (self.A / loss) ** (1 / self.alpha)


def fit_power_law(compute: Sequence[float], losses: Sequence[float]) -> PowerLaw:
    if len(set(compute)) < 2:
        raise ValueError("the power-law fit needs at least two different compute budgets")
    if min(compute) <= 0 or min(losses) <= 0:
        raise ValueError("the power-law fit needs positive compute and losses")
    lx, ly = np.log(np.asarray(compute, dtype=float)), np.log(np.asarray(losses, dtype=float))
    slope, intercept = np.polyfit(lx, ly, 1)
    return PowerLaw(float(math.exp(intercept)), float(-slope), _r2(ly, intercept + slope * lx))


def compute_multiplier(variant: PowerLaw, baseline: PowerLaw, at_compute: float) -> float:
    """Compute the baseline needs to match the variant's loss at ``at_compute``, divided by
    ``at_compute``: above 1 the variant is the more compute-efficient."""
    return baseline.compute_for(variant.loss_at(at_compute)) / at_compute


def _r2(y: np.ndarray, fitted: np.ndarray) -> float:
    total = float(((y - y.mean()) ** 2).sum())
    return 1.0 - float(((y - fitted) ** 2).sum()) / total if total > 0 else 1.0
