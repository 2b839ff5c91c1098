"""The ``attnres-search`` command line. Each command group lives in its own module; heavy
imports (torch, lightning, optuna) happen inside the commands so ``--help`` stays instant.

Exit codes: 0 ok, 1 failure, 2 bad input (click's own usage errors are 2 as well).
"""

from __future__ import annotations

import click

from attnres_search.cli.bench_cmd import bench
from attnres_search.cli.errors import run_guarded
from attnres_search.cli.model_cmd import model


@click.group(context_settings={"help_option_names": ["-h", "--help"]})
@click.version_option(package_name="attnres-search")
def cli() -> None:
    """Find out whether Attention Residuals beat standard residuals on your GPUs and data."""


cli.add_command(model)
cli.add_command(bench)


def main() -> None:
    run_guarded(cli)
