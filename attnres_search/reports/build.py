"""The four reports (ablation, block-count, depth-width, scaling) built from a study's
records: our numbers with their statistics, the paper's figures beside them, a verdict."""

from __future__ import annotations

from statistics import fmean
from typing import Any

from attnres_search import paper
from attnres_search.residual import ResidualConfig, RuleSpec, preset_label, spec_for
from attnres_search.reports import bootstrap, fits
from attnres_search.reports.comparisons import (TEST_NAMES, Options, adjust_and_power, budget_fields, budget_notes,
                                                compare, delta_fields, loss_fields, mean_attr, power_notes,
                                                stat_notes)
from attnres_search.reports.design_rows import PRIMARY, apply_design, design_notes, design_table, study_decisions
from attnres_search.reports.mixing import add_mixing_section
from attnres_search.reports.records import Group, StudyRecords, TrialRecord
from attnres_search.reports.stats import ADJUSTMENTS, NO_FIGURE, verdict
from attnres_search.reports.tables import (Column, Report, Row, Table, count, key, mean_ci, num, pvalue, sci,
                                           signed)
from attnres_search.study.space import KINDS


def build_report(records: StudyRecords, study_name: str, kind: str, *, test: str = "t", alpha: float = 0.05,
                 adjust: str = "holm", progress_note: str | None = None) -> Report:
    """``adjust``: how the p-values of one report's comparisons with the baseline are
    corrected for their number (``holm``, or ``none``); the verdicts use the adjusted p."""
    if kind not in KINDS:
        raise ValueError(f"report kind must be one of {', '.join(KINDS)}; got {kind!r}")
    if adjust not in ADJUSTMENTS:
        raise ValueError(f"p-value adjustment must be one of {', '.join(ADJUSTMENTS)}; got {adjust!r}")
    builder = {"ablation": _ablation, "block-count": _block_count, "depth-width": _depth_width,
               "scaling": _scaling}[kind]
    report = Report(title=f"{kind} report: study {study_name} (space {records.space.name})", kind=kind,
                    study=study_name)
    builder(report, records, Options(test, alpha, adjust))
    add_mixing_section(report, records)  # the depth-mixing table, when the trials recorded M
    if progress_note:
        report.notes.insert(0, progress_note)
    report.notes.extend(_failure_notes(records))
    return report


# ------------------------------------------------------------------------------------ helpers

def _rule(residual: dict[str, Any]) -> tuple[RuleSpec, ResidualConfig]:
    cfg = ResidualConfig.from_dict(residual, lenient=True)
    return spec_for(cfg), cfg


def _sublayers(n_layers: int | None) -> int | None:
    return 2 * n_layers if n_layers else None


def describe_residual(residual: dict[str, Any], n_layers: int | None) -> str:
    """A short, human description of a residual rule's fields (what a preset name hides);
    ``n_layers`` counts transformer blocks, as stored in the model config."""
    spec, cfg = _rule(residual)
    return spec.label(cfg, _sublayers(n_layers))


def block_size(residual: dict[str, Any], n_layers: int | None) -> int | None:
    """Sublayers per block (1 for Full AttnRes), None for rules without blocks."""
    spec, cfg = _rule(residual)
    return spec.block_size(cfg, _sublayers(n_layers))


def paper_family(residual: dict[str, Any], depth_width: bool = False) -> str:
    """The paper's grouping of a stored residual rule (scaling fits, Figure 7)."""
    spec, cfg = _rule(residual)
    return spec.depth_width_family(cfg) if depth_width else spec.family(cfg)


def _residual_of(records: StudyRecords, variant: str, recs: list[TrialRecord]) -> tuple[dict[str, Any], int | None]:
    if recs:
        model = recs[0].model
        return model.get("residual", {}), model.get("n_layers")
    return records.space.variant(variant).residual.to_dict(), records.space.model.get("n_layers")


def _group_text(group: Group) -> str:
    return " ".join(f"{k}={v}" for k, v in group)


def _groups(records: StudyRecords) -> list[Group]:
    return records.groups() or [()]


def _paper_text(row: Row) -> str:
    if row.get("paper_loss") is None:
        return "—"
    return ("≈" if row.get("paper_approx") else "") + num(row["paper_loss"], 3)


def _failure_notes(records: StudyRecords) -> list[str]:
    notes = []
    for label, counter in (("failed", records.failed), ("pruned", records.pruned)):
        for (variant, group), n in counter.items():
            where = f"{variant} {_group_text(group)}".strip()
            notes.append(f"{where}: {n} {label} trial(s), left out of the statistics")
    return notes


