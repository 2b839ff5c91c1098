"""One place that turns exceptions into the CLI's exit codes and one-line messages."""

from __future__ import annotations

import sys

import click


class BadInput(click.ClickException):
    """Input the user can fix (a bad preset, space file, storage URL): exit code 2."""

    exit_code = 2


def run_guarded(group: click.Group) -> None:
    """Run ``group``; a ``ValueError`` from our own validation (including the library's
    :class:`attnres_search.errors.BadInput`) is bad input (exit 2), any
    other uncaught error is a failure (exit 1) reported on one line."""
    try:
        group.main(standalone_mode=False)
    except click.exceptions.Abort:
        click.echo("aborted", err=True)
        sys.exit(130)
    except click.UsageError as exc:
        exc.show()
        sys.exit(exc.exit_code)
    except click.ClickException as exc:
        click.echo(f"error: {exc.format_message()}", err=True)
        sys.exit(exc.exit_code)
    except click.exceptions.Exit as exc:
        sys.exit(exc.exit_code)
    except ValueError as exc:
        click.echo(f"error: {exc}", err=True)
        sys.exit(2)
    except KeyboardInterrupt:
        click.echo("interrupted", err=True)
        sys.exit(130)
    except Exception as exc:  # noqa: BLE001 - the CLI's last line of defence
        click.echo(f"error: {type(exc).__name__}: {exc}", err=True)
        sys.exit(1)
