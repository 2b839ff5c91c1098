"""Placeholder for `attnres-search bench kernels` (filled in by its issue)."""

import click


@click.command()
def command() -> None:
    """Not implemented yet."""
    raise click.ClickException("bench kernels is not implemented yet")
