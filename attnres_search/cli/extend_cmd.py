"""``attnres-search study extend``: grow a study until it decides, instead of starting over."""

from __future__ import annotations

from typing import TYPE_CHECKING

import click

from attnres_search.cli.study_cmd import open_handle, storage_option

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
@click.option("--seeds", "n_seeds", type=click.IntRange(min=1), required=True,
              help="How many new seeds to add (they continue after the largest seed used).")
@click.option("--inconclusive", is_flag=True,
              help="Only the cells whose report verdict is still inconclusive (and their baseline cells).")
@click.option("--cell", "cells", multiple=True, metavar="LABEL",
              help="Only this cell, by its label as `study status` shows it (e.g. 'variant=full'); repeatable.")
@storage_option
def extend(name: str, n_seeds: int, inconclusive: bool, cells: tuple[str, ...], storage: str | None) -> None:
    """Queue K more seeds for every cell of study NAME (or only some cells); run them with
    `study resume`, `worker` or `launch`, and reports include them."""
    from attnres_search.study.extend import extend_study

    if inconclusive and cells:
        raise click.UsageError("give --inconclusive or --cell, not both")
    handle = open_handle(name, storage, "write")
    chosen: list[str] | None = list(cells) if cells else None
    if inconclusive:
        chosen = inconclusive_cells(handle)
        if not chosen:
            click.echo(f"study {name}: no inconclusive cell, nothing queued", err=True)
            return
    ext = extend_study(handle, n_seeds, chosen)
    click.echo(f"study {name}: seeds {', '.join(map(str, ext.seeds))} queued for {len(ext.cells)} cell(s), "
               f"{ext.queued} run(s); run them with `attnres-search study resume {name}`", err=True)