# ----------------------------------------------------------------------------------- ablation

def _variant_rows(records: StudyRecords, opts: Options) -> list[Row]:
    test = opts.test
    base_name = records.space.baseline
    base_paper = paper.table4(records.paper_preset(base_name))
    rows = []
    comparisons = []
    for group in _groups(records):
        base = records.select(base_name, group)
        for variant in records.variants():
            recs = records.select(variant, group)
            residual, n_layers = _residual_of(records, variant, recs)
            preset = records.paper_preset(variant)
            fig = paper.table4(preset)
            row: Row = {"variant": variant, **dict(group), "config": describe_residual(residual, n_layers),
                        "block_size": block_size(residual, n_layers),
                        "paper_row": preset_label(preset) if preset else None}
            row.update(loss_fields(recs))
            is_base = variant == base_name
            comparison = None if is_base else compare(recs, base, test)
            row.update(delta_fields(comparison))
            row.update(budget_fields(recs, None if is_base else base, test))
            row.update({"test": test, "params": mean_attr(recs, "params_total"),
                        "flops": mean_attr(recs, "flops_total"), "tokens": mean_attr(recs, "tokens"),
                        "tokens_per_s": mean_attr(recs, "tokens_per_s"),
                        "paper_loss": fig.loss if fig else None, "paper_approx": bool(fig and fig.approx),
                        "paper_source": fig.source if fig else None})
            paper_delta = None if is_base or fig is None or base_paper is None else fig.loss - base_paper.loss
            row["paper_delta"] = paper_delta
            rows.append(row)
            comparisons.append(None if is_base else comparison)
    design = records.space.design
    if design is not None:  # the pre-registered level; Holm over the primary comparisons only
        opts = Options(opts.test, design.alpha, opts.adjust)
    apply_design(rows, records)
    adjust_and_power(rows, opts, family=None if design is None else (lambda r: r.get("role") == PRIMARY))
    for row, comparison in zip(rows, comparisons):
        if design is None:
            row["verdict"] = (NO_FIGURE if comparison is None
                              else verdict(comparison, row["paper_delta"], opts.alpha, row["p_adjusted"]))
    return rows


def _group_keys(records: StudyRecords) -> list[str]:
    """The trial parameters other than variant and seed that tell cells apart (size, ratio, axes)."""
    return list(dict.fromkeys(k for group in records.groups() for k, _ in group))


def _p_header(test: str) -> str:
    return "p (t)" if test == "t" else "p (Wilcoxon)"


def _adj_header(adjust: str) -> str:
    return "p adj. (Holm)" if adjust == "holm" else "p adj. (none)"


def _variant_columns(group_keys: list[str], opts: Options, with_s: bool = False,
                     roles: bool = False) -> list[Column]:
    cols = [Column("Variant", key("variant"), "left")]
    if roles:
        cols.append(Column("Role", key("role"), "left"))
    cols += [Column(k, key(k)) for k in group_keys]
    if with_s:
        cols.append(Column("S", key("block_size")))
    cols += [
        Column("Config", key("config"), "left"),
        Column("n", key("n")),
        Column("Val loss (95% CI)", mean_ci("loss_mean", "loss_ci_half")),
        Column("Δ vs baseline", mean_ci("delta_mean", "delta_ci_half", sign=True)),
        Column(_p_header(opts.test), key("p_value", pvalue)),
        Column(_adj_header(opts.adjust), key("p_adjusted", pvalue)),
        Column("Params", key("params", count)),
        Column("FLOPs", key("flops", sci)),
        Column("tok/s", key("tokens_per_s", count)),
        Column("Paper loss", _paper_text),
        Column("Paper Δ", lambda r: "—" if r.get("paper_delta") is None
               else ("≈" if r.get("paper_approx") else "") + signed(r["paper_delta"], 3)),
        Column("Verdict", key("verdict"), "left"),
    ]
    return cols


