"""The study's answer on its optuna-dashboard page: the report as the study's note, and two
plotly figures, through optuna-dashboard's public API (``save_note``,
``save_plotly_graph_object``).

Optuna's stock study page shows a best trial and a hyperparameter importance in which the
seed, a replication index, ranks first: nothing there says what an ablation found. So when
a study finishes (any worker that completes its last run) and on ``report --note``, the
page gets

- the Markdown report (every variant against the baseline, with its interval, test, power
  and verdict) as the study's note, above everything else on the page;
- a forest plot of Δ against the baseline with its 95% interval (at equal tokens, FLOPs and
  wall-clock where known) beside the paper's Δ;
- the validation-loss curves of every variant, mean over seeds with a band from the lowest
  to the highest seed.

Figures are saved under fixed ids, so publishing again replaces them; the note keeps
optuna-dashboard's version history. The data helpers are the PNG figures' own
(:mod:`attnres_search.reports.variant_plots`), so both show the same numbers.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import TYPE_CHECKING

from attnres_search.reports.budgets import is_number, val_points
from attnres_search.reports.records import StudyRecords
from attnres_search.reports.tables import Report, Row, render
from attnres_search.reports.variant_plots import _cells, _group_text, _row_label, _tokens_per_step, mean_curve

if TYPE_CHECKING:
    import optuna
    import plotly.graph_objects as go

FOREST_ID = "attnres-forest"
LOSS_ID = "attnres-loss-curves"
FOREST_TITLE = "Δ validation loss vs baseline (95% CI), beside the paper's Δ"
LOSS_TITLE = "Validation loss, mean over seeds (band: lowest to highest seed)"
COMPARING_TABLES = ("variants", "block_sizes", "cells")  # the table whose rows carry Δ, by report kind


@dataclass(frozen=True)
class Published:
    """What :func:`publish` stored: the note's length and the figures' ids and titles."""

    note_chars: int
    figures: dict[str, str]  # graph object id -> title


def comparing_rows(report: Report) -> list[Row]:
    """The rows that compare variants with the baseline (the forest plot's rows)."""
    tables = {t.name: t.rows for t in report.tables}
    return next((tables[n] for n in COMPARING_TABLES if n in tables), [])


def forest_figure(report: Report, records: StudyRecords) -> "go.Figure | None":
    """Δ per comparing row with its 95% interval, at equal tokens and (where the report has
    them) equal FLOPs and wall-clock, and the paper's Δ as a diamond; None without any Δ.
    Each row is one band of the y axis, its series a little apart so none hides another."""
    import plotly.graph_objects as go

    group_keys = list(dict.fromkeys(k for group in records.groups() for k, _ in group))
    rows = [r for r in comparing_rows(report) if is_number(r.get("delta_mean"))]
    if not rows:
        return None
    fig = go.Figure()
    series = (("delta", "ours, equal tokens", "circle", 0.0), ("delta_flops", "ours, equal FLOPs", "square", 0.18),
              ("delta_time", "ours, equal wall-clock", "triangle-up", 0.36))
    for prefix, name, symbol, offset in series:
        points = [(i + offset, r[f"{prefix}_mean"], r.get(f"{prefix}_ci_half")) for i, r in enumerate(rows)
                  if is_number(r.get(f"{prefix}_mean"))]
        if not points:
            continue
        fig.add_trace(go.Scatter(
            x=[float(p[1]) for p in points], y=[p[0] for p in points], mode="markers", name=f"{name} (95% CI)",
            marker={"symbol": symbol, "size": 10 if offset == 0 else 8},
            error_x={"type": "data", "array": [float(p[2]) if is_number(p[2]) else 0.0 for p in points]}))
    paper = [(i - 0.18, float(r["paper_delta"])) for i, r in enumerate(rows) if is_number(r.get("paper_delta"))]
    if paper:
        fig.add_trace(go.Scatter(x=[p[1] for p in paper], y=[p[0] for p in paper], mode="markers", name="paper Δ",
                                 marker={"symbol": "diamond", "size": 11, "color": "crimson"}))
    fig.add_vline(x=0, line_width=1, line_color="black")
    fig.update_layout(title={"text": FOREST_TITLE}, legend={"orientation": "h", "y": -0.25},
                      xaxis_title="Δ validation loss vs baseline (nats/token; negative = better)",
                      yaxis={"autorange": "reversed", "tickvals": list(range(len(rows))),
                             "ticktext": [_row_label(r, group_keys) for r in rows], "zeroline": False},
                      height=260 + 45 * len(rows))
    return fig


def loss_curves_figure(records: StudyRecords) -> "go.Figure | None":
    """Every (variant, cell): the mean validation-loss curve over its seeds and a band from
    the lowest to the highest seed, against tokens trained (else the global step)."""
    import plotly.graph_objects as go

    cells = _cells(records)
    by_tokens = all(_tokens_per_step(r) for _, _, recs in cells for r in recs)
    several = len({g for g, _, _ in cells}) > 1
    fig = go.Figure()
    palette = ("#1f77b4", "#ff7f0e", "#2ca02c", "#d62728", "#9467bd", "#8c564b", "#e377c2", "#7f7f7f",
               "#bcbd22", "#17becf")
    drawn = 0
    for group, variant, recs in cells:
        curves = []
        for r in recs:
            scale = (_tokens_per_step(r) or 1.0) if by_tokens else 1.0
            points = val_points(r.attrs)
            curves.append(([p[0] * scale for p in points], [p[1] for p in points]))
        curve = mean_curve(curves)
        if curve is None:
            continue
        color = palette[drawn % len(palette)]
        label = f"{variant} {_group_text(group)}".strip() if several else variant
        x = [float(v) for v in curve.x]
        if curve.n > 1:
            fig.add_trace(go.Scatter(x=x + x[::-1], y=[float(v) for v in curve.high] + [float(v) for v in curve.low[::-1]],
                                     fill="toself", fillcolor=color, opacity=0.2, line={"width": 0},
                                     hoverinfo="skip", showlegend=False, legendgroup=label))
        fig.add_trace(go.Scatter(x=x, y=[float(v) for v in curve.mean], mode="lines+markers", name=f"{label} (n={curve.n})",
                                 line={"color": color}, marker={"size": 4}, legendgroup=label))
        drawn += 1
    if not drawn:
        return None
    fig.update_layout(title={"text": LOSS_TITLE}, xaxis_title="tokens trained" if by_tokens else "global step",
                      yaxis_title="validation loss (nats/token)", height=480)
    return fig


def note_markdown(report: Report) -> str:
    """The study's note: the report as Markdown, and what the figures below it are."""
    return (render(report, "markdown")
            + "\n\n*Below: the forest plot of Δ against the paper's Δ and the mean loss curves per variant. "
              "Each trial's parameters are its variant and seed (the seed replicates a run: ignore it in "
              "Hyperparameter Importance); its run.json and figures are its artifacts. Written by "
              "`attnres-search report --note`.*\n")


def publish(study: "optuna.Study", report: Report, records: StudyRecords) -> Published:
    """Store the report as ``study``'s note and its two figures as plotly graph objects
    (replacing earlier ones), through optuna-dashboard's public API. Writes to the storage."""
    from optuna_dashboard import save_note, save_plotly_graph_object

    body = note_markdown(report)
    save_note(study, body)
    figures: dict[str, str] = {}
    for graph_id, title, figure in ((FOREST_ID, FOREST_TITLE, forest_figure(report, records)),
                                    (LOSS_ID, LOSS_TITLE, loss_curves_figure(records))):
        if figure is not None:
            save_plotly_graph_object(study, figure, graph_object_id=graph_id)
            figures[graph_id] = title
    return Published(len(body), figures)


def publish_study(study: "optuna.Study", records: StudyRecords, study_name: str, kind: str) -> Published:
    """Build the study's report with the default statistics and publish it (what a worker
    does when it completes the study's last run)."""
    from attnres_search.reports.build import build_report

    return publish(study, build_report(records, study_name, kind), records)
