"""``attnres-search demo``: the whole pipeline in a few CPU minutes. It runs
``demo_ablation`` (a short cut of the committed CPU ablation: baseline, Full and Block
AttnRes, two seeds each) as an Optuna study in ./studies.db, resuming it if it is already
there, and prints its report, whose power columns say what it would take to detect a
difference at this scale.
The study is opened once and the same handle feeds the worker and the report."""

from __future__ import annotations

import click

from attnres_search.cli.study_cmd import quiet_option, quiet_optuna, run_and_summarize

DEMO_STUDY = "demo-ablation"
DEMO_SPACE = "demo_ablation"


@click.command()
@click.option("--storage", default="sqlite:///studies.db", show_default=True, metavar="URL",
              help="Where the demo study lives.")
@quiet_option
def demo(storage: str, quiet: bool) -> None:
    """Run a short cut of the CPU ablation (a few minutes on a CPU) and print its report."""
    from attnres_search.cli.report_cmd import emit_report
    from attnres_search.study.handle import open_or_create_study
    from attnres_search.study.space_file import load_space

    quiet_optuna()
    space = load_space(DEMO_SPACE)
    handle, created = open_or_create_study(space, DEMO_STUDY, storage)
    if not quiet:
        if created:
            click.echo(f"study {DEMO_STUDY} created in {handle.shown_url}: {len(space.cells())} runs of {DEMO_SPACE}",
                       err=True)
        else:
            click.echo(f"resuming study {DEMO_STUDY} in {handle.shown_url}", err=True)
    run_and_summarize(handle, n_trials=None, quiet=quiet, requeue_failed=True)
    emit_report(handle)
    if not quiet:
        click.echo("\nAt demo scale (2 seeds, 256k tokens) the intervals are far wider than any effect the paper "
                   "reports: read the MDE and 'seeds for Δ' columns, and results/cpu_ablation/ in the repository "
                   "for an hour of the same machine.", err=True)
        click.echo(f"next: `attnres-search dashboard --storage {storage}` to browse it, "
                   f"`attnres-search report {DEMO_STUDY} --plots figures` for PNGs", err=True)
