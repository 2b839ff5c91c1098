"""Sequential verdicts: a group-sequential paired t-test with Lan-DeMets alpha spending,
t boundaries calibrated by simulation, Holm over the primary comparisons, and a non-binding
futility stop. One decision function serves reports, ``study extend --until-decided`` and
the simulation tests that check its error rate.

Why this procedure (see README, "Statistics"):

* A study grows a few seeds at a time and looks after each growth. Re-testing at the
  nominal α after every look is optional stopping (12-18% false positives at a nominal 5%
  with 3 to 12 seeds). A group-sequential design fixes in advance the most seed pairs
  (``max_seeds``) and the looks, and spends α over them with a spending function
  (Lan & DeMets 1983): O'Brien-Fleming-type spending (O'Brien & Fleming 1979) is strict at
  the early looks, where 3-4 pairs say little, and close to the fixed-n test at the last;
  Pocock-type (Pocock 1977) spends evenly. The family-wise error over all looks is ≤ α.
* With 3-12 pairs the variance is estimated from a handful of degrees of freedom, so
  normal-theory boundaries (Jennison & Turnbull 2000, ch. 7) are too liberal. The paired
  t-statistic's joint null distribution over the looks does not depend on the unknown
  variance (it is scale-invariant), so the boundaries here are its exact quantiles for the
  look schedule: the first in closed form (Student t), the later ones from one seeded
  simulation of the t-process (:data:`CALIBRATION_SIMS` paths), so they are reproducible.
* Anytime-valid alternatives (a sequential t-test e-value, Grünwald et al. 2024) need no
  maximum, but at 3-12 pairs they need far larger effects to reject (an e-value of 1/α);
  a study here has a natural maximum (its compute), so the group-sequential test is kept.
* Multiplicity: Holm over the pre-registered primary comparisons as a graphical procedure
  for group-sequential designs (Maurer & Bretz 2013): each starts at α/m; when one is
  rejected, the others are tested from that look on with boundaries spent at α/(m − r).
  Only the current and later looks use the larger level (a subset of what Maurer & Bretz
  allow), which keeps the family-wise error ≤ α.
* Futility is non-binding: the efficacy boundaries are computed as if it never stopped a
  comparison, so stopping early can only lower the error rate. A comparison stops for
  futility when its conditional power under the current trend (the B-value formulation,
  Lan & Wittes 1988) to cross the final boundary is below ``design.futility``.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from functools import lru_cache

import numpy as np

from attnres_search.study.design import Design

CONTINUE, BETTER, WORSE, FUTILE, EXHAUSTED = 0, 1, 2, 3, 4
STATE_NAMES = {CONTINUE: "continue", BETTER: "efficacy: variant better", WORSE: "efficacy: variant worse",
               FUTILE: "futility", EXHAUSTED: "max reached"}
RULES = ("sequential", "naive")
CALIBRATION_SIMS = 400_000
CALIBRATION_SEED = 260315031  # the paper's arXiv number: any fixed seed makes the boundaries reproducible


def spent(tau: float, alpha: float, spending: str) -> float:
    """Cumulative two-sided α spent at information fraction ``tau`` (pairs / max pairs)."""
    from scipy.special import ndtr, ndtri

    tau = min(max(tau, 0.0), 1.0)
    if tau == 0:
        return 0.0
    if spending == "obrien-fleming":
        return float(2 * (1 - ndtr(ndtri(1 - alpha / 2) / math.sqrt(tau))))
    if spending == "pocock":
        return float(alpha * math.log(1 + (math.e - 1) * tau))
    raise ValueError(f"unknown spending function {spending!r}")


def t_statistics(total: np.ndarray, total_sq: np.ndarray, n: int) -> np.ndarray:
    """One-sample t of n values from their sum and sum of squares (±inf for equal non-zero
    values, 0 for all zeros)."""
    mean = total / n
    var = np.maximum(total_sq - total * mean, 0.0) / (n - 1)
    with np.errstate(divide="ignore", invalid="ignore"):
        t = mean / np.sqrt(var / n)
    return np.where(np.isnan(t), 0.0, t)


@lru_cache(maxsize=128)
def t_boundaries(schedule: tuple[int, ...], n_max: int, alpha: float, spending: str) -> tuple[float, ...]:
    """Two-sided critical values c_k for |t| at each look: P0(|t_j| < c_j for j < k, |t_k| ≥ c_k)
    equals the α spent between look k−1 and look k. The first is the Student-t quantile; the
    later ones are quantiles of a seeded simulation of the null t-process."""
    from scipy import stats as sps

    rng = np.random.default_rng(CALIBRATION_SEED)
    sims = CALIBRATION_SIMS
    total = np.zeros(sims)
    total_sq = np.zeros(sims)
    alive = np.ones(sims, dtype=bool)
    n_prev, spent_prev, out = 0, 0.0, []
    for k, n in enumerate(schedule):
        x = rng.standard_normal((sims, n - n_prev))
        total += x.sum(axis=1)
        total_sq += np.einsum("ij,ij->i", x, x)
        n_prev = n
        target = (alpha if n >= n_max else spent(n / n_max, alpha, spending)) - spent_prev
        spent_prev += max(target, 0.0)
        t = np.abs(t_statistics(total, total_sq, n))
        if target <= 0:
            c = math.inf
        elif k == 0:
            c = float(sps.t.isf(target / 2, n - 1))
        else:
            m = int(target * sims)
            live = t[alive]
            c = math.inf if m < 1 or m > live.size else float(np.partition(live, live.size - m)[live.size - m])
        out.append(c)
        alive &= t < c
    return tuple(out)


def naive_boundaries(schedule: tuple[int, ...], alpha: float) -> tuple[float, ...]:
    """The fixed-n two-sided t critical value at every look: re-testing at the nominal level."""
    from scipy import stats as sps

    return tuple(float(sps.t.isf(alpha / 2, n - 1)) for n in schedule)


def boundary_table(design: Design, m: int, rule: str = "sequential") -> np.ndarray:
    """``table[r, k]``: the |t| boundary at look k once r of the m primary comparisons are
    rejected (Holm: level α/(m − r))."""
    if rule not in RULES:
        raise ValueError(f"rule must be one of {', '.join(RULES)}; got {rule!r}")
    rows = []
    for r in range(m):
        level = design.alpha / (m - r)
        rows.append(t_boundaries(design.schedule, design.max_seeds, level, design.spending) if rule == "sequential"
                    else naive_boundaries(design.schedule, level))
    return np.array(rows)


def conditional_power(t: np.ndarray, n: int, n_max: int, final_boundary: np.ndarray) -> np.ndarray:
    """Probability, under the current trend, that the final look crosses its boundary on the
    side the estimate is on: with B = z√τ and drift θ = z/√τ (z the normal score of t's
    p-value), CP = Φ((|B| + |θ|(1 − τ) − c_z)/√(1 − τ)), c_z the final boundary's normal score."""
    from scipy import stats as sps
    from scipy.special import ndtr, ndtri

    tau = n / n_max
    z = -ndtri(np.clip(sps.t.sf(np.abs(t), n - 1), 1e-300, 0.5))
    cz = -ndtri(np.clip(sps.t.sf(final_boundary, n_max - 1), 1e-300, 0.5))
    return ndtr((z * math.sqrt(tau) + z / math.sqrt(tau) * (1 - tau) - cz) / math.sqrt(1 - tau))


