"""``attnres-search bench kernels|step``: benchmarks that print ratios measured side by side."""

from __future__ import annotations

import click

from attnres_search.bench.kernels import command as kernels_command
from attnres_search.bench.step import command as step_command


@click.group()
def bench() -> None:
    """Side-by-side benchmarks (timing targets live here, never in tests)."""


bench.add_command(kernels_command, "kernels")
bench.add_command(step_command, "step")
