"""Figures that compare the variants of a study over all their seeds: validation-loss curves
(mean over seeds, band from the lowest to the highest seed) on one axis, a forest plot of Δ beside the paper's Δ,
depth-mixing heatmaps side by side (AttnRes's α, and every rule's effective mixing matrix
M), and output-RMS / gradient-norm profiles (the paper's Figure 5 shapes). Every seed counts, not one representative run.

The data helpers (:func:`mean_curve`, :func:`mean_matrix`, :func:`mean_profile`) are kept
apart from the drawing so that the numbers drawn can be tested.
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable, Sequence

import matplotlib

matplotlib.use("Agg")  # files only: never needs a display

import matplotlib.pyplot as plt  # noqa: E402
import numpy as np  # noqa: E402

from attnres_search.reports.budgets import is_number, val_points  # noqa: E402
from attnres_search.reports.mixing import majority_sinks  # noqa: E402
from attnres_search.reports.mixing_plots import mark_sinks, panels_figure  # noqa: E402
from attnres_search.reports.records import Group, StudyRecords, TrialRecord  # noqa: E402
from attnres_search.reports.tables import Row  # noqa: E402
from attnres_search.training.diagnostics import sublayer_names  # noqa: E402


# ------------------------------------------------------------------------------------- data

@dataclass(frozen=True)
class MeanCurve:
    """Mean over seeds, and the lowest and highest seed, at each point of ``x``. The band is the
    seeds' range rather than a t interval of the mean: with the 2 to 5 seeds a study runs, the
    t interval is mostly the seed-to-seed offset shared by every variant (which the paired Δ
    cancels), and at n = 2 it is 12.7 standard errors wide."""

    x: np.ndarray
    mean: np.ndarray
    low: np.ndarray
    high: np.ndarray
    n: int


def mean_curve(curves: Sequence[tuple[Sequence[float], Sequence[float]]]) -> MeanCurve | None:
    """The mean over seeds of several (x, loss) curves. The grid is the first curve's points
    inside the range every curve covers (the seeds of one cell validate at the same steps, so
    usually nothing is interpolated); each curve is interpolated linearly onto it."""
    curves = [(np.asarray(x, float), np.asarray(y, float)) for x, y in curves if len(x)]
    if not curves:
        return None
    low = max(x.min() for x, _ in curves)
    high = min(x.max() for x, _ in curves)
    grid = np.unique(curves[0][0][(curves[0][0] >= low) & (curves[0][0] <= high)])
    if grid.size == 0:
        return None
    values = np.array([np.interp(grid, *_sorted(x, y)) for x, y in curves])
    return MeanCurve(grid, values.mean(axis=0), values.min(axis=0), values.max(axis=0), len(curves))


def _sorted(x: np.ndarray, y: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    order = np.argsort(x, kind="stable")
    return x[order], y[order]


def mean_matrix(matrices: Sequence[Sequence[Sequence[float] | None]]) -> np.ndarray | None:
    """Element-wise mean of ragged matrices (rows of different lengths, as the depth-mixing
    weights are: later layers read more sources), NaN where no matrix has an entry. Matrices
    with a missing row (no depth mixing recorded) are left out; None when none is left."""
    usable = [m for m in matrices if m and all(row is not None and len(row) for row in m)]
    if not usable:
        return None
    n_rows = max(len(m) for m in usable)
    width = max(len(row) for m in usable for row in m)  # type: ignore[arg-type]
    stack = np.full((len(usable), n_rows, width), np.nan)
    for k, m in enumerate(usable):
        for i, row in enumerate(m):
            stack[k, i, : len(row)] = row  # type: ignore[arg-type]
    counts = (~np.isnan(stack)).sum(axis=0)
    sums = np.where(np.isnan(stack), 0.0, stack).sum(axis=0)
    with np.errstate(invalid="ignore", divide="ignore"):
        return np.where(counts > 0, sums / np.maximum(counts, 1), np.nan)


def mean_profile(profiles: Sequence[Sequence[float]]) -> tuple[np.ndarray, np.ndarray, np.ndarray] | None:
    """Mean, minimum and maximum over seeds of per-layer values (output RMS, gradient norm);
    profiles of another length than the most common one (another depth) are left out."""
    profiles = [p for p in profiles if p]
    if not profiles:
        return None
    lengths = [len(p) for p in profiles]
    length = max(set(lengths), key=lengths.count)
    values = np.array([p for p in profiles if len(p) == length], dtype=float)
    return values.mean(axis=0), values.min(axis=0), values.max(axis=0)


# ------------------------------------------------------------------------------- selection

def _cells(records: StudyRecords) -> list[tuple[Group, str, list[TrialRecord]]]:
    out = []
    for group in records.groups():
        for variant in records.variants():
            recs = records.select(variant, group)
            if recs:
                out.append((group, variant, recs))
    return out


def _panels_by_group(records: StudyRecords,
                     panel: Callable[[str, list[TrialRecord]], Any]) -> list[tuple[Group, list[Any]]]:
    """Per cell (non-variant group), the panels ``panel(variant, recs)`` draws for each
    variant, those returning None left out, and groups without any panel dropped."""
    cells = _cells(records)
    out = []
    for group in dict.fromkeys(g for g, _, _ in cells):
        panels = [p for g, variant, recs in cells if g == group and (p := panel(variant, recs)) is not None]
        if panels:
            out.append((group, panels))
    return out


def _group_text(group: Group) -> str:
    return " ".join(f"{k}={v}" for k, v in group)


def _suffix(group: Group, several: bool) -> str:
    return "_" + re.sub(r"[^A-Za-z0-9._-]+", "-", _group_text(group)) if several and group else ""


def _tokens_per_step(rec: TrialRecord) -> float | None:
    steps, tokens = rec.get("steps"), rec.get("tokens")
    if isinstance(steps, (int, float)) and isinstance(tokens, (int, float)) and steps > 0:
        return tokens / steps
    return None


def save_figure(fig: plt.Figure, path: Path) -> Path:
    """Write a report figure (tight layout, 120 dpi) and free it."""
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)
    return path


# ---------------------------------------------------------------------------------- figures

def loss_curves_plot(records: StudyRecords, title: str, path: Path) -> Path | None:
    """Every (variant, cell) on one axis: mean validation loss over seeds, band from the lowest
    to the highest seed. The x axis is tokens trained when every trial stored tokens and steps, else the global step."""
    cells = _cells(records)
    by_tokens = all(_tokens_per_step(r) for _, _, recs in cells for r in recs)
    several = len({g for g, _, _ in cells}) > 1
    fig, ax = plt.subplots(figsize=(8, 5))
    drawn = 0
    for group, variant, recs in cells:
        curves = []
        for r in recs:
            points = val_points(r.attrs)
            scale = (_tokens_per_step(r) or 1.0) if by_tokens else 1.0
            curves.append(([p[0] * scale for p in points], [p[1] for p in points]))
        curve = mean_curve(curves)
        if curve is None:
            continue
        label = f"{variant} {_group_text(group)}".strip() if several else variant
        line = ax.plot(curve.x, curve.mean, "o-", ms=2.5, lw=1.5, label=f"{label} (n={curve.n})")[0]
        if curve.n > 1:
            ax.fill_between(curve.x, curve.low, curve.high, color=line.get_color(), alpha=0.2, lw=0)
        drawn += 1
    if not drawn:
        plt.close(fig)
        return None
    ax.set(xlabel="tokens trained" if by_tokens else "global step", ylabel="validation loss (nats/token)",
           title=f"Validation loss, mean over seeds (band: lowest to highest seed)\n{title}")
    ax.grid(alpha=0.3)
    ax.legend(fontsize=8, ncol=2 if drawn > 8 else 1)
    return save_figure(fig, path)


def _row_label(row: Row, group_keys: list[str]) -> str:
    extra = " ".join(f"{k}={row[k]}" for k in group_keys if k in row)
    return f"{row['variant']} {extra}".strip()


def forest_plot(rows: list[Row], group_keys: list[str], title: str, path: Path) -> Path | None:
    """Δ vs the baseline with its 95% interval for every comparing row (at equal tokens, and
    at equal FLOPs / wall-clock where known), the paper's Δ beside it."""
    rows = [r for r in rows if is_number(r.get("delta_mean"))]
    if not rows:
        return None
    fig, ax = plt.subplots(figsize=(8, 2.8 + 0.6 * len(rows)), layout="constrained")
    y = np.arange(len(rows), dtype=float)
    series = [("delta", "equal tokens", "o", 0.0), ("delta_flops", "equal FLOPs", "s", 0.18),
              ("delta_time", "equal wall-clock", "^", 0.36)]
    for prefix, label, marker, offset in series:
        pts = [(i, r[f"{prefix}_mean"], r.get(f"{prefix}_ci_half")) for i, r in enumerate(rows)
               if is_number(r.get(f"{prefix}_mean"))]
        if not pts:
            continue
        idx, mean, half = zip(*pts)
        ax.errorbar(mean, y[list(idx)] + offset, xerr=[h if is_number(h) else 0.0 for h in half], fmt=marker,
                    capsize=3, ms=6 if offset == 0 else 4, label=f"ours, {label} (95% CI)")
    paper = [(i, r["paper_delta"]) for i, r in enumerate(rows) if is_number(r.get("paper_delta"))]
    if paper:
        idx, delta = zip(*paper)
        ax.plot(delta, y[list(idx)] - 0.18, "D", color="crimson", ms=6, label="paper Δ")
    ax.axvline(0, color="k", lw=0.8)
    ax.set_yticks(y + 0.1, [_row_label(r, group_keys) for r in rows])
    ax.invert_yaxis()
    ax.set(xlabel="Δ validation loss vs baseline (negative = better)", title=f"Δ vs baseline\n{title}")
    ax.grid(alpha=0.3, axis="x")
    fig.legend(loc="outside lower center", ncol=2, fontsize=8)
    fig.savefig(path, dpi=120)
    plt.close(fig)
    return path


