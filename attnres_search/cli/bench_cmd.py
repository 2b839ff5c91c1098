"""``attnres-search bench kernels|step|profile``: benchmarks that print ratios measured side by side."""

from __future__ import annotations

import click

from attnres_search.bench.kernels import command as kernels_command
from attnres_search.bench.profile import command as profile_command
from attnres_search.bench.step import command as step_command


@click.group()
@click.pass_context
def bench(ctx: click.Context) -> None:
    """Side-by-side benchmarks (timing targets live here, never in tests)."""
    from attnres_search.cli.terminal import stdout_console

    ctx.obj = stdout_console()  # the benches print through the CLI's console


bench.add_command(kernels_command, "kernels")
bench.add_command(step_command, "step")
bench.add_command(profile_command, "profile")