def _power_columns(group_keys: list[str], with_budgets: bool = True) -> list[Column]:
    """The second view of the comparing rows: how much the seeds run can tell, and the
    compute-fair and time-fair Δ."""
    cols = [Column("Variant", key("variant"), "left")]
    cols += [Column(k, key(k)) for k in group_keys]
    cols += [
        Column("pairs", key("n_pairs")),
        Column("Δ (equal tokens)", mean_ci("delta_mean", "delta_ci_half", sign=True)),
        Column("SD of diffs", key("delta_sd", num)),
        Column("MDE (80%)", key("mde_80", num)),
        Column("seeds for Δ", key("seeds_needed", lambda v: f"{v:,}")),
    ]
    if with_budgets:
        cols += [
            Column("Δ equal FLOPs", mean_ci("delta_flops_mean", "delta_flops_ci_half", sign=True)),
            Column("p", key("p_value_flops", pvalue)),
            Column("Δ equal time", mean_ci("delta_time_mean", "delta_time_ci_half", sign=True)),
            Column("p", key("p_value_time", pvalue)),
        ]
    return cols


def _comparing(rows: list[Row]) -> list[Row]:
    return [r for r in rows if r.get("power_alpha") is not None]


def _variant_tables(report: Report, records: StudyRecords, opts: Options, name: str, title: str,
                    rows: list[Row], with_s: bool = False) -> None:
    groups = _group_keys(records)
    design = records.space.design
    if design is not None:
        opts = Options(opts.test, design.alpha, opts.adjust)
    report.tables.append(Table(name, title, _variant_columns(groups, opts, with_s, design is not None), rows))
    found = study_decisions(records)
    if design is not None and found is not None:
        report.tables.append(design_table(rows, design, found[1]))
    report.tables.append(Table(f"{name}_power", "Statistical power, and Δ at equal training FLOPs and wall-clock",
                               _power_columns(groups), _comparing(rows), view_of=name))
    report.notes += design_notes(records, rows, found[1] if found else 0, records.looks)
    report.notes += stat_notes(records, opts) if design is None else stat_notes(records, opts)[:1]
    report.notes += power_notes(rows, opts, verdicts=design is None, primary_only=design is not None)
    report.notes += budget_notes(records, rows)


def _ablation(report: Report, records: StudyRecords, opts: Options) -> None:
    rows = _variant_rows(records, opts)
    _variant_tables(report, records, opts, "variants", "Variants against the baseline (paper: Table 4)", rows)
    if any(r["paper_approx"] for r in rows):
        report.notes.append("≈: the paper gives this figure only approximately (Figure 6, or Table 2's mHC(-lite))")


def _block_count(report: Report, records: StudyRecords, opts: Options) -> None:
    rows = _variant_rows(records, opts)
    rows.sort(key=lambda r: (r["block_size"] is not None, r["block_size"] or 0))
    _variant_tables(report, records, opts, "block_sizes",
                    "Block size S (sublayers per block; S = 1 is Full AttnRes)", rows, with_s=True)
    report.notes.append("paper (Figure 6): S = 2, 4, 8 all land near 1.746, S = 16 and 32 drift toward the "
                        "baseline (1.766), Full AttnRes (S = 1) 1.737")


# -------------------------------------------------------------------------------- depth-width

def _ratio(rec: TrialRecord) -> float | None:
    model = rec.model
    if model.get("d_model") and model.get("n_layers"):
        return model["d_model"] / model["n_layers"]
    return None