def _final_snapshot(rec: TrialRecord) -> dict[str, Any]:
    summary = rec.get("diagnostics_summary")
    return summary if isinstance(summary, dict) else {}


def depth_mixing_plots(records: StudyRecords, title: str, out: Path) -> list[Path]:
    """One figure per cell: each variant's final depth-mixing weights α, mean over seeds,
    side by side on one colour scale (rows: reading layer; columns: source)."""
    def alpha_panel(variant: str, recs: list[TrialRecord]) -> Any:
        snaps = [_final_snapshot(r) for r in recs]
        matrix = mean_matrix([s.get("alpha") for s in snaps if s.get("alpha")])
        if matrix is None:
            return None
        sources = next((s.get("sources") for s in snaps if s.get("sources")), None)
        return variant, matrix, sum(1 for s in snaps if s.get("alpha")), sources, majority_sinks(snaps)

    by_group = _panels_by_group(records, alpha_panel)
    paths = []
    for group, panels in by_group:
        vmax = max(float(np.nanmax(m)) for _, m, _, _, _ in panels) or 1.0
        width = sum(1.2 + 0.35 * m.shape[1] for _, m, _, _, _ in panels) + 1.5
        height = 2.0 + 0.28 * max(m.shape[0] for _, m, _, _, _ in panels)
        fig, axes = plt.subplots(1, len(panels), figsize=(max(6.0, width), height), squeeze=False,
                                 layout="constrained")
        image = None
        for ax, (variant, matrix, n, sources, sinks) in zip(axes[0], panels):
            image = ax.imshow(matrix, cmap="viridis", vmin=0, vmax=vmax, aspect="auto")
            mark_sinks(ax, sinks, on_members=False)
            names = sublayer_names(matrix.shape[0] - 1) + ["head"]
            ax.set_yticks(range(matrix.shape[0]), names, fontsize=7)
            longest = max(sources or [[]], key=len)
            xlabels = ([s.split("^")[0] for s in longest] if len(longest) == matrix.shape[1]
                       else [str(j) for j in range(matrix.shape[1])])
            ax.set_xticks(range(matrix.shape[1]), xlabels, rotation=90, fontsize=7)
            ax.set(title=f"{variant} (n={n})", xlabel="source")
        axes[0][0].set_ylabel("reading layer")
        fig.colorbar(image, ax=list(axes[0]), label="mean α over seeds", shrink=0.9)
        framed = "; red frame: depth-wise sink in at least half the seeds" if any(p[4] for p in panels) else ""
        fig.suptitle(f"Depth mixing α, final step{framed}\n{title} {_group_text(group)}".strip())
        path = out / f"depth_mixing{_suffix(group, len(by_group) > 1)}.png"
        fig.savefig(path, dpi=120)  # constrained layout, not tight_layout: the colorbar spans the panels
        plt.close(fig)
        paths.append(path)
    return paths


