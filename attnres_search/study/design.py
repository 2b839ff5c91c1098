"""A study's pre-registered sequential design: which comparisons decide it, at what level,
how far it may grow and when it looks.

A design is fixed when the study is created (the ``design:`` key of the space file, stored
with the space), because an error rate is only controlled for a plan made before the data
were seen. The look schedule follows from it: the first look at the space's starting seeds,
then one look after every ``step`` seeds added, up to ``max_seeds`` pairs::

    design:
      primary: [full, block-s4]   # variants compared with the baseline; verdicts and Holm run over these only
      alpha: 0.05                 # family-wise type-I error over all primary comparisons and all looks
      max_seeds: 8                # the most seed pairs a primary comparison may grow to
      step: 1                     # seeds added per look (``study extend --until-decided``)
      spending: obrien-fleming    # Lan-DeMets alpha-spending: obrien-fleming | pocock
      futility: 0.1               # non-binding: stop a comparison whose conditional power is below this (0: never)
      start: 3                    # seed pairs at the first look; default: the space's seed count, written
                                  # into the stored space when the study is created (extending adds seeds)

The statistics that use it live in :mod:`attnres_search.reports.sequential`.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Any

SPENDING = ("obrien-fleming", "pocock")
DESIGN_KEYS = ("primary", "alpha", "max_seeds", "step", "spending", "futility", "start")


@dataclass(frozen=True)
class Design:
    """A validated design. ``start`` is the number of seeds every cell runs at creation (the
    first look); the looks are ``start, start + step, ...`` capped at ``max_seeds``."""

    primary: tuple[str, ...]
    alpha: float
    max_seeds: int
    step: int
    spending: str
    futility: float
    start: int

    @property
    def schedule(self) -> tuple[int, ...]:
        """The number of seed pairs at each planned look."""
        looks = list(range(self.start, self.max_seeds, self.step)) + [self.max_seeds]
        return tuple(looks)

    @property
    def n_looks(self) -> int:
        return len(self.schedule)

    def describe(self) -> str:
        looks = ", ".join(map(str, self.schedule))
        fut = f"non-binding futility below {self.futility:g} conditional power" if self.futility else "no futility stop"
        return (f"sequential design: primary {', '.join(self.primary)} vs the baseline; family-wise α {self.alpha:g} "
                f"(Holm over {len(self.primary)}); {self.n_looks} looks at {looks} seed pairs; "
                f"{self.spending} alpha spending (Lan-DeMets), t boundaries calibrated by simulation; {fut}")


def parse_design(data: Any, variants: tuple[str, ...], baseline: str, n_seeds: int) -> Design:
    """Validate the ``design`` mapping of a space whose variants, baseline and starting seed
    count are known; errors name the key."""
    if not isinstance(data, dict):
        raise ValueError(f"design must be a mapping with {', '.join(DESIGN_KEYS)}; got {data!r}")
    unknown = [k for k in data if k not in DESIGN_KEYS]
    if unknown:
        raise ValueError(f"design: unknown key {unknown[0]!r}; known: {', '.join(DESIGN_KEYS)}")
    primary = data.get("primary")
    if not isinstance(primary, list) or not primary or not all(isinstance(p, str) for p in primary):
        raise ValueError("design.primary must be a non-empty list of variant names")
    for name in primary:
        if name not in variants:
            raise ValueError(f"design.primary: no variant {name!r}; variants: {', '.join(variants)}")
        if name == baseline:
            raise ValueError(f"design.primary: {name!r} is the baseline; list the variants compared with it")
    if len(set(primary)) != len(primary):
        raise ValueError("design.primary lists a variant twice")
    alpha = _number(data.get("alpha", 0.05), "design.alpha")
    if not 0 < alpha < 0.5:
        raise ValueError(f"design.alpha must lie in (0, 0.5), got {alpha!r}")
    max_seeds = _integer(data.get("max_seeds"), "design.max_seeds")
    n_seeds = _integer(data.get("start", n_seeds), "design.start")
    if n_seeds < 2:
        raise ValueError(f"design: the space's seeds give the first look {n_seeds} pair(s); a paired t-test needs 2")
    if max_seeds < n_seeds:
        raise ValueError(f"design.max_seeds ({max_seeds}) is below the {n_seeds} seeds every cell starts with")
    step = _integer(data.get("step", 1), "design.step")
    if step < 1:
        raise ValueError(f"design.step must be at least 1, got {step}")
    spending = data.get("spending", "obrien-fleming")
    if spending not in SPENDING:
        raise ValueError(f"design.spending must be one of {', '.join(SPENDING)}; got {spending!r}")
    futility = _number(data.get("futility", 0.1), "design.futility")
    if not 0 <= futility < 1:
        raise ValueError(f"design.futility must lie in [0, 1), got {futility!r}")
    return Design(tuple(primary), float(alpha), max_seeds, step, spending, float(futility), n_seeds)


def _number(value: Any, where: str) -> float:
    if isinstance(value, str):
        try:
            value = float(value)
        except ValueError:
            raise ValueError(f"{where} must be a number, got {value!r}") from None
    if isinstance(value, bool) or not isinstance(value, (int, float)) or not math.isfinite(value):
        raise ValueError(f"{where} must be a finite number, got {value!r}")
    return float(value)


def _integer(value: Any, where: str) -> int:
    if isinstance(value, bool) or not isinstance(value, int):
        raise ValueError(f"{where} must be an integer, got {value!r}")
    return value