def _depth_width(report: Report, records: StudyRecords, opts: Options) -> None:
    test = opts.test
    base_name = records.space.baseline
    cells: list[Row] = []
    per_seed: dict[tuple[str, float, Group], dict[int, float]] = {}
    for group in _groups(records):
        base = records.select(base_name, group)
        for variant in records.variants():
            recs = records.select(variant, group)
            if not recs:
                continue
            model = recs[0].model
            row: Row = {"variant": variant, **dict(group), "actual_ratio": _ratio(recs[0]),
                        "n_layers": model.get("n_layers"), "d_model": model.get("d_model"),
                        "family": paper_family(model.get("residual", {}), depth_width=True)}
            row.update(loss_fields(recs))
            is_base = variant == base_name
            row.update(delta_fields(None if is_base else compare(recs, base, test)))
            row.update(budget_fields(recs, None if is_base else base, test))
            row.update({"params": mean_attr(recs, "params_non_embedding"), "tokens": mean_attr(recs, "tokens"),
                        "flops": mean_attr(recs, "flops_total")})
            cells.append(row)
            if row["actual_ratio"]:
                per_seed[(variant, row["actual_ratio"], group)] = {r.seed: r.loss for r in recs}
    adjust_and_power(cells, opts)
    groups = _group_keys(records)
    cols = [Column("Variant", key("variant"), "left"), Column("ratio", key("ratio")),
            Column("d/L_b", key("actual_ratio", lambda v: f"{v:.1f}")), Column("L_b", key("n_layers")),
            Column("d_model", key("d_model")), Column("n", key("n")),
            Column("Val loss (95% CI)", mean_ci("loss_mean", "loss_ci_half")),
            Column("Δ vs baseline", mean_ci("delta_mean", "delta_ci_half", sign=True)),
            Column("p", key("p_value", pvalue)), Column(_adj_header(opts.adjust), key("p_adjusted", pvalue)),
            Column("Params (non-emb.)", key("params", count)),
            Column("Tokens", key("tokens", count)), Column("FLOPs", key("flops", sci))]
    report.tables.append(Table("cells", "Loss per shape at a fixed FLOP budget", cols, cells))
    report.tables.append(Table("cells_power", "Statistical power per shape, and Δ at equal training FLOPs and "
                               "wall-clock", _power_columns(groups), _comparing(cells), view_of="cells"))

    optima = _depth_width_optima(cells)
    _bootstrap_optima(optima, per_seed, base_name)
    report.tables.append(Table("optima", "Fitted optimum d_model/L_b (quadratic in log ratio)", [
        Column("Variant", key("variant"), "left"),
        Column("Fitted optimum", lambda row: "—" if row.get("optimum_ratio") is None else _bound(row)),
        Column("95% CI (bootstrap)", _interval("optimum_ci_low", "optimum_ci_high", "{:.1f}")),
        Column(f"P(below {base_name})", key("p_below_baseline", lambda v: f"{v:.3f}")),
        Column("Loss there", key("optimum_loss", num)),
        Column("Inside grid", key("interior", lambda v: "yes" if v else "no (best measured)")),
        Column("Bracketed", key("bracketed", _bracket_text)),
        Column("R²", key("r2", lambda v: f"{v:.3f}")),
        Column("Paper optimum", key("paper_optimum", lambda v: f"{v:.0f}")),
        Column("Paper loss", key("paper_loss", lambda v: num(v, 3))),
    ], optima))
    report.notes += _flops_notes(records)
    report.notes += _shift_notes(optima, base_name)
    report.notes.append(f"Δ paired by seed within each shape; p: {TEST_NAMES[test]}")
    report.notes += power_notes(cells, opts, verdicts=False)
    report.notes += budget_notes(records, cells)
    report.notes += _bootstrap_notes(per_seed, "optimum")


def _depth_width_optima(cells: list[Row]) -> list[Row]:
    """One fit per variant over its mean loss at each shape."""
    out = []
    for variant in dict.fromkeys(r["variant"] for r in cells):
        points = [(r["actual_ratio"], r["loss_mean"]) for r in cells if r["variant"] == variant and r["actual_ratio"]]
        family = next(r["family"] for r in cells if r["variant"] == variant)
        paper_opt = paper.DEPTH_WIDTH_OPTIMUM.get(family)
        row: Row = {"variant": variant, "family": family, "paper_optimum": paper_opt[0] if paper_opt else None,
                    "paper_loss": paper_opt[1] if paper_opt else None, "bracketed": fits.bracketed(*zip(*points)) if points else None}
        try:
            fit = fits.fit_depth_width([p[0] for p in points], [p[1] for p in points])
        except ValueError:
            row.update(optimum_ratio=None, optimum_loss=None, interior=None, r2=None)
        else:
            row.update(optimum_ratio=fit.optimum_ratio, optimum_loss=fit.optimum_loss, interior=fit.interior,
                       r2=fit.r2, a=fit.a, b=fit.b, c=fit.c)
        out.append(row)
    return out


def _bracket_text(value: str | None) -> str:
    return {"yes": "yes", "widest": "no: lowest at the widest shape",
            "deepest": "no: lowest at the deepest shape"}.get(value or "", "—")


def _interval(low: str, high: str, fmt: str) -> Any:
    def show(row: Row) -> str:
        if row.get(low) is None or row.get(high) is None:
            return "—"
        return f"{fmt.format(row[low])} – {fmt.format(row[high])}"
    return show


def _bootstrap_optima(optima: list[Row], per_seed: dict[tuple[str, float, Group], dict[int, float]],
                      base_name: str) -> None:
    """Add each optimum's bootstrap interval over seeds and P(optimum < baseline's)."""
    seeds = {s for values in per_seed.values() for s in values}
    result = bootstrap.bootstrap_optima(per_seed, base_name) if len(seeds) >= 2 else {}
    for row in optima:
        b = result.get(row["variant"])
        row.update(optimum_ci_low=b.interval.low if b else None, optimum_ci_high=b.interval.high if b else None,
                   p_below_baseline=b.p_below_baseline if b else None,
                   bootstrap_replicates=b.interval.valid if b else None)


