"""Parsing of human-sized counts (``500k``, ``2M``, ``1.5B``), shared by the CLI options and
the YAML spaces so that both accept exactly the same spellings."""

from __future__ import annotations

import math
from typing import Any

SUFFIXES = {"k": 10**3, "m": 10**6, "b": 10**9, "g": 10**9}


def parse_count(value: Any, what: str = "value") -> int:
    """An integer from ``value`` (int, float or text with a k/M/B suffix).

    Raises ``ValueError`` naming ``what`` for text that is not a count and for non-finite
    numbers (``inf``, ``nan``), which would otherwise surface as ``OverflowError`` deep
    inside whatever consumed them.
    """
    if isinstance(value, bool):
        raise ValueError(f"{what} must be a number, got {value!r}")
    if isinstance(value, int):
        return value
    if isinstance(value, float):
        if not math.isfinite(value):
            raise ValueError(f"{what} must be a finite number, got {value!r}")
        return int(value)
    text = str(value).strip().lower().replace("_", "")
    scale = SUFFIXES.get(text[-1:], 1)
    number = text[:-1] if scale != 1 else text
    try:
        parsed = float(number)
    except ValueError:
        raise ValueError(f"{what}: {value!r} is not a count (examples: 500k, 2M, 1.5B)") from None
    if not math.isfinite(parsed):
        raise ValueError(f"{what} must be a finite number, got {value!r}")
    return int(parsed * scale)


def format_count(value: float) -> str:
    """The inverse spelling for display: 3 significant digits with a k/M/G/T/P suffix
    (1234567 -> ``1.23M``); zero and non-finite values as Python writes them."""
    if value == 0 or not math.isfinite(value):
        return str(value)
    exponent = min(5, max(0, int(math.log10(abs(value)) // 3)))
    return f"{value / 1000**exponent:.3g}{['', 'k', 'M', 'G', 'T', 'P'][exponent]}"
