"""Drawing the effective depth-mixing matrix M (rows: the layer reading, columns: the
embedding and every sublayer output) and marking depth-wise sinks, for one run's figures
and for the report's figure of every variant side by side.

Several panels share one colour scale, so a rule's M can be read against another's: the
plain residual's all-ones rows beside AttnRes's rows that sum to one. The scale is
symmetric-logarithmic (linear below ``LINTHRESH``): M spans three decades at
initialisation already (Highway's oldest sources hold 0.88^16 x 0.12 = 0.002 at 16
sublayers, the baseline 1), and trained DenseFormer or hyper-connection weights can be
negative, which then get the blue half of a diverging map.
"""

from __future__ import annotations

import math
from pathlib import Path
from typing import Any, Sequence

import matplotlib

matplotlib.use("Agg")  # files only: never needs a display

import matplotlib.pyplot as plt  # noqa: E402
import numpy as np  # noqa: E402
from matplotlib.colors import Colormap, Normalize, SymLogNorm  # noqa: E402
from matplotlib.patches import Rectangle  # noqa: E402

from attnres_search.training.diagnostics import sublayer_names  # noqa: E402

LINTHRESH = 1e-3
SINK_COLOUR = "red"
PANELS_PER_ROW = 3


def ragged_matrix(rows: Sequence[Sequence[float]]) -> np.ndarray:
    """Lower-triangular rows (row l has l + 1 entries) as a square array, NaN above."""
    width = max(len(r) for r in rows)
    matrix = np.full((len(rows), width), np.nan)
    for i, row in enumerate(rows):
        matrix[i, : len(row)] = row
    return matrix


def shared_scale(matrices: Sequence[np.ndarray]) -> tuple[Normalize, Colormap]:
    """One symmetric-log scale for all panels: 0..max with viridis when no entry is
    negative, -max..max with a diverging map otherwise; NaN (not read) drawn white."""
    values = np.concatenate([m[np.isfinite(m)] for m in matrices]) if matrices else np.zeros(1)
    vmax = float(np.abs(values).max()) if values.size else 1.0
    vmax = vmax if vmax > 0 else 1.0
    if values.size and values.min() < 0:
        norm, cmap = SymLogNorm(LINTHRESH, vmin=-vmax, vmax=vmax, base=10), plt.get_cmap("RdBu_r")
    else:
        norm, cmap = SymLogNorm(LINTHRESH, vmin=0.0, vmax=vmax, base=10), plt.get_cmap("viridis")
    return norm, cmap.with_extremes(bad="white")


def _ticks(n: int) -> list[int]:
    step = 1 if n <= 20 else math.ceil(n / 16)
    return list(range(0, n, step))


def mark_sinks(ax: plt.Axes, sinks: Sequence[dict[str, Any]], on_members: bool) -> None:
    """A red frame on every sink: on its (layer, source) cell of an α heatmap, or on the
    cells of the sublayer outputs it holds (its members) in M."""
    for s in sinks:
        if on_members:
            members = sorted(s.get("members") or [])
            if not members:
                continue
            start, stop = members[0], members[-1]
        else:
            start = stop = s["source"]
        ax.add_patch(Rectangle((start - 0.5, s["point"] - 0.5), stop - start + 1, 1, fill=False,
                               edgecolor=SINK_COLOUR, lw=1.8))


def draw_mixing(ax: plt.Axes, matrix: np.ndarray, norm: Normalize, cmap: Colormap, title: str,
                sources: Sequence[str] | None = None, sinks: Sequence[dict[str, Any]] = (),
                annotate: bool = False) -> Any:
    """One M panel; returns the image (for a colour bar)."""
    image = ax.imshow(matrix, cmap=cmap, norm=norm, aspect="equal", interpolation="nearest")
    n_rows, n_cols = matrix.shape
    names = sublayer_names(n_rows - 1) + ["head"]
    labels = list(sources) if sources and len(sources) == n_cols else ["v0"] + [f"f{j}" for j in range(1, n_cols)]
    ax.set_yticks(_ticks(n_rows), [names[i] for i in _ticks(n_rows)], fontsize=7)
    ax.set_xticks(_ticks(n_cols), [labels[j] for j in _ticks(n_cols)], rotation=90, fontsize=7)
    if annotate:
        for (i, j), value in np.ndenumerate(matrix):
            if np.isfinite(value):
                ax.text(j, i, f"{value:.2f}", ha="center", va="center", fontsize=6,
                        color="white" if norm(value) < 0.5 else "black")
    mark_sinks(ax, sinks, on_members=True)
    ax.set_title(title, fontsize=9)
    return image


def run_mixing_plot(snapshot: dict[str, Any], title: str, path: Path) -> Path:
    """One run's M at its snapshot, sinks (AttnRes rules) framed in red."""
    mixing = snapshot["mixing"]
    matrix = ragged_matrix(mixing["mean"])
    norm, cmap = shared_scale([matrix])
    size = 2.5 + 0.32 * matrix.shape[1]
    fig, ax = plt.subplots(figsize=(size + 1.2, size), layout="constrained")
    sinks = (snapshot.get("sinks") or {}).get("flagged", [])
    heading = f"Effective depth mixing M (step {snapshot.get('step')})" + ("; red frame: sink" if sinks else "")
    image = draw_mixing(ax, matrix, norm, cmap, f"{heading}\n{title}", mixing.get("sources"), sinks,
                        annotate=matrix.shape[0] <= 12)
    ax.set(xlabel="source (v0 = embedding, fi = output of sublayer i)", ylabel="reading layer")
    fig.colorbar(image, ax=ax, label=r"$M_{i\to l}$, mean over tokens (symlog)", shrink=0.9)
    fig.savefig(path, dpi=120)
    plt.close(fig)
    return path


def panels_figure(panels: Sequence[tuple[str, np.ndarray, Sequence[str] | None, Sequence[dict[str, Any]]]],
                  suptitle: str, path: Path) -> Path:
    """Several M panels (title, matrix, source labels, sinks) on one colour scale, three per row."""
    norm, cmap = shared_scale([m for _, m, _, _ in panels])
    n = len(panels)
    cols = min(n, PANELS_PER_ROW)
    rows = math.ceil(n / cols)
    side = 1.6 + 0.2 * max(m.shape[1] for _, m, _, _ in panels)
    fig, axes = plt.subplots(rows, cols, figsize=(side * cols + 1.5, side * rows + 1.0), squeeze=False,
                             layout="constrained")
    image = None
    small = max(m.shape[0] for _, m, _, _ in panels) <= 9 and n <= PANELS_PER_ROW
    for ax, (title, matrix, sources, sinks) in zip(axes.flat, panels):
        image = draw_mixing(ax, matrix, norm, cmap, title, sources, sinks, annotate=small)
    for ax in list(axes.flat)[n:]:
        ax.axis("off")
    for ax in axes[:, 0]:
        ax.set_ylabel("reading layer")
    fig.colorbar(image, ax=list(axes.flat), label=r"$M_{i\to l}$, mean over tokens (symlog)", shrink=0.8)
    if any(sinks for _, _, _, sinks in panels):
        suptitle += "\nred frame: depth-wise sink (the sublayer outputs it holds)"
    fig.suptitle(suptitle, fontsize=10)
    fig.savefig(path, dpi=120)
    plt.close(fig)
    return path