@dataclass(frozen=True)
class Decisions:
    """Per study (first axis) and primary comparison (second axis): ``state`` (CONTINUE,
    BETTER, WORSE, FUTILE or EXHAUSTED), the look it was decided at or last evaluated
    (1-based; 0: not evaluated yet), t, the boundary and the conditional power there; and
    per study the looks evaluated."""

    state: np.ndarray
    look: np.ndarray
    t: np.ndarray
    boundary: np.ndarray
    conditional_power: np.ndarray
    looks_done: np.ndarray

    def rejected(self) -> np.ndarray:
        """Per study: did any comparison cross an efficacy boundary (either side)?"""
        return np.isin(self.state, (BETTER, WORSE)).any(axis=1)


def sequential_decisions(diffs: np.ndarray, design: Design, n_pairs: np.ndarray | None = None,
                         rule: str = "sequential") -> Decisions:
    """Decide the primary comparisons of many studies at once.

    ``diffs[s, i, j]``: study s, primary comparison i, the j-th seed pair's difference
    (variant − baseline, seeds in the order they were added); ``n_pairs[s, i]`` how many
    of them exist (default: all). Looks are taken in order; look k is evaluated when every
    comparison still running has its n_k pairs (a look waits for the slowest). At each look
    a comparison crosses when |t| ≥ the boundary for the number already rejected (Holm),
    else stops for futility (not at the last look), else continues; at the last look it is
    EXHAUSTED. ``rule="naive"`` re-tests at the fixed-n level instead: the optional-stopping
    procedure the sequential one replaces, kept for the tests that show the difference."""
    diffs = np.asarray(diffs, dtype=float)
    if diffs.ndim != 3:
        raise ValueError("diffs must have shape (studies, comparisons, pairs)")
    n_studies, m, n_cols = diffs.shape
    if n_pairs is None:
        n_pairs = np.full((n_studies, m), n_cols)
    schedule = design.schedule
    table = boundary_table(design, m, rule)
    values = np.nan_to_num(diffs, nan=0.0)
    csum, csq = np.cumsum(values, axis=2), np.cumsum(values * values, axis=2)
    shape = (n_studies, m)
    state = np.zeros(shape, dtype=np.int8)
    look = np.zeros(shape, dtype=np.int16)
    t_out, bound_out, cp_out = np.full(shape, np.nan), np.full(shape, np.nan), np.full(shape, np.nan)
    looks_done = np.zeros(n_studies, dtype=np.int16)
    waiting = np.zeros(n_studies, dtype=bool)  # a look this study cannot take yet stops its later looks too
    for k, n in enumerate(schedule):
        if n > n_cols:
            break
        active = state == CONTINUE
        ready = ~waiting & (active.any(axis=1)) & ((n_pairs >= n) | ~active).all(axis=1)
        waiting |= ~ready
        evaluating = active & ready[:, None]
        if not evaluating.any():
            break
        looks_done[ready] = k + 1
        t = t_statistics(csum[:, :, n - 1], csq[:, :, n - 1], n)
        look[evaluating] = k + 1
        t_out[evaluating] = t[evaluating]
        for _ in range(m):  # Holm within the look: a rejection lowers the others' boundaries
            n_rejected = np.isin(state, (BETTER, WORSE)).sum(axis=1)
            bound = table[np.minimum(n_rejected, m - 1), k][:, None] * np.ones((1, m))
            bound_out[evaluating] = bound[evaluating]
            cross = evaluating & (np.abs(t) >= bound)
            if not cross.any():
                break
            state[cross] = np.where(t[cross] < 0, BETTER, WORSE)
            evaluating &= ~cross
        if k == len(schedule) - 1:
            state[evaluating] = EXHAUSTED
            cp_out[evaluating] = np.nan  # no later look to cross at
        elif design.futility > 0 and evaluating.any():
            n_rejected = np.isin(state, (BETTER, WORSE)).sum(axis=1)
            final = table[np.minimum(n_rejected, m - 1), -1][:, None] * np.ones((1, m))
            cp = conditional_power(t, n, design.max_seeds, final)
            cp_out[evaluating] = cp[evaluating]
            state[evaluating & (cp < design.futility)] = FUTILE
    return Decisions(state, look, t_out, bound_out, cp_out, looks_done)


