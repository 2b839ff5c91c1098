"""Rows that compare a variant with the baseline over paired seeds: the Δ with its interval
and test, the p-value adjusted across the report's comparisons, the power figures (SD of the
differences, minimum detectable effect, seeds needed), Δ at equal training FLOPs and at equal
wall-clock, and the notes that say how each was computed. Shared by every report kind."""

from __future__ import annotations

import math
from dataclasses import dataclass
from statistics import fmean
from typing import Any, Callable, Iterable

from attnres_search.reports import budgets
from attnres_search.reports.records import StudyRecords, TrialRecord
from attnres_search.reports.stats import (POWER, Comparison, adjust_p_values, minimum_detectable_effect, paired_test,
                                          seeds_to_detect, summarize)
from attnres_search.reports.tables import Row


TEST_NAMES = {"t": "paired t-test (scipy.stats.ttest_rel)", "wilcoxon": "Wilcoxon signed-rank (scipy.stats.wilcoxon)"}


@dataclass(frozen=True)
class Options:
    """How a report tests and adjusts: the paired test, the significance level, the p-value adjustment."""

    test: str
    alpha: float
    adjust: str


def mean_attr(recs: Iterable[TrialRecord], name: str) -> float | None:
    values = [r.get(name) for r in recs if isinstance(r.get(name), (int, float))]
    return fmean(values) if values else None


def loss_fields(recs: list[TrialRecord]) -> Row:
    s = summarize([r.loss for r in recs])
    return {"n": s.n, "loss_mean": s.mean, "loss_ci_low": s.ci_low, "loss_ci_high": s.ci_high,
            "loss_ci_half": s.half_width, "loss_std": s.std}


def compare(recs: list[TrialRecord], base: list[TrialRecord], test: str) -> Comparison | None:
    """Pair runs by seed; only seeds both sides ran count."""
    by_seed = {r.seed: r.loss for r in base}
    pairs = [(r.loss, by_seed[r.seed]) for r in recs if r.seed in by_seed]
    if not pairs:
        return None
    return paired_test([p[0] for p in pairs], [p[1] for p in pairs], test)


def delta_fields(comparison: Comparison | None) -> Row:
    if comparison is None:
        return {"n_pairs": 0, "delta_mean": None, "delta_ci_low": None, "delta_ci_high": None,
                "delta_ci_half": None, "p_value": None, "delta_sd": None}
    d = comparison.delta
    return {"n_pairs": comparison.n_pairs, "delta_mean": d.mean, "delta_ci_low": d.ci_low, "delta_ci_high": d.ci_high,
            "delta_ci_half": d.half_width, "p_value": comparison.p_value, "delta_sd": d.std}


def finite(value: Any) -> bool:
    return isinstance(value, (int, float)) and not isinstance(value, bool) and math.isfinite(value)


def stat_notes(records: StudyRecords, opts: Options) -> list[str]:
    p_used = "adjusted p" if opts.adjust != "none" else "p"
    return [
        f"mean ± half-width of the 95% Student-t interval over seeds; Δ = variant − {records.space.baseline}, "
        f"paired by seed; p: {TEST_NAMES[opts.test]}",
        f"verdict: 'reproduced' when our Δ has the paper's sign with {p_used} < {opts.alpha}, 'opposite' when it "
        f"has the other sign with {p_used} < alpha, else 'inconclusive'; it judges the direction, not the size, "
        "of the effect (the paper's figures are for its 436M-parameter, 16-block model on 87.9B tokens)",
    ]


def adjust_and_power(rows: list[Row], opts: Options, family: Callable[[Row], bool] | None = None) -> None:
    """Fill each comparing row's ``p_adjusted`` (Holm across the comparisons of the family,
    or the raw p with ``--adjust none``) and its power figures (``power_alpha``: the level used).

    ``family`` picks the rows the adjustment runs over: every comparing row by default (a
    fixed-n study), the pre-registered primary comparisons of a sequential design otherwise;
    the other comparing rows are exploratory: no adjusted p, power at the unadjusted α.

    The power figures are for the paired t-test (also under ``--test wilcoxon``, whose
    efficiency relative to t is 0.955 for normal differences) at level α/m with Holm over m
    tests: the strictest step of Holm's procedure, so a row with that power clears the
    adjusted test whatever the other rows do; α itself with ``--adjust none``."""
    comparing = {id(r) for r in rows if r.get("n_pairs")}
    in_family = {i for i in comparing if family is None or family(next(r for r in rows if id(r) == i))}
    tested = [r for r in rows if id(r) in in_family and finite(r.get("p_value"))]
    adjusted = adjust_p_values([r["p_value"] for r in tested], opts.adjust)
    for row, p in zip(tested, adjusted):
        row["p_adjusted"] = p
    level = opts.alpha / len(tested) if opts.adjust == "holm" and tested else opts.alpha
    for row in rows:
        row.setdefault("p_adjusted", None)
        row["adjust"] = opts.adjust
        sd, n, delta = row.get("delta_sd"), row.get("n_pairs") or 0, row.get("delta_mean")
        power_ok = id(row) in comparing and finite(sd) and n >= 2
        row_level = level if id(row) in in_family else opts.alpha
        row["power_alpha"] = row_level if id(row) in comparing else None
        row["mde_80"] = minimum_detectable_effect(sd, n, row_level, POWER) if power_ok else None
        row["seeds_needed"] = seeds_to_detect(delta, sd, row_level, POWER) if power_ok and finite(delta) else None