def _bootstrap_notes(per_seed: dict[Any, dict[int, float]], what: str) -> list[str]:
    seeds = {s for values in per_seed.values() for s in values}
    if len(seeds) < 2:
        return [f"no bootstrap interval on the {what}: it needs two or more seeds"]
    text = {"optimum": "each variant's fitted optimum; P(below): fraction of replicates in which a variant's optimum "
                       "lies strictly below the baseline's",
            "multiplier": "the compute multiplier; P(> 1): fraction of replicates in which the variant is the more "
                          "compute-efficient"}[what]
    return [f"bootstrap: 95% percentile interval of {text}; {bootstrap.REPLICATES} resamples of the {len(seeds)} "
            f"seeds with replacement, the same seeds for every variant and cell (paired), fits redone per "
            f"resample; fixed generator seed {bootstrap.BOOTSTRAP_SEED}, so the report is reproducible"]


def _flops_notes(records: StudyRecords) -> list[str]:
    flops = [r.get("flops_total") for r in records.completed if isinstance(r.get("flops_total"), (int, float))]
    if not flops:
        return []
    mean = fmean(flops)
    spread = max(abs(f - mean) for f in flops) / mean
    budget = records.space.budget_flops
    said = f" (budget {budget:.3g})" if budget else ""
    return [f"every cell used the same training FLOPs: {mean:.3g} per run{said}; largest deviation "
            f"{spread:.2%} (tokens are rounded to whole batches)"]


def _shift_notes(optima: list[Row], base_name: str) -> list[str]:
    base = next((o for o in optima if o["variant"] == base_name and o.get("optimum_ratio")), None)
    ours = [o for o in optima if o["variant"] != base_name and o.get("optimum_ratio")]
    if base is None:
        return ["optimum shift: no baseline fit (it needs three or more shapes with results)"]
    p_base, p_attn = paper.DEPTH_WIDTH_OPTIMUM["baseline"][0], paper.DEPTH_WIDTH_OPTIMUM["attnres"][0]
    notes = [f"optimum d_model/L_b: {base_name} {_bound(base)} → {o['variant']} {_bound(o)} "
             f"(paper: baseline {p_base:.0f} → AttnRes {p_attn:.0f})"
             + (f"; P({o['variant']}'s optimum below {base_name}'s) = {o['p_below_baseline']:.3f} (bootstrap)"
                if o.get("p_below_baseline") is not None else "") for o in ours]
    for o in [base, *ours]:
        if o.get("bracketed") in ("widest", "deepest"):
            side, beyond = ("widest", "wider") if o["bracketed"] == "widest" else ("deepest", "deeper")
            notes.append(f"{o['variant']} is lowest at the {side} shape measured: the grid does not bracket its "
                         f"optimum, which may lie beyond it, so its fitted optimum and any P(below) that rests on it "
                         f"are bounds; bracketing it needs {beyond} shapes (at this parameter count, or with more "
                         f"parameters)")
    return notes


def _bound(optimum: Row) -> str:
    """An optimum as a report should state it: a value, or a bound where the grid's edge cut it."""
    side = {"widest": "≥ ", "deepest": "≤ ", None: ""}[fits.optimum_edge(optimum.get("interior"),
                                                                        optimum.get("bracketed"))]
    return f"{side}{optimum['optimum_ratio']:.1f}"


# ------------------------------------------------------------------------------------ scaling