def mixing_matrix_plots(records: StudyRecords, title: str, out: Path) -> list[Path]:
    """One figure per cell: every variant's effective mixing matrix M (final step, mean over
    seeds) side by side on one colour scale, the sinks of at least half the seeds framed;
    the taxonomy of residual rules as one picture (see :mod:`.mixing_plots`)."""
    def m_panel(variant: str, recs: list[TrialRecord]) -> Any:
        snaps = [s for s in (_final_snapshot(r) for r in recs) if isinstance(s.get("mixing"), dict)]
        matrix = mean_matrix([s["mixing"]["mean"] for s in snaps])
        if matrix is None:
            return None
        return f"{variant} (n={len(snaps)})", matrix, snaps[0]["mixing"].get("sources"), majority_sinks(snaps)

    by_group = _panels_by_group(records, m_panel)
    paths = []
    for group, panels in by_group:
        path = out / f"mixing_matrix{_suffix(group, len(by_group) > 1)}.png"
        heading = r"Effective depth-mixing matrix M, $h_l = \Sigma_i\, M_{i\to l}\, v_i$ (final step, one colour scale)"
        paths.append(panels_figure(panels, f"{heading}\n{title} {_group_text(group)}".strip(), path))
    return paths


def profile_plots(records: StudyRecords, title: str, out: Path) -> list[Path]:
    """One figure per cell: output RMS and gradient norm per sublayer at the final step, one
    line per variant (mean over seeds, band: min to max over seeds)."""
    cells = _cells(records)
    groups = list(dict.fromkeys(g for g, _, _ in cells))
    paths = []
    for group in groups:
        fig, axes = plt.subplots(1, 2, figsize=(13, 4.8))
        drawn = False
        for ax, key_name, ylabel in ((axes[0], "output_rms", "RMS of sublayer output f_i"),
                                     (axes[1], "grad_norm", "gradient norm")):
            longest = 0
            for g, variant, recs in cells:
                if g != group:
                    continue
                prof = mean_profile([_final_snapshot(r).get(key_name) or [] for r in recs])
                if prof is None:
                    continue
                mean, low, high = prof
                layers = np.arange(1, len(mean) + 1)
                line = ax.plot(layers, mean, "o-", ms=3, label=variant)[0]
                ax.fill_between(layers, low, high, color=line.get_color(), alpha=0.15, lw=0)
                longest = max(longest, len(mean))
                drawn = True
            ax.set_yscale("log")
            ax.set(xlabel="sublayer", ylabel=ylabel, title=f"{ylabel}, mean over seeds (band: min–max)")
            if 0 < longest <= 16:
                ax.set_xticks(range(1, longest + 1), sublayer_names(longest), rotation=45, fontsize=7)
            ax.grid(alpha=0.3, which="both")
            if ax.lines:
                ax.legend(fontsize=8)
        if not drawn:
            plt.close(fig)
            continue
        fig.suptitle(f"Output magnitude and gradient profiles (final step)\n{title} {_group_text(group)}".strip())
        paths.append(save_figure(fig, out / f"profiles{_suffix(group, len(groups) > 1)}.png"))
    return paths
