"""The report's depth-mixing section: per variant, what its effective mixing matrix M says
(effective depth, weight on the embedding, distance from uniform, spread over tokens) and
the depth-wise attention sinks of AttnRes rules, from each trial's final diagnostics.

Studies run before M was recorded have no ``mixing`` in their diagnostics: the section is
then left out, so their committed reports render as before.
"""

from __future__ import annotations

import math
from collections import Counter
from statistics import fmean
from typing import Any

from attnres_search.reports.records import StudyRecords, TrialRecord
from attnres_search.reports.tables import Column, Report, Row, Table, key, num
from attnres_search.residual.mixing import SINK_K, SINK_P, summarize
from attnres_search.training.diagnostics import sublayer_names


def final_snapshot(rec: TrialRecord) -> dict[str, Any]:
    summary = rec.get("diagnostics_summary")
    return summary if isinstance(summary, dict) else {}


def point_name(point: int, n_sublayers: int) -> str:
    """``attn1, mlp1, ...`` for the sublayers' inputs, ``head`` for the last point."""
    return "head" if point == n_sublayers else sublayer_names(n_sublayers)[point]


def sink_counts(snapshots: list[dict[str, Any]]) -> tuple[Counter, dict[tuple[int, int], dict[str, Any]], int]:
    """Over the seeds that searched for sinks: how many flagged each (point, source), one
    flagged entry per pair (label, members), and how many seeds searched."""
    counts: Counter = Counter()
    entries: dict[tuple[int, int], dict[str, Any]] = {}
    searched = 0
    for snap in snapshots:
        sinks = snap.get("sinks")
        if not isinstance(sinks, dict):
            continue
        searched += 1
        for s in sinks.get("flagged", []):
            pair = (s["point"], s["source"])
            counts[pair] += 1
            entries.setdefault(pair, s)
    return counts, entries, searched


def majority_sinks(snapshots: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """The sinks flagged in at least half of the seeds (what the heatmaps mark)."""
    counts, entries, searched = sink_counts(snapshots)
    return [entries[pair] for pair, n in sorted(counts.items()) if searched and 2 * n >= searched]


def _sinks_text(snapshots: list[dict[str, Any]], n_sublayers: int) -> str | None:
    counts, entries, searched = sink_counts(snapshots)
    if not searched:
        return None  # not an AttnRes rule: nothing to sink into
    if not counts:
        return "none"
    return ", ".join(f"{point_name(p, n_sublayers)}←{entries[(p, j)]['label']} ({n}/{searched})"
                     for (p, j), n in sorted(counts.items()))


def _mean(values: list[float]) -> float | None:
    finite = [v for v in values if isinstance(v, (int, float)) and math.isfinite(v)]
    return fmean(finite) if finite else None


def mixing_rows(records: StudyRecords) -> list[Row]:
    rows = []
    for group in records.groups():
        for variant in records.variants():
            snaps = [final_snapshot(r) for r in records.select(variant, group)]
            snaps = [s for s in snaps if isinstance(s.get("mixing"), dict)]
            if not snaps:
                continue
            summaries = [summarize(s["mixing"]["mean"], s["mixing"].get("std")) for s in snaps]
            n_sub = len(snaps[0]["mixing"]["mean"]) - 1
            row: Row = {"variant": variant, **dict(group), "n": len(snaps), "sublayers": n_sub,
                        "effective_depth": _mean([s.effective_depth for s in summaries]),
                        "embedding_share": _mean([s.embedding_share for s in summaries]),
                        "distance_from_uniform": _mean([s.distance_from_uniform for s in summaries]),
                        "spread": _mean([s.spread for s in summaries]),
                        "row_sum": _mean([fmean(sum(r) for r in s["mixing"]["mean"]) for s in snaps]),
                        "sinks": _sinks_text(snaps, n_sub)}
            rows.append(row)
    return rows


def add_mixing_section(report: Report, records: StudyRecords) -> None:
    """Append the depth-mixing table and its notes (nothing when no trial recorded M)."""
    rows = mixing_rows(records)
    if not rows:
        return
    group_keys = list(dict.fromkeys(k for group in records.groups() for k, _ in group))
    cols = [Column("Variant", key("variant"), "left")] + [Column(k, key(k)) for k in group_keys] + [
        Column("n", key("n")),
        Column("Eff. depth", key("effective_depth", lambda v: num(v, 2))),
        Column("Emb. share", key("embedding_share", lambda v: num(v, 3))),
        Column("Dist. from uniform", key("distance_from_uniform", lambda v: num(v, 3))),
        Column("Token spread", key("spread", lambda v: num(v, 3))),
        Column("Mean row sum", key("row_sum", lambda v: num(v, 2))),
        Column(f"Sinks (k={SINK_K:g}, p={SINK_P:g})", key("sinks"), "left"),
    ]
    report.tables.append(Table("mixing", "Effective depth-mixing matrix M (final step, mean over seeds)", cols, rows))
    report.notes += [
        "M: h_l = Σ_i M_{i→l} v_i over the embedding v_0 and every sublayer output v_i, as each rule forms it "
        "(unrolled through streams, gates and blocks; mean over validation tokens); the table reads its rows as "
        "distributions |M| / Σ|M| and averages over the layers that read two or more sources: eff. depth = "
        "weight-averaged distance (in sublayers) from a layer to its sources (uniform over l + 1 sources: "
        "(l + 2)/2; only the newest: 1), emb. share = weight on v_0, dist. from uniform = total variation "
        "distance to equal weights, token spread = Σ std over tokens / Σ |M| (0 when M does not depend on the "
        "input), mean row sum = unnormalised scale (baseline l + 1, softmax AttnRes 1)",
        f"sinks (AttnRes rules): a source whose share of a layer's weight exceeds {SINK_K:g}× uniform on at least "
        f"{SINK_P:.0%} of the validation tokens, in how many seeds; twice the fair share is beyond token noise, "
        "90% is \"whatever the input\"; a layer reading one or two sources cannot show one; — : not an AttnRes "
        "rule",
    ]
