"""The ``attnres-search`` command line. Each command group lives in its own module; heavy
imports (torch, lightning, optuna) happen inside the commands so ``--help`` stays instant.

Exit codes: 0 ok, 1 failure, 2 bad input (click's own usage errors are 2 as well).
"""

from __future__ import annotations

import click

from attnres_search.cli.bench_cmd import bench
from attnres_search.cli.dashboard_cmd import dashboard
from attnres_search.cli.demo_cmd import demo
from attnres_search.cli.errors import run_guarded
from attnres_search.cli.extend_cmd import extend
from attnres_search.cli.model_cmd import model
from attnres_search.cli.report_cmd import report
from attnres_search.cli.spaces_cmd import spaces
from attnres_search.cli.study_cmd import study
from attnres_search.cli.train_cmd import plot, train
from attnres_search.cli.worker_cmd import launch, worker


@click.group(context_settings={"help_option_names": ["-h", "--help"]})
@click.version_option(package_name="attnres-search")
def cli() -> None:
    """Find out whether Attention Residuals beat standard residuals on your GPUs and data."""


for command in (train, plot, study, worker, launch, report, spaces, dashboard, demo, model, bench):
    cli.add_command(command)
study.add_command(extend)


def main() -> None:
    run_guarded(cli)
