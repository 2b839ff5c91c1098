"""What a report says about a study's design: for a pre-registered sequential design, each
primary comparison's look, boundary and decision (:mod:`attnres_search.reports.sequential`)
and the exploratory label on the other rows; for a study without one, that its p-values and
verdicts are a single fixed-n test."""

from __future__ import annotations

import math
from typing import Any

from attnres_search.reports.records import StudyRecords
from attnres_search.reports.sequential import (BETTER, EXHAUSTED, FUTILE, WORSE, ComparisonDecision,
                                               decide_study)
from attnres_search.reports.stats import NO_FIGURE, OPPOSITE, REPRODUCED
from attnres_search.reports.tables import Column, Row, Table, key
from attnres_search.study.design import Design

PRIMARY, EXPLORATORY, BASELINE = "primary", "exploratory", "baseline"
FIXED_N_NOTE = ("fixed-n study: no pre-registered sequential design was recorded when it was created, so each p-value "
                "and verdict is one test at the seeds run; growing it with `study extend` and re-testing would "
                "inflate the error rate (optional stopping), so no sequential claim is made")


def paired_differences(records: StudyRecords, variant: str) -> list[float]:
    """Variant − baseline per seed both ran, in seed order (the order seeds are added)."""
    base = {r.seed: r.loss for r in records.select(records.space.baseline, ())}
    return [r.loss - base[r.seed] for r in records.select(variant, ()) if r.seed in base]


def study_decisions(records: StudyRecords) -> tuple[list[ComparisonDecision], int] | None:
    """The sequential decisions of a designed study's primary comparisons and the looks
    taken; None for a study without a design."""
    design = records.space.design
    if design is None:
        return None
    return decide_study(design, study_diffs(records))


def sequential_verdict(decision: ComparisonDecision, paper_delta: float | None) -> str:
    """Direction against the paper's when a boundary was crossed; else why there is none."""
    if decision.state in (BETTER, WORSE):
        if paper_delta is None or paper_delta == 0:
            return "variant better (decided)" if decision.state == BETTER else "variant worse (decided)"
        return REPRODUCED if (decision.state == BETTER) == (paper_delta < 0) else OPPOSITE
    if decision.state == FUTILE:
        return "no effect detectable (futility)"
    if decision.state == EXHAUSTED:
        return "no effect detectable (max reached)"
    return f"continue (look {decision.look} of {decision.n_looks})" if decision.look else "continue (no look yet)"


def apply_design(rows: list[Row], records: StudyRecords) -> None:
    """Label every row's role and, for a designed study, put each primary comparison's
    sequential state and verdict on its row (exploratory rows: verdict ``exploratory``)."""
    design = records.space.design
    base = records.space.baseline
    for row in rows:
        row["role"] = (BASELINE if row["variant"] == base else
                       PRIMARY if design is None or row["variant"] in design.primary else EXPLORATORY)
    found = study_decisions(records)
    if found is None:
        return
    decisions = {d.variant: d for d in found[0]}
    for row in rows:
        d = decisions.get(row["variant"])
        if d is not None:
            row.update({"seq_pairs": d.n_pairs, "seq_look": d.look, "seq_looks": d.n_looks,
                        "seq_t": _finite(d.t), "seq_boundary": _finite(d.boundary),
                        "seq_conditional_power": _finite(d.conditional_power), "seq_state": d.state_name})
            row["verdict"] = sequential_verdict(d, row.get("paper_delta"))
        elif row["role"] == EXPLORATORY:
            row["verdict"] = "exploratory"
        else:
            row["verdict"] = NO_FIGURE


def _finite(value: float) -> float | None:
    return value if math.isfinite(value) else None


def design_table(rows: list[Row], design: Design, looks_done: int) -> Table:
    primary = [r for r in rows if r.get("role") == PRIMARY]
    return Table("sequential", f"Sequential design: look {looks_done} of {design.n_looks} "
                 f"(pairs per look: {', '.join(map(str, design.schedule))})", [
                     Column("Variant", key("variant"), "left"),
                     Column("pairs", key("seq_pairs")),
                     Column("look", lambda r: f"{r['seq_look']} of {r['seq_looks']}" if r.get("seq_look") else "—"),
                     Column("t", key("seq_t", lambda v: f"{v:+.3f}")),
                     Column("boundary |t| ≥", key("seq_boundary", lambda v: f"{v:.3f}")),
                     Column("cond. power", key("seq_conditional_power", lambda v: f"{v:.3f}")),
                     Column("decision", key("seq_state"), "left"),
                     Column("Verdict", key("verdict"), "left"),
                 ], primary)


def design_notes(records: StudyRecords, rows: list[Row], looks_done: int, recorded: list[dict[str, Any]]) -> list[str]:
    design = records.space.design
    if design is None:
        return [FIXED_N_NOTE]
    exploratory = [r["variant"] for r in rows if r.get("role") == EXPLORATORY]
    notes = [design.describe() + f"; {looks_done} look(s) taken from the data, {len(recorded)} recorded in the storage",
             "verdicts of primary rows: 'reproduced' / 'opposite' when |t| crossed its boundary (paper's sign or "
             "not), 'no effect detectable' at futility or the maximum (the MDE column says what the pairs could "
             "detect), 'continue' while neither; boundaries are two-sided paired-t critical values whose "
             "family-wise type-I error over every look is ≤ α"]
    if exploratory:
        notes.append(f"exploratory (not pre-registered as primary, unadjusted p, no verdict): {', '.join(exploratory)}")
    mismatch = [r["look"] for r in recorded if isinstance(r.get("look"), int) and 0 < r["look"] <= looks_done
                and r.get("decisions") != decisions_as_of(records, r["look"])]
    if mismatch:
        notes.append(f"warning: recorded look(s) {', '.join(map(str, mismatch))} differ from the decisions recomputed "
                     "from the stored trials (were trials deleted or re-run?)")
    return notes


def study_diffs(records: StudyRecords) -> dict[str, list[float]]:
    design = records.space.design
    return {v: paired_differences(records, v) for v in design.primary} if design else {}


def decisions_as_of(records: StudyRecords, look: int) -> dict[str, str]:
    """Each primary comparison's state as it stood when look ``look`` was taken: the same
    decision function on the pairs that look had (what :mod:`attnres_search.study.looks` records)."""
    design = records.space.design
    assert design is not None
    n = design.schedule[look - 1]
    found, _ = decide_study(design, {v: d[:n] for v, d in study_diffs(records).items()})
    return {d.variant: d.state_name for d in found}
