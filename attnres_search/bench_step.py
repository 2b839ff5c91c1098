"""Placeholder for `attnres-search bench step` (filled in by its issue)."""

import click


@click.command()
def command() -> None:
    """Not implemented yet."""
    raise click.ClickException("bench step is not implemented yet")
