"""Bootstrap over seeds for the fitted quantities of a report (the depth-width optimum, the
scaling fit's compute multiplier), which have no closed-form interval.

One replicate draws as many seeds as the study ran, with replacement, from the seeds it
ran, and keeps those same seeds for every cell (every variant, shape and size): seeds are
paired across variants (same data order, same initial weights), so the variants' fits move
together and their comparison keeps its pairing. Each cell's loss in the replicate is the
mean over the drawn seeds it has (a seed drawn twice counts twice); a cell none of whose
seeds was drawn is left out of that replicate's fit. The fit is then redone exactly as for
the point estimate. The 95% interval is the 2.5th to 97.5th percentile of the replicates
whose fit succeeded (percentile bootstrap). The generator's seed is fixed, so a report
rendered twice from the same storage prints the same intervals.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Any, Iterable

import numpy as np

from attnres_search.reports import fits

BOOTSTRAP_SEED = 20260315  # fixed: reports are reproducible byte for byte
REPLICATES = 2000

# A cell: (variant, x, ...), x being d_model/L_b or the compute; further items (the trial's
# other parameters) tell apart cells that share a variant and an x.
Cell = tuple[Any, ...]


@dataclass(frozen=True)
class SeedTable:
    """Per-seed final losses of some cells: ``losses[c, s]`` is cell ``cells[c]`` at seed
    ``seeds[s]``, NaN where that cell has no completed trial for that seed."""

    cells: list[Cell]
    seeds: list[int]
    losses: np.ndarray

    @classmethod
    def build(cls, values: dict[Cell, dict[int, float]]) -> "SeedTable":
        cells = list(values)
        seeds = sorted({s for per_seed in values.values() for s in per_seed})
        losses = np.full((len(cells), len(seeds)), np.nan)
        for c, cell in enumerate(cells):
            for s, seed in enumerate(seeds):
                if seed in values[cell]:
                    losses[c, s] = values[cell][seed]
        return cls(cells, seeds, losses)


def replicate_means(table: SeedTable, replicates: int = REPLICATES, seed: int = BOOTSTRAP_SEED) -> np.ndarray:
    """``(replicates, cells)``: each cell's mean loss over one resample of the seeds, the same
    resample for every cell of a replicate; NaN where the cell has none of the drawn seeds."""
    n = len(table.seeds)
    rng = np.random.default_rng(seed)
    draws = rng.integers(0, n, size=(replicates, n))
    picked = table.losses[:, draws]  # (cells, replicates, n)
    present = ~np.isnan(picked)
    counts = present.sum(axis=2)
    sums = np.where(present, picked, 0.0).sum(axis=2)
    with np.errstate(invalid="ignore", divide="ignore"):
        means = np.where(counts > 0, sums / np.maximum(counts, 1), np.nan)
    return means.T


@dataclass(frozen=True)
class Interval:
    low: float | None
    high: float | None
    valid: int  # replicates whose fit succeeded


def percentile_interval(values: Iterable[float], confidence: float = 0.95) -> Interval:
    finite = np.array([v for v in values if math.isfinite(v)], dtype=float)
    if finite.size == 0:
        return Interval(None, None, 0)
    tail = 100 * (1 - confidence) / 2
    low, high = np.percentile(finite, [tail, 100 - tail])
    return Interval(float(low), float(high), int(finite.size))


# ------------------------------------------------------------------------------- depth-width

@dataclass(frozen=True)
class OptimumBootstrap:
    interval: Interval
    p_below_baseline: float | None  # fraction of replicates with the optimum strictly below the baseline's


def _optimum(ratios: list[float], losses: np.ndarray) -> float:
    keep = ~np.isnan(losses)
    try:
        return fits.fit_depth_width([r for r, k in zip(ratios, keep) if k], list(losses[keep])).optimum_ratio
    except ValueError:
        return math.nan


def _columns(table: SeedTable) -> dict[str, list[int]]:
    out: dict[str, list[int]] = {}
    for i, cell in enumerate(table.cells):
        out.setdefault(cell[0], []).append(i)
    return out


def bootstrap_optima(cells: dict[Cell, dict[int, float]], baseline: str,
                     replicates: int = REPLICATES, seed: int = BOOTSTRAP_SEED) -> dict[str, OptimumBootstrap]:
    """Per variant, the bootstrap interval of the fitted optimum d_model/L_b, and for every
    other variant the probability that its optimum lies strictly below the baseline's.
    ``cells`` maps (variant, d_model/L_b, ...) to {seed: final loss}."""
    table = SeedTable.build(cells)
    means = replicate_means(table, replicates, seed)
    optima: dict[str, np.ndarray] = {}
    for variant, cols in _columns(table).items():
        ratios = [table.cells[i][1] for i in cols]
        optima[variant] = np.array([_optimum(ratios, means[r, cols]) for r in range(replicates)])
    out = {}
    for variant, values in optima.items():
        p_below = None
        if variant != baseline and baseline in optima:
            both = np.isfinite(values) & np.isfinite(optima[baseline])
            if both.any():
                p_below = float(np.mean(values[both] < optima[baseline][both]))
        out[variant] = OptimumBootstrap(percentile_interval(values), p_below)
    return out


# ----------------------------------------------------------------------------------- scaling

@dataclass(frozen=True)
class MultiplierBootstrap:
    interval: Interval
    p_above_one: float | None  # fraction of replicates in which the variant is the more compute-efficient


def _law(compute: list[float], losses: np.ndarray) -> fits.PowerLaw | None:
    keep = ~np.isnan(losses)
    try:
        return fits.fit_power_law([c for c, k in zip(compute, keep) if k], list(losses[keep]))
    except ValueError:
        return None


def _multiplier(law: fits.PowerLaw | None, base: fits.PowerLaw | None, at_compute: float) -> float:
    """NaN where a replicate's fits give no finite multiplier (e.g. a flat or rising law)."""
    if law is None or base is None or base.alpha == 0:
        return math.nan
    try:
        value = fits.compute_multiplier(law, base, at_compute)
    except (OverflowError, ZeroDivisionError, ValueError):
        return math.nan
    return value if isinstance(value, float) and math.isfinite(value) else math.nan


def bootstrap_multipliers(points: dict[Cell, dict[int, float]], baseline: str, at_compute: float,
                          replicates: int = REPLICATES, seed: int = BOOTSTRAP_SEED) -> dict[str, MultiplierBootstrap]:
    """Per non-baseline variant, the bootstrap interval of the compute multiplier at
    ``at_compute`` (:func:`fits.compute_multiplier` on power laws refitted per replicate).
    ``points`` maps (variant, compute in PFLOP/s-days, ...) to {seed: final loss}."""
    table = SeedTable.build(points)
    means = replicate_means(table, replicates, seed)
    columns = _columns(table)
    compute = {v: [table.cells[i][1] for i in cols] for v, cols in columns.items()}
    if baseline not in columns:
        return {}
    base_laws = [_law(compute[baseline], means[r, columns[baseline]]) for r in range(replicates)]
    out = {}
    for variant in columns:
        if variant == baseline:
            continue
        values = [_multiplier(_law(compute[variant], means[r, columns[variant]]), base_laws[r], at_compute)
                  for r in range(replicates)]
        arr = np.array(values)
        finite = arr[np.isfinite(arr)]
        out[variant] = MultiplierBootstrap(percentile_interval(arr),
                                           float(np.mean(finite > 1)) if finite.size else None)
    return out
