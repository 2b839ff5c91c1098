"""``attnres-search report``: a study's results beside the paper's, with statistics."""

from __future__ import annotations

import click

from attnres_search.cli.study_cmd import stdout_console, storage_option
from attnres_search.reports.stats import TESTS
from attnres_search.reports.tables import FORMATS
from attnres_search.study.space import KINDS


@click.command()
@click.argument("name")
@click.argument("kind_arg", metavar="[KIND]", required=False, type=click.Choice(KINDS))
@click.option("--kind", type=click.Choice(KINDS), default=None,
              help="Report kind [default: the kind recorded with the study].")
@click.option("--format", "fmt", type=click.Choice(FORMATS), default="table", show_default=True)
@click.option("--plots", type=click.Path(file_okay=False), default=None, help="Write PNG figures into this folder.")
@click.option("--test", type=click.Choice(TESTS), default="t", show_default=True,
              help="Paired test across seeds: t-test or Wilcoxon signed-rank.")
@click.option("--alpha", type=click.FloatRange(0, 1, min_open=True, max_open=True), default=0.05, show_default=True,
              help="Significance level of the verdicts.")
@storage_option
def report(name: str, kind_arg: str | None, kind: str | None, fmt: str, plots: str | None, test: str, alpha: float,
           storage: str | None) -> None:
    """Report on study NAME: every variant against the baseline over seeds, with the paper's figures."""
    if kind_arg and kind and kind_arg != kind:
        raise click.BadParameter(f"KIND {kind_arg} and --kind {kind} disagree", param_hint="--kind")
    emit_report(name, storage, kind=kind or kind_arg, fmt=fmt, plots=plots, test=test, alpha=alpha)


def emit_report(name: str, storage: str | None, *, kind: str | None = None, fmt: str = "table",
                plots: str | None = None, test: str = "t", alpha: float = 0.05) -> None:
    """Build, print (stdout) and optionally plot the report of a study."""
    from attnres_search.reports.build import build_report
    from attnres_search.reports.records import load_records
    from attnres_search.reports.tables import render, rich_renderables
    from attnres_search.study.storage import open_storage, resolve_url
    from attnres_search.study.core import load_study, study_status

    found, space = load_study(name, open_storage(resolve_url(storage)))
    records = load_records(found, space)
    st = study_status(found, space)
    note = None
    if st.remaining:
        note = f"study incomplete: {st.done} of {st.total} runs done ({st.running} running, {st.failed} failed)"
    built = build_report(records, name, kind or space.kind, test=test, alpha=alpha, progress_note=note)
    if fmt == "table":
        console = stdout_console()
        for item in rich_renderables(built):
            console.print(item)
    else:
        click.echo(render(built, fmt), nl=False)
    if plots:
        from attnres_search.reports.plots import write_plots

        paths = write_plots(built, records, plots)
        click.echo(f"wrote {len(paths)} figure(s) to {plots}", err=True)