def _scaling(report: Report, records: StudyRecords, opts: Options) -> None:
    points: list[Row] = []
    per_seed: dict[tuple[str, float, Group], dict[int, float]] = {}
    for group in _groups(records):
        for variant in records.variants():
            recs = records.select(variant, group)
            if not recs:
                continue
            model = recs[0].model
            flops = mean_attr(recs, "flops_total")
            row: Row = {"variant": variant, **dict(group), "n_layers": model.get("n_layers"),
                        "d_model": model.get("d_model"), "params": mean_attr(recs, "params_total"),
                        "tokens": mean_attr(recs, "tokens"), "flops": flops,
                        "pflops_days": flops / paper.PFLOPS_DAY if flops else None,
                        "family": paper_family(model.get("residual", {}))}
            row.update(loss_fields(recs))
            points.append(row)
            if row["pflops_days"]:
                per_seed[(variant, row["pflops_days"], group)] = {r.seed: r.loss for r in recs}
    report.tables.append(Table("points", "Loss per model size", [
        Column("Variant", key("variant"), "left"), Column("size", key("size")), Column("L_b", key("n_layers")),
        Column("d_model", key("d_model")), Column("Params", key("params", count)), Column("Tokens", key("tokens", count)),
        Column("C (FLOPs)", key("flops", sci)), Column("C (PFLOP/s-days)", key("pflops_days", sci)),
        Column("n", key("n")), Column("Val loss (95% CI)", mean_ci("loss_mean", "loss_ci_half")),
    ], points))

    laws: dict[str, fits.PowerLaw] = {}
    fit_rows = []
    for variant in records.variants():
        pts = [(r["pflops_days"], r["loss_mean"]) for r in points if r["variant"] == variant and r["pflops_days"]]
        family = next((r["family"] for r in points if r["variant"] == variant), None)
        paper_law = paper.POWER_LAWS.get(family or "")
        row: Row = {"variant": variant, "family": family, "points": len(pts),
                    "paper_A": paper_law[0] if paper_law else None, "paper_alpha": paper_law[1] if paper_law else None}
        try:
            law = fits.fit_power_law([p[0] for p in pts], [p[1] for p in pts])
        except ValueError:
            row.update(A=None, alpha=None, r2=None)
        else:
            laws[variant] = law
            row.update(A=law.A, alpha=law.alpha, r2=law.r2)
        fit_rows.append(row)
    report.tables.append(Table("fits", "Power-law fits L = A·C^-α (C in PFLOP/s-days)", [
        Column("Variant", key("variant"), "left"), Column("points", key("points")), Column("A", key("A", num)),
        Column("α", key("alpha", num)), Column("R²", key("r2", lambda v: f"{v:.3f}")),
        Column("Paper A", key("paper_A", lambda v: num(v, 3))), Column("Paper α", key("paper_alpha", lambda v: num(v, 3))),
    ], fit_rows))

    base_name = records.space.baseline
    at = max((r["pflops_days"] for r in points if r["pflops_days"]), default=None)
    mult_rows = []
    if base_name in laws and at is not None:
        for variant, law in laws.items():
            if variant == base_name:
                continue
            family = next(r["family"] for r in fit_rows if r["variant"] == variant)
            mult_rows.append({"variant": variant, "at_pflops_days": at,
                              "multiplier": fits.compute_multiplier(law, laws[base_name], at),
                              "paper_multiplier": paper.COMPUTE_MULTIPLIER.get(family or "")})
    seeds = {s for values in per_seed.values() for s in values}
    boot = bootstrap.bootstrap_multipliers(per_seed, base_name, at) if mult_rows and len(seeds) >= 2 else {}
    for row in mult_rows:
        b = boot.get(row["variant"])
        row.update(multiplier_ci_low=b.interval.low if b else None, multiplier_ci_high=b.interval.high if b else None,
                   p_multiplier_above_1=b.p_above_one if b else None,
                   bootstrap_replicates=b.interval.valid if b else None)
    report.tables.append(Table("multiplier", f"Compute multiplier at matched loss (vs {base_name})", [
        Column("Variant", key("variant"), "left"), Column("at C (PFLOP/s-days)", key("at_pflops_days", sci)),
        Column("Multiplier", key("multiplier", lambda v: f"{v:.2f}x")),
        Column("95% CI (bootstrap)", _interval("multiplier_ci_low", "multiplier_ci_high", "{:.2f}x")),
        Column("P(> 1)", key("p_multiplier_above_1", lambda v: f"{v:.3f}")),
        Column("Paper", key("paper_multiplier", lambda v: f"{v:.2f}x")),
    ], mult_rows))
    report.notes.append(f"multiplier: compute the baseline's fit needs to reach the loss the variant's fit reaches at "
                        f"C (the largest budget of this study), divided by C; above 1 the variant is more "
                        f"compute-efficient. Paper: 1.25x for Block AttnRes at {paper.MULTIPLIER_AT_PFLOPS_DAYS} "
                        "PFLOP/s-days")
    if not mult_rows:
        report.notes.append("no multiplier: it needs power-law fits (two or more sizes) of the baseline and a variant")
    else:
        report.notes += _bootstrap_notes(per_seed, "multiplier")
