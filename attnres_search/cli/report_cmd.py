"""``attnres-search report``: a study's results beside the paper's, with statistics."""

from __future__ import annotations

from typing import TYPE_CHECKING

import click

from attnres_search.cli.study_cmd import open_handle, storage_option
from attnres_search.cli.terminal import stdout_console
from attnres_search.reports.stats import ADJUSTMENTS, TESTS
from attnres_search.reports.tables import FORMATS
from attnres_search.study.space import KINDS

if TYPE_CHECKING:
    from attnres_search.reports.records import StudyRecords
    from attnres_search.reports.tables import Report
    from attnres_search.study.handle import StudyHandle


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
@click.option("--adjust", type=click.Choice(ADJUSTMENTS), default="holm", show_default=True,
              help="Adjust the p-values for the number of variants compared (Holm), or not; verdicts use it.")
@click.option("--note", "save_note", is_flag=True,
              help="Also save the report (Markdown) as the study's note in optuna-dashboard, with a forest plot "
                   "of Δ and the mean loss curves as its figures (writes to the storage).")
@storage_option
def report(name: str, kind_arg: str | None, kind: str | None, fmt: str, plots: str | None, test: str, alpha: float,
           adjust: str, save_note: bool, storage: str | None) -> None:
    """Report on study NAME: every variant against the baseline over seeds, with the paper's figures."""
    if kind_arg and kind and kind_arg != kind:
        raise click.BadParameter(f"KIND {kind_arg} and --kind {kind} disagree", param_hint="--kind")
    from attnres_search.reports.records import load_records

    handle = open_handle(name, storage, "write" if save_note else "read")
    records = load_records(handle.study, handle.space)  # read once, for the looks, the report and the note
    _record_due_looks(handle, records, storage)
    built = emit_report(handle, kind=kind or kind_arg, fmt=fmt, plots=plots, test=test, alpha=alpha, adjust=adjust,
                        records=records)
    if save_note:
        from attnres_search.reports.dashboard import publish

        published = publish(handle.study, built, records)
        click.echo(f"saved the report as the note of study {name}, with {len(published.figures)} figure(s) "
                   "(optuna-dashboard shows them on the study's page)", err=True)


def _record_due_looks(handle: "StudyHandle", records: "StudyRecords", storage: str | None) -> None:
    """A report that gives a sequential verdict takes a look: looks the data reached and the
    storage does not record yet are written, and ``records`` then carries them (a finished
    study's are all recorded already, so re-rendering it opens nothing for writing)."""
    from attnres_search.study.looks import due_looks, record_looks, recorded_looks

    design = records.space.design
    if design is None or not due_looks(handle.study, records):
        return
    writer = open_handle(handle.name, storage, "write")
    for look in record_looks(writer.study, records, by="report"):
        click.echo(f"study {handle.name}: recorded look {look['look']} of {design.n_looks} ({look['pairs']} pairs)",
                   err=True)
    records.looks = [dict(x) for x in recorded_looks(writer.study)]


def emit_report(handle: "StudyHandle", *, kind: str | None = None, fmt: str = "table",
                plots: str | None = None, test: str = "t", alpha: float = 0.05, adjust: str = "holm",
                records: "StudyRecords | None" = None) -> "Report":
    """Build, print (stdout) and optionally plot the report of an open study (from
    ``records`` when the caller has read them already)."""
    from attnres_search.reports.build import build_report
    from attnres_search.reports.records import load_records
    from attnres_search.reports.tables import render, rich_renderables

    if records is None:
        records = load_records(handle.study, handle.space)
    st = handle.status()
    note = None
    if st.remaining:
        note = f"study incomplete: {st.done} of {st.total} runs done ({st.running} running, {st.failed} failed)"
    built = build_report(records, handle.name, kind or handle.space.kind, test=test, alpha=alpha, adjust=adjust,
                         progress_note=note)
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
    return built
