"""Side-by-side benchmarks: ``bench kernels`` and ``bench step``."""

from __future__ import annotations

from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from rich.console import Console


def command_console() -> "Console":
    """The console the CLI put into click's context for this command (one console for the
    whole CLI, owned by ``attnres_search.cli.terminal``); a plain one when a bench command
    runs outside the CLI group."""
    import click
    from rich.console import Console

    ctx = click.get_current_context(silent=True)
    found = ctx.find_object(Console) if ctx is not None else None
    return found if found is not None else Console()
