"""Parsing of human-sized counts (``500k``, ``2M``, ``1.5B``), shared by the CLI options and
the YAML spaces so that both accept exactly the same spellings, and of durations (``90s``,
``1h30m``) for ``--time-limit``."""

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


_DURATION_UNITS = {"d": 86400.0, "h": 3600.0, "m": 60.0, "s": 1.0}
_DURATION_EXAMPLES = "examples: 90s, 10m, 1h30m, 2.5h, 1d, 1:30:00"


def parse_duration(value: Any, what: str = "duration") -> float:
    """Seconds from a human duration: unit-suffixed parts (``90s``, ``10m``, ``1h30m``,
    ``2.5h``, ``1d2h``) or a clock ``[H:]MM:SS`` (``1:30:00``).

    A bare number is refused rather than guessed: Slurm reads ``30`` as minutes, most
    tools as seconds, and a time limit off by 60x loses an allocation. Raises
    ``ValueError`` naming ``what`` for anything else, including zero and negative values.
    """
    import re

    text = str(value).strip().lower().replace(" ", "")
    seconds: float | None = None
    if re.fullmatch(r"\d+(:\d{1,2}){1,2}", text):
        parts = [int(p) for p in text.split(":")]
        if all(p < 60 for p in parts[1:]):
            seconds = float(sum(p * 60**i for i, p in enumerate(reversed(parts))))
    elif re.fullmatch(r"(\d+(\.\d+)?[dhms])+", text):
        units = [u for _, u in re.findall(r"(\d+(?:\.\d+)?)([dhms])", text)]
        if len(set(units)) == len(units) and units == sorted(units, key=list(_DURATION_UNITS).index):
            seconds = sum(float(n) * _DURATION_UNITS[u] for n, u in re.findall(r"(\d+(?:\.\d+)?)([dhms])", text))
    if seconds is None:
        hint = " (give a unit)" if re.fullmatch(r"\d+(\.\d+)?", text) else ""
        raise ValueError(f"{what}: {value!r} is not a duration{hint}; {_DURATION_EXAMPLES}")
    if not math.isfinite(seconds) or seconds <= 0:
        raise ValueError(f"{what} must be positive, got {value!r}")
    return seconds


def format_duration(seconds: float) -> str:
    """The inverse spelling for display, to the second: ``5400`` -> ``1h30m``, ``95`` -> ``1m35s``."""
    total = max(0, round(seconds))
    if total == 0:
        return "0s"
    out = ""
    for unit in ("d", "h", "m", "s"):
        size = int(_DURATION_UNITS[unit])
        count, total = divmod(total, size)
        if count:
            out += f"{count}{unit}"
    return out
