"""PNG figures of a report: the study-level figure of each kind; the figures comparing the
variants over all their seeds (:mod:`attnres_search.reports.variant_plots`: loss curves with
bands, forest plot of Δ, depth-mixing heatmaps of α and of every rule's M, output-RMS and
gradient profiles); and one representative run per variant (its first seed: loss curve,
profiles, heatmaps) drawn by
:mod:`attnres_search.reports.run_plots` from the trial's stored record."""

from __future__ import annotations

import json
import math
import re
from pathlib import Path
from typing import Any

import matplotlib

matplotlib.use("Agg")  # files only: never needs a display

import matplotlib.pyplot as plt  # noqa: E402
import numpy as np  # noqa: E402

from attnres_search.reports import fits, variant_plots  # noqa: E402
from attnres_search.reports.records import StudyRecords  # noqa: E402
from attnres_search.reports.tables import Report, Row  # noqa: E402


def write_plots(report: Report, records: StudyRecords, out_dir: str | Path) -> list[Path]:
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    tables = {t.name: t.rows for t in report.tables}
    paths: list[Path] = []
    if report.kind in ("ablation", "block-count"):
        rows = tables.get("variants") or tables.get("block_sizes") or []
        paths.append(_variants_plot(rows, report.title, out / "variants.png"))
        if report.kind == "block-count":
            paths.append(_block_size_plot(rows, records.space.baseline, report.title, out / "block_size.png"))
    elif report.kind == "depth-width":
        paths.append(_depth_width_plot(tables["cells"], tables["optima"], report.title, out / "depth_width.png"))
    else:
        paths.append(_scaling_plot(tables["points"], tables["fits"], report.title, out / "scaling.png"))
    paths += _across_seeds(report, records, out)
    paths += _run_plots(records, out / "runs")
    return paths


def _across_seeds(report: Report, records: StudyRecords, out: Path) -> list[Path]:
    """The figures drawn from every seed: loss curves, forest plot, heatmaps, profiles."""
    tables = {t.name: t.rows for t in report.tables}
    group_keys = list(dict.fromkeys(k for group in records.groups() for k, _ in group))
    comparing = next((tables[n] for n in ("variants", "block_sizes", "cells") if n in tables), [])
    found = [variant_plots.loss_curves_plot(records, report.title, out / "loss_curves.png"),
             variant_plots.forest_plot(comparing, group_keys, report.title, out / "forest.png")]
    paths = [p for p in found if p is not None]
    paths += variant_plots.depth_mixing_plots(records, report.title, out)
    paths += variant_plots.mixing_matrix_plots(records, report.title, out)
    paths += variant_plots.profile_plots(records, report.title, out)
    return paths


def _ok(value: Any) -> bool:
    return isinstance(value, (int, float)) and not math.isnan(value)


def _half(row: Row, name: str) -> float:
    return row[name] if _ok(row.get(name)) else 0.0


def _label(row: Row) -> str:
    extra = " ".join(f"{k}={row[k]}" for k in ("size", "ratio") if k in row)
    return f"{row['variant']} {extra}".strip()


def _variants_plot(rows: list[Row], title: str, path: Path) -> Path:
    rows = [r for r in rows if _ok(r.get("loss_mean"))]
    fig, (left, right) = plt.subplots(1, 2, figsize=(12, 0.5 * max(4, len(rows)) + 1.5))
    y = np.arange(len(rows))
    left.errorbar([r["loss_mean"] for r in rows], y, xerr=[_half(r, "loss_ci_half") for r in rows], fmt="o", capsize=3)
    left.set(yticks=y, yticklabels=[_label(r) for r in rows], xlabel="final validation loss (95% CI)", title="Ours")
    left.invert_yaxis()
    ours = [r.get("delta_mean") if _ok(r.get("delta_mean")) else 0.0 for r in rows]
    theirs = [r.get("paper_delta") if _ok(r.get("paper_delta")) else 0.0 for r in rows]
    right.barh(y - 0.2, ours, height=0.4, xerr=[_half(r, "delta_ci_half") for r in rows], capsize=3, label="ours")
    right.barh(y + 0.2, theirs, height=0.4, label="paper")
    right.axvline(0, color="k", lw=0.8)
    right.set(yticks=y, yticklabels=[_label(r) for r in rows], xlabel="Δ loss vs baseline (negative = better)",
              title="Δ vs baseline")
    right.invert_yaxis()
    right.legend()
    fig.suptitle(title)
    return variant_plots.save_figure(fig, path)


