"""Cells: one setting of every trial parameter of a space but the seed.

A grid space expands into every cell x seed; a sampled space is checked at the corners of
its ranges. ``cell_key`` is the identity that lets many workers agree a run is the same
run; ``cell_label`` and ``cell_slug`` are how a cell is shown and where its files go.
"""

from __future__ import annotations

import itertools
import json
import re
from typing import Any, Mapping, Sequence


def cell_key(params: Mapping[str, Any]) -> str:
    """A stable identity for a cell x seed: trials with the same key are the same run."""
    return json.dumps(dict(params), sort_keys=True, separators=(",", ":"))


def expand(choices: Mapping[str, Sequence[Any]]) -> list[dict[str, Any]]:
    """Every combination of the categorical choices, in suggestion order."""
    return [dict(zip(choices, combo)) for combo in itertools.product(*choices.values())]


def corners(choices: Mapping[str, Sequence[Any]], ranges: Mapping[str, tuple[Any, Any]]) -> list[dict[str, Any]]:
    """For sampled spaces: every categorical combination with each range at both ends."""
    return [base | dict(zip(ranges, corner))
            for base in expand(choices) for corner in itertools.product(*ranges.values())]


def distinct_runs(cells: Sequence[Mapping[str, Any]]) -> list[dict[str, Any]]:
    """One cell per setting of everything but the seed (a seed never makes a run invalid)."""
    seen: set[str] = set()
    out = []
    for params in cells:
        key = cell_key({k: v for k, v in params.items() if k != "seed"})
        if key not in seen:
            seen.add(key)
            out.append(dict(params))
    return out


def cell_label(params: Mapping[str, Any], *, seed: bool = True) -> str:
    """``variant=full lr=0.001 seed=1``: how a cell is shown to a person."""
    return " ".join(f"{k}={v}" for k, v in params.items() if seed or k != "seed")


def cell_slug(params: Mapping[str, Any]) -> str:
    """A folder name for the cell x seed (safe on every file system, at most 120 characters)."""
    text = "_".join(f"{k}-{v}" for k, v in params.items())
    return re.sub(r"[^A-Za-z0-9._=-]+", "-", text)[:120]