def error_rates(design: Design, *, n_studies: int, effect: float = 0.0, sd: float = 1.0, m: int = 1,
                rule: str = "sequential", seed: int = 0) -> float:
    """Share of simulated studies in which some primary comparison crossed (under effect 0:
    the family-wise false-positive rate; else the power to detect ``effect``), with paired
    normal differences of SD ``sd`` grown look by look to the design's maximum."""
    rng = np.random.default_rng(seed)
    diffs = rng.normal(effect, sd, size=(n_studies, m, design.max_seeds))
    decisions = sequential_decisions(diffs, design, rule=rule)
    if effect == 0:
        return float(decisions.rejected().mean())
    wanted = BETTER if effect < 0 else WORSE
    return float((decisions.state == wanted).any(axis=1).mean())


@dataclass(frozen=True)
class ComparisonDecision:
    """Where one primary comparison of a real study stands."""

    variant: str
    n_pairs: int  # pairs used at the look it stands at
    look: int  # 1-based look it was decided at or last evaluated (0: none yet)
    n_looks: int
    t: float
    boundary: float
    conditional_power: float
    state: int

    @property
    def state_name(self) -> str:
        return STATE_NAMES[self.state]

    @property
    def decided(self) -> bool:
        return self.state != CONTINUE


def decide_study(design: Design, diffs: dict[str, list[float]]) -> tuple[list[ComparisonDecision], int]:
    """The primary comparisons of one study (``diffs[variant]``: its paired differences in
    the order their seeds were added) through :func:`sequential_decisions`; also the number of
    looks taken. Pairs beyond the design's maximum are not used."""
    m, width = len(design.primary), design.max_seeds
    arr = np.full((1, m, width), np.nan)
    n_pairs = np.zeros((1, m), dtype=int)
    for i, variant in enumerate(design.primary):
        values = list(diffs.get(variant, []))[:width]
        arr[0, i, :len(values)] = values
        n_pairs[0, i] = len(values)
    dec = sequential_decisions(arr, design, n_pairs)
    out = []
    for i, variant in enumerate(design.primary):
        look = int(dec.look[0, i])
        out.append(ComparisonDecision(variant, design.schedule[look - 1] if look else int(n_pairs[0, i]), look,
                                      design.n_looks, float(dec.t[0, i]), float(dec.boundary[0, i]),
                                      float(dec.conditional_power[0, i]), int(dec.state[0, i])))
    return out, int(dec.looks_done[0])


def next_look_pairs(design: Design, looks_done: int) -> int | None:
    """Seed pairs the next look needs, None after the last."""
    return design.schedule[looks_done] if looks_done < design.n_looks else None
