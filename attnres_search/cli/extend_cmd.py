"""``attnres-search study extend``: grow a study until it decides, instead of starting over."""

from __future__ import annotations

from typing import TYPE_CHECKING

import click

from attnres_search.cli.options import time_limit_option
from attnres_search.cli.study_cmd import open_handle, quiet_option, storage_option

if TYPE_CHECKING:
    from attnres_search.study.handle import StudyHandle


def inconclusive_cells(handle: "StudyHandle") -> list[str]:
    """Cells whose report row is not yet decided, plus the baseline cells they are paired
    with (a new seed needs its baseline run to make a pair)."""
    from attnres_search.reports.build import build_report
    from attnres_search.reports.records import load_records
    from attnres_search.study.cells import cell_label, distinct_runs

    built = build_report(load_records(handle.study, handle.space), handle.name, handle.space.kind)
    rows = [row for table in built.tables if table.view_of is None for row in table.rows
            if row.get("verdict") == "inconclusive"]
    base = handle.space.baseline
    chosen: list[str] = []
    for params in distinct_runs(handle.space.base_cells()):
        cell = {k: v for k, v in params.items() if k != "seed"}
        for row in rows:
            same_group = all(row.get(k) == v for k, v in cell.items() if k != "variant" and k in row)
            if same_group and cell["variant"] in (row.get("variant"), base):
                label = cell_label(cell, seed=False)
                if label not in chosen:
                    chosen.append(label)
    return chosen


@click.command()
@click.argument("name")
@click.option("--seeds", "n_seeds", type=click.IntRange(min=1), default=None,
              help="How many new seeds to add (they continue after the largest seed used).")
@click.option("--inconclusive", is_flag=True,
              help="Only the cells whose report verdict is still inconclusive (and their baseline cells).")
@click.option("--cell", "cells", multiple=True, metavar="LABEL",
              help="Only this cell, by its label as `study status` shows it (e.g. 'variant=full'); repeatable.")
@click.option("--until-decided", is_flag=True,
              help="Studies with a sequential design: run what is queued, take the look, add the design's step of "
                   "seeds to the undecided primary cells and the baseline, and repeat until every primary "
                   "comparison is decided or at its maximum. Safe to kill and rerun.")
@click.option("--workers", "n_workers", type=click.IntRange(min=1), default=1, show_default=True,
              help="--until-decided: run each look's runs with this many CPU worker processes (1: in this process).")
@time_limit_option
@storage_option
@quiet_option
def extend(name: str, n_seeds: int | None, inconclusive: bool, cells: tuple[str, ...], until_decided: bool,
           n_workers: int, time_limit: float | None, storage: str | None, quiet: bool) -> None:
    """Queue K more seeds for every cell of study NAME (or only some cells); run them with
    `study resume`, `worker` or `launch`, and reports include them. With --until-decided,
    grow a study with a sequential design look by look until it decides."""
    from attnres_search.study.extend import extend_study

    if until_decided:
        if n_seeds is not None or inconclusive or cells:
            raise click.UsageError("--until-decided grows the study by its design's step: give no --seeds, "
                                   "--inconclusive or --cell with it")
        _until_decided(open_handle(name, storage, "write"), n_workers, quiet, time_limit)
        return
    if time_limit is not None:
        raise click.UsageError("--time-limit goes with --until-decided")
    if n_seeds is None:
        raise click.UsageError("give --seeds K (or --until-decided for a study with a sequential design)")
    if n_workers != 1:
        raise click.UsageError("--workers goes with --until-decided")
    if inconclusive and cells:
        raise click.UsageError("give --inconclusive or --cell, not both")
    handle = open_handle(name, storage, "write")
    chosen: list[str] | None = list(cells) if cells else None
    if inconclusive:
        if handle.space.design is not None:
            raise click.UsageError(f"study {name} has a sequential design: grow it with --until-decided, whose "
                                   "looks keep the error rate (re-testing inconclusive cells does not)")
        chosen = inconclusive_cells(handle)
        if not chosen:
            click.echo(f"study {name}: no inconclusive cell, nothing queued", err=True)
            return
    ext = extend_study(handle, n_seeds, chosen)
    click.echo(f"study {name}: seeds {', '.join(map(str, ext.seeds))} queued for {len(ext.cells)} cell(s), "
               f"{ext.queued} run(s); run them with `attnres-search study resume {name}`", err=True)


def _until_decided(handle: "StudyHandle", n_workers: int, quiet: bool, time_limit: float | None) -> None:
    import sys
    import time

    from attnres_search.cli.study_cmd import run_and_summarize
    from attnres_search.cli.terminal import stdout_console
    from attnres_search.study.until_decided import until_decided

    deadline = None if time_limit is None else time.monotonic() + time_limit
    stopped = {"by_limit": False}  # a worker stopped by the limit: it would not start a run that cannot finish

    def left_s() -> float | None:
        return None if deadline is None else deadline - time.monotonic()

    def out_of_time() -> bool:
        left = left_s()
        return left is not None and (left <= 1.0 or stopped["by_limit"])

    def run_pending(h: "StudyHandle") -> None:
        left = left_s()
        if n_workers == 1:
            summary = run_and_summarize(h, n_trials=None, quiet=quiet, requeue_failed=True, time_limit=left)
            stopped["by_limit"] = summary.time_limited
            return
        from attnres_search.study.launch import start_workers, supervise

        extra = [] if left is None else ["--time-limit", f"{max(1, int(left))}s"]
        rc = supervise(start_workers(h, gpus=None, n_cpu=n_workers, extra=extra), h, console=stdout_console(),
                       quiet=quiet)
        if rc:
            sys.exit(rc)
        # Workers given a limit exit 0 when no run fits the time left: runs left then mean out of time.
        stopped["by_limit"] = bool(extra) and bool(h.status().remaining)

    end = until_decided(handle, run_pending, echo=lambda line: click.echo(f"study {handle.name}: {line}", err=True),
                        out_of_time=out_of_time)
    if end.out_of_time:
        left = end.handle.status().remaining
        click.echo(f"study {handle.name}: time limit: look {end.looks_done + 1} of {handle.space.design.n_looks} "
                   f"has {left} run(s) left; rerun `study extend {handle.name} --until-decided` to continue", err=True)
        return
    states = ", ".join(f"{d.variant} {d.state_name}" for d in end.decisions)
    click.echo(f"study {handle.name}: look {end.looks_done} of {handle.space.design.n_looks}: {states}; "
               f"`attnres-search report {handle.name}` shows the verdicts", err=True)
