"""A report is a few tables plus notes; this module renders one as a rich table, CSV,
JSON or Markdown.

Rows hold raw values (floats at full precision, None for "not available"); columns say
how a human format shows them. CSV and JSON carry the raw values of every row key, so a
script reading them never parses "1.766 ± 0.012".
"""

from __future__ import annotations

import csv
import io
import json
import math
from dataclasses import dataclass, field
from typing import Any, Callable

FORMATS = ("table", "csv", "json", "markdown")
Row = dict[str, Any]


@dataclass(frozen=True)
class Column:
    header: str
    show: Callable[[Row], str]
    justify: str = "right"


@dataclass
class Table:
    name: str  # machine name (JSON key, CSV section)
    title: str
    columns: list[Column]
    rows: list[Row]
    # A second human view of another table's rows (named here): the rich table and Markdown
    # show it, CSV and JSON skip it, since those already carry every key of the rows it shows.
    view_of: str | None = None


@dataclass
class Report:
    title: str
    kind: str
    study: str
    tables: list[Table] = field(default_factory=list)
    notes: list[str] = field(default_factory=list)


# ----------------------------------------------------------------------------- value format

def num(value: Any, digits: int = 4) -> str:
    if value is None or (isinstance(value, float) and math.isnan(value)):
        return "—"
    return f"{value:.{digits}f}"


def signed(value: Any, digits: int = 4) -> str:
    if value is None or (isinstance(value, float) and math.isnan(value)):
        return "—"
    return f"{value:+.{digits}f}"


def sci(value: Any) -> str:
    if value is None or (isinstance(value, float) and math.isnan(value)):
        return "—"
    return f"{value:.3g}"


def count(value: Any) -> str:
    """Parameter counts and the like: 80.1k, 1.23M, 2.30B."""
    if value is None:
        return "—"
    for scale, suffix in ((1e9, "B"), (1e6, "M"), (1e3, "k")):
        if abs(value) >= scale:
            return f"{value / scale:.3g}{suffix}"
    return f"{value:.3g}" if isinstance(value, float) else str(value)


def pvalue(value: Any) -> str:
    if value is None or (isinstance(value, float) and math.isnan(value)):
        return "—"
    return f"{value:.4f}" if value >= 1e-4 else f"{value:.1e}"


def mean_ci(mean_key: str, half_key: str, digits: int = 4, sign: bool = False) -> Callable[[Row], str]:
    """'mean ± half-width' of two row keys (just the mean when the interval is unknown)."""
    fmt = signed if sign else num

    def show(row: Row) -> str:
        half = row.get(half_key)
        if half is None or (isinstance(half, float) and math.isnan(half)):
            return fmt(row.get(mean_key), digits)
        return f"{fmt(row.get(mean_key), digits)} ± {half:.{digits}f}"

    return show


def key(name: str, fmt: Callable[[Any], str] = str) -> Callable[[Row], str]:
    return lambda row: "—" if row.get(name) is None else fmt(row.get(name))


# -------------------------------------------------------------------------------- renderers

def render(report: Report, fmt: str) -> str:
    """The report as text in ``fmt`` (``table`` is rich's rendering, without colour)."""
    if fmt not in FORMATS:
        raise ValueError(f"format must be one of {', '.join(FORMATS)}; got {fmt!r}")
    return {"table": render_rich_text, "csv": render_csv, "json": render_json, "markdown": render_markdown}[fmt](report)


def rich_renderables(report: Report) -> list[Any]:
    from rich.table import Table as RichTable
    from rich.text import Text

    out: list[Any] = [Text(report.title, style="bold")]
    for table in report.tables:
        rich_table = RichTable(title=table.title, title_justify="left", header_style="bold")
        for col in table.columns:
            rich_table.add_column(col.header, justify=col.justify)  # type: ignore[arg-type]
        for row in table.rows:
            rich_table.add_row(*(col.show(row) for col in table.columns))
        out.append(rich_table)
    out.extend(Text(f"• {note}") for note in report.notes)
    return out


def render_rich_text(report: Report, width: int = 200) -> str:
    from rich.console import Console

    console = Console(width=width, record=True, file=io.StringIO(), color_system=None)
    for item in rich_renderables(report):
        console.print(item)
    return console.export_text()


def _columns(rows: list[Row]) -> list[str]:
    names: dict[str, None] = {}
    for row in rows:
        names.update(dict.fromkeys(row))
    return list(names)


def _plain(value: Any) -> Any:
    if isinstance(value, float) and math.isnan(value):
        return None
    return value


def _data_tables(report: Report) -> list[Table]:
    return [t for t in report.tables if t.view_of is None]


def render_csv(report: Report) -> str:
    """One CSV block per table; with several tables each starts with a ``# name`` line."""
    out = io.StringIO()
    tables = _data_tables(report)
    for i, table in enumerate(tables):
        if len(tables) > 1:
            out.write(("\n" if i else "") + f"# {table.name}\n")
        names = _columns(table.rows)
        writer = csv.DictWriter(out, fieldnames=names, lineterminator="\n")
        writer.writeheader()
        for row in table.rows:
            writer.writerow({k: _plain(row.get(k)) for k in names})
    return out.getvalue()


def render_json(report: Report) -> str:
    doc = {
        "title": report.title,
        "kind": report.kind,
        "study": report.study,
        "tables": {t.name: [{k: _plain(v) for k, v in row.items()} for row in t.rows] for t in _data_tables(report)},
        "notes": report.notes,
    }
    return json.dumps(doc, indent=2, default=str) + "\n"


def render_markdown(report: Report) -> str:
    lines = [f"## {report.title}", ""]
    for table in report.tables:
        lines += [f"### {table.title}", "", "| " + " | ".join(c.header for c in table.columns) + " |",
                  "|" + "|".join("---:" if c.justify == "right" else "---" for c in table.columns) + "|"]
        lines += ["| " + " | ".join(c.show(row).replace("|", "\\|") for c in table.columns) + " |" for row in table.rows]
        lines.append("")
    lines += [f"- {note}" for note in report.notes]
    return "\n".join(lines) + "\n"
