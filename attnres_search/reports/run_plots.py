"""PNG figures of one run: loss curves, per-layer output magnitude and gradient norm
profiles (the paper's Figure 5 for a single run), the depth-mixing heatmap of AttnRes
rules, and the effective mixing matrix M of every rule."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import matplotlib

matplotlib.use("Agg")  # files only: never needs a display

import matplotlib.pyplot as plt  # noqa: E402
import numpy as np  # noqa: E402

from attnres_search.reports.mixing_plots import mark_sinks, run_mixing_plot  # noqa: E402
from attnres_search.residual import ResidualConfig, spec_for  # noqa: E402
from attnres_search.training.diagnostics import sublayer_names  # noqa: E402


def _variant_label(config: dict[str, Any]) -> str:
    model = config.get("model", {})
    n_layers = model.get("n_layers")
    try:  # the rule's own label; a run file from an unknown rule still plots
        cfg = ResidualConfig.from_dict(model.get("residual", {}), lenient=True)
        rule = spec_for(cfg).label(cfg, 2 * n_layers if n_layers else None)
    except ValueError:
        rule = str(model.get("residual", {}).get("kind", "?"))
    return f"{rule} | L_b={n_layers} d={model.get('d_model')} seed={config.get('seed')}"


def _snapshots(run: dict[str, Any], run_json: Path) -> list[dict[str, Any]]:
    """All diagnostics snapshots when the JSON file is found, else the final one kept in
    the run record (the file may have stayed on the machine that trained)."""
    candidates = [run_json.parent / "diagnostics.json"]
    if run.get("diagnostics_path"):
        candidates.insert(0, Path(run["diagnostics_path"]))
    for path in candidates:
        if path.is_file():
            return json.loads(path.read_text())["snapshots"]
    summary = run.get("diagnostics_summary") or {}
    return [summary] if summary else []


def _save(fig: plt.Figure, path: Path) -> Path:
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)
    return path


def _loss_plot(run: dict[str, Any], title: str, path: Path) -> Path:
    fig, ax = plt.subplots(figsize=(7, 4.5))
    if run.get("train_curve"):
        steps, losses = zip(*run["train_curve"])
        ax.plot(steps, losses, lw=1, alpha=0.6, label="train")
    if run.get("val_curve"):
        steps, losses = zip(*[(point[0], point[1]) for point in run["val_curve"]])
        ax.plot(steps, losses, "o-", ms=3, label="validation")
    ax.set(xlabel="global step", ylabel="loss (nats/token)", title=f"Loss\n{title}")
    ax.grid(alpha=0.3)
    ax.legend()
    return _save(fig, path)


def _profile_plot(snapshots: list[dict[str, Any]], key: str, ylabel: str, title: str, path: Path) -> Path:
    """One line per snapshot, later steps darker; the final snapshot drawn boldest."""
    fig, ax = plt.subplots(figsize=(7, 4.5))
    names = sublayer_names(len(snapshots[-1][key]))
    colors = plt.cm.Blues(np.linspace(0.35, 1.0, len(snapshots)))
    for i, (snap, color) in enumerate(zip(snapshots, colors)):
        final = i == len(snapshots) - 1
        ax.plot(range(1, len(snap[key]) + 1), snap[key], "o-" if final else "-", color=color,
                lw=2 if final else 1, alpha=1 if final else 0.5, ms=3, label=f"step {snap['step']}" if final or i == 0 else None)
    ax.set_yscale("log")
    ax.set(xlabel="layer (sublayer index)", ylabel=ylabel, title=title)
    if len(names) <= 16:
        ax.set_xticks(range(1, len(names) + 1), names, rotation=45)
    ax.grid(alpha=0.3, which="both")
    ax.legend()
    return _save(fig, path)


def _alpha_plot(snapshot: dict[str, Any], title: str, path: Path) -> Path:
    """Rows: aggregation points (each layer's input, then the head's); columns: source
    position (b0 = embedding, then blocks in order, the partial sum last)."""
    rows = snapshot["alpha"]
    width = max(len(r) for r in rows)
    matrix = np.full((len(rows), width), np.nan)
    for i, row in enumerate(rows):
        matrix[i, : len(row)] = row
    fig, ax = plt.subplots(figsize=(1.5 + 0.45 * width, 1.5 + 0.3 * len(rows)))
    image = ax.imshow(matrix, cmap="viridis", vmin=0, aspect="auto")
    names = sublayer_names(len(rows) - 1) + ["head"]
    longest = max(snapshot.get("sources") or [[]], key=len)
    xlabels = [s.split("^")[0] for s in longest] if len(longest) == width else [str(j) for j in range(width)]
    ax.set_xticks(range(width), xlabels, rotation=45)
    ax.set_yticks(range(len(rows)), names)
    if matrix.size <= 400:
        for (i, j), value in np.ndenumerate(matrix):
            if not np.isnan(value):
                ax.text(j, i, f"{value:.2f}", ha="center", va="center", fontsize=7,
                        color="white" if value < np.nanmax(matrix) / 2 else "black")
    sinks = (snapshot.get("sinks") or {}).get("flagged", [])
    mark_sinks(ax, sinks, on_members=False)
    heading = f"Depth mixing α (step {snapshot['step']})" + ("; red frame: depth-wise sink" if sinks else "")
    ax.set(xlabel="source", ylabel="reading layer", title=f"{heading}\n{title}")
    fig.colorbar(image, ax=ax, label="mean α")
    return _save(fig, path)


def _is_curve(value: Any) -> bool:
    """A list of ``[step, loss]`` number pairs (``[step, loss, elapsed_s]`` triples too)."""
    return isinstance(value, list) and all(
        isinstance(p, list) and len(p) in (2, 3) and all(isinstance(x, (int, float)) and not isinstance(x, bool) for x in p)
        for p in value
    )


def read_run_file(path: Path) -> dict[str, Any]:
    """The run record in ``path`` (``run.json`` from ``train --out``), or ``ValueError`` with
    one line saying why it is not one: unreadable, not JSON, or JSON without a run's
    ``config`` object and ``[step, loss]`` curves."""
    where = str(path)
    try:
        run = json.loads(path.read_text())
    except (OSError, UnicodeDecodeError) as exc:
        raise ValueError(f"cannot read run file {where!r}: {exc}") from None
    except json.JSONDecodeError as exc:
        raise ValueError(f"cannot read run file {where!r}: not JSON ({exc.msg} at line {exc.lineno})") from None
    if not isinstance(run, dict):
        raise ValueError(f"{where!r} is not a run file: expected a JSON object, got a {type(run).__name__}")
    missing = [key for key in ("config", "val_curve") if key not in run]
    if missing:
        raise ValueError(f"{where!r} is not a run file: no {' or '.join(map(repr, missing))} (write one with train --out)")
    if not isinstance(run["config"], dict):
        raise ValueError(f"{where!r} is not a run file: 'config' is not an object")
    for key in ("val_curve", "train_curve"):
        if key in run and not _is_curve(run[key]):
            raise ValueError(f"{where!r} is not a run file: {key!r} is not a list of [step, loss] pairs")
    return run


def plot_run(run_json_path: str | Path, out_dir: str | Path) -> list[Path]:
    """Write the run's figures into ``out_dir`` and return their paths. The effective
    mixing matrix M (``mixing.png``) is drawn for every rule whose diagnostics recorded it;
    the heatmap of α over the rule's own sources (``depth_mixing.png``) exists only for
    AttnRes rules (others have no α)."""
    run_json = Path(run_json_path)
    run = read_run_file(run_json)
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    title = _variant_label(run.get("config", {}))
    paths = [_loss_plot(run, title, out / "loss.png")]
    snapshots = _snapshots(run, run_json)
    if snapshots:
        paths.append(_profile_plot(snapshots, "output_rms", "RMS of sublayer output f_i", f"Output magnitude\n{title}", out / "output_rms.png"))
        paths.append(_profile_plot(snapshots, "grad_norm", "gradient norm", f"Gradient norm per layer\n{title}", out / "grad_norm.png"))
        final = snapshots[-1]
        if final.get("alpha") and all(row is not None for row in final["alpha"]):
            paths.append(_alpha_plot(final, title, out / "depth_mixing.png"))
        if isinstance(final.get("mixing"), dict):
            paths.append(run_mixing_plot(final, title, out / "mixing.png"))
    return paths