def _block_size_plot(rows: list[Row], baseline: str, title: str, path: Path) -> Path:
    fig, ax = plt.subplots(figsize=(7, 4.5))
    pts = sorted((r["block_size"], r["loss_mean"], _half(r, "loss_ci_half")) for r in rows
                 if r.get("block_size") and _ok(r.get("loss_mean")))
    if pts:
        s, loss, half = zip(*pts)
        ax.errorbar(s, loss, yerr=half, fmt="o-", capsize=3, label="AttnRes (S = 1: Full)")
        ax.set_xscale("log", base=2)
        ax.set_xticks(s, [str(v) for v in s])
    for r in rows:
        if r["variant"] == baseline and _ok(r.get("loss_mean")):
            ax.axhline(r["loss_mean"], color="gray", ls="--", label=baseline)
            if _ok(r.get("loss_ci_half")):
                ax.axhspan(r["loss_mean"] - r["loss_ci_half"], r["loss_mean"] + r["loss_ci_half"], color="gray", alpha=0.15)
    ax.set(xlabel="block size S (sublayers per block)", ylabel="final validation loss", title=title)
    ax.grid(alpha=0.3)
    ax.legend()
    return variant_plots.save_figure(fig, path)


def optimum_marker(optimum: Row) -> str:
    """A star for an optimum the grid brackets; an arrow pointing off the grid for one that is
    only a bound, so a figure cannot be read as locating it."""
    return {"widest": ">", "deepest": "<", None: "*"}[fits.optimum_edge(optimum.get("interior"),
                                                                        optimum.get("bracketed"))]


def _depth_width_plot(cells: list[Row], optima: list[Row], title: str, path: Path) -> Path:
    fig, ax = plt.subplots(figsize=(7, 4.5))
    for opt in optima:
        pts = sorted((r["actual_ratio"], r["loss_mean"], _half(r, "loss_ci_half")) for r in cells
                     if r["variant"] == opt["variant"] and _ok(r.get("actual_ratio")))
        if not pts:
            continue
        ratio, loss, half = zip(*pts)
        line = ax.errorbar(ratio, loss, yerr=half, fmt="o", capsize=3, label=opt["variant"])
        if _ok(opt.get("c")):
            xs = np.geomspace(min(ratio), max(ratio), 100)
            lx = np.log(xs)
            ax.plot(xs, opt["a"] + opt["b"] * lx + opt["c"] * lx * lx, color=line[0].get_color(), alpha=0.7)
        if _ok(opt.get("optimum_ratio")):
            ax.plot([opt["optimum_ratio"]], [opt["optimum_loss"]], optimum_marker(opt), ms=14,
                    color=line[0].get_color())
    ax.set_xscale("log")
    ax.set(xlabel="d_model / L_b", ylabel="final validation loss (equal FLOPs)",
           title=f"{title}\n★ fitted optimum, ▶ ◀ a bound at the grid's edge (paper: 60 → 45)")
    ax.grid(alpha=0.3)
    ax.legend()
    return variant_plots.save_figure(fig, path)


def _scaling_plot(points: list[Row], fit_rows: list[Row], title: str, path: Path) -> Path:
    fig, ax = plt.subplots(figsize=(7, 4.5))
    for fit in fit_rows:
        pts = sorted((r["pflops_days"], r["loss_mean"]) for r in points
                     if r["variant"] == fit["variant"] and _ok(r.get("pflops_days")))
        if not pts:
            continue
        c, loss = zip(*pts)
        line = ax.plot(c, loss, "o", label=fit["variant"])[0]
        if _ok(fit.get("A")):
            xs = np.geomspace(min(c), max(c), 50)
            ax.plot(xs, fit["A"] * xs ** (-fit["alpha"]), color=line.get_color(), alpha=0.7,
                    label=f"{fit['A']:.3f}·C^-{fit['alpha']:.3f}")
    ax.set_xscale("log")
    ax.set_yscale("log")
    ax.set(xlabel="training compute C (PFLOP/s-days)", ylabel="final validation loss", title=title)
    ax.grid(alpha=0.3, which="both")
    ax.legend()
    return variant_plots.save_figure(fig, path)


def _pairs_only(attrs: dict[str, Any]) -> dict[str, Any]:
    """The record with its curves as ``[step, loss]`` pairs, the form the run figures read
    (a curve may also store each point's elapsed seconds as a third item)."""
    out = dict(attrs)
    for name in ("val_curve", "train_curve"):
        if isinstance(out.get(name), list):
            out[name] = [list(p[:2]) for p in out[name] if isinstance(p, (list, tuple)) and len(p) >= 2]
    return out


def _run_plots(records: StudyRecords, out: Path) -> list[Path]:
    """Each variant's run figures, from its first completed trial (lowest cell, seed)."""
    from attnres_search.reports.run_plots import plot_run

    paths: list[Path] = []
    for variant in records.variants():
        recs = [r for r in records.completed if r.variant == variant]
        if not recs:
            continue
        rec = min(recs, key=lambda r: (r.group, r.seed))
        folder = out / re.sub(r"[^A-Za-z0-9._-]+", "-", variant)
        folder.mkdir(parents=True, exist_ok=True)
        run_json = folder / "run.json"
        run_json.write_text(json.dumps(_pairs_only(rec.attrs)))
        paths += plot_run(run_json, folder)
    return paths
