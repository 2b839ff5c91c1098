"""The CLI's one place for terminal output: the rich consoles and the display helpers.

Data goes to stdout (tables a user may pipe or redirect), progress and messages to stderr,
so ``attnres-search report NAME --format csv > r.csv`` stays clean while bars are drawn.
"""

from __future__ import annotations

import sys
from functools import lru_cache

from rich.console import Console


@lru_cache(maxsize=None)
def stdout_console() -> Console:
    """Console for results. Off a terminal, a wide fixed width so piped tables never wrap."""
    return Console() if sys.stdout.isatty() else Console(width=200)


@lru_cache(maxsize=None)
def stderr_console() -> Console:
    """Console for progress bars and status lines."""
    return Console(stderr=True)


def reset() -> None:
    """Forget the cached consoles (tests swap ``sys.stdout``/``sys.stderr`` under us)."""
    stdout_console.cache_clear()
    stderr_console.cache_clear()


def error(message: str) -> None:
    """One ``error: ...`` line on stderr, the form every failure message takes."""
    print(f"error: {message}", file=sys.stderr)