def power_notes(rows: list[Row], opts: Options, verdicts: bool = True, primary_only: bool = False) -> list[str]:
    m = sum(1 for r in rows if r.get("n_pairs") and finite(r.get("p_value"))
            and (not primary_only or r.get("role") == "primary"))
    level = opts.alpha / m if opts.adjust == "holm" and m else opts.alpha
    which = "pre-registered primary comparison(s)" if primary_only else "comparison(s) with the baseline in this table"
    if opts.adjust == "holm":
        adj = (f"p adj.: Holm's step-down adjustment across the {m} {which}"
               + ("; verdicts use it" if verdicts else ""))
        at = f"α/m = {opts.alpha}/{m} = {level:.3g} (the strictest Holm step, so enough for the adjusted test)"
    else:
        adj = "p adj.: no adjustment (--adjust none): the raw p-values" + (", which the verdicts use" if verdicts else "")
        at = f"α = {opts.alpha}"
    if primary_only:
        at += "; exploratory rows at α unadjusted"
    return [adj, f"power: SD = standard deviation of the paired differences; MDE = the smallest true Δ the "
                 f"paired t-test detects with {POWER:.0%} power with the pairs run, seeds = pairs it needs to detect "
                 f"the observed Δ with {POWER:.0%} power; two-sided, at {at}; exact noncentral-t power "
                 "(scipy.stats.nct) taking the observed SD as the true one (an estimate itself, rough with few seeds)"]


_BUDGET_SUFFIX = {"flops": "budget_flops", "time": "budget_time_s"}


def budget_fields(recs: list[TrialRecord], base: list[TrialRecord] | None, test: str) -> Row:
    """Δ at equal training FLOPs and at equal wall-clock (rule: :mod:`budgets`), paired by
    seed; None throughout for the baseline itself or where no pair has both curves."""
    row: Row = {}
    for name in budgets.BUDGETS:
        pairs = []
        if base is not None:
            base_curves = {r.seed: budgets.curve(r.attrs, name) for r in base}
            for r in recs:
                b, v = base_curves.get(r.seed), budgets.curve(r.attrs, name)
                pair = budgets.pair_at_equal_budget(r.seed, v, b) if b is not None and v is not None else None
                if pair is not None:
                    pairs.append(pair)
        comparison = (paired_test([p.variant_loss for p in pairs], [p.baseline_loss for p in pairs], test)
                      if pairs else None)
        d = comparison.delta if comparison else None
        row.update({f"n_pairs_{name}": len(pairs), f"delta_{name}_mean": d.mean if d else None,
                    f"delta_{name}_ci_low": d.ci_low if d else None, f"delta_{name}_ci_high": d.ci_high if d else None,
                    f"delta_{name}_ci_half": d.half_width if d else None,
                    f"p_value_{name}": comparison.p_value if comparison else None,
                    _BUDGET_SUFFIX[name]: fmean(p.budget for p in pairs) if pairs else None})
    return row


def budget_notes(records: StudyRecords, rows: list[Row]) -> list[str]:
    if not any(r.get("n_pairs_flops") or r.get("n_pairs_time") for r in rows):
        return ["Δ at equal FLOPs / wall-clock: no trial stored the loss curve, steps, tokens, FLOPs per token and "
                "wall time they need"]
    estimated = sum(1 for r in records.completed if (c := budgets.time_curve(r.attrs)) is not None and c.estimated)
    notes = ["Δ at equal FLOPs / equal wall-clock: per seed, both arms' validation-loss curves are read (linear "
             "interpolation) at B = the smaller of the two arms' final training FLOPs (wall-clock seconds), i.e. "
             "where the costlier (slower) arm stood when the other finished; then paired over seeds like Δ. "
             "p there is unadjusted"]
    if estimated:
        notes.append(f"wall-clock of a validation point: {estimated} of {len(records.completed)} trial(s) stored "
                     "no elapsed time per point, so it is estimated as step × the run's wall_time_s / steps "
                     "(start-up time spread evenly over the steps)")
    return notes
