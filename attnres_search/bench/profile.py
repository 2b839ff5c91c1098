"""``attnres-search bench profile``: where a training step's time goes, rule by rule.

``bench step`` says how much slower a residual rule makes a step; this says why, from one
``torch.profiler`` trace per row (the same bare optimizer step and real batches as ``bench
step``):

- **launches**: device kernels per step on CUDA (dispatcher-level ATen calls on a CPU), and
  the rule's extra per sublayer against the baseline. Each launch costs the host a few
  microseconds; tens of small launches per sublayer can outweigh the work they launch.
- **host overhead**: on CUDA, the share of the step's wall time in which no kernel ran
  (1 − busy / wall, busy being the union of kernel intervals), and the host's own op time.
  A step whose host time exceeds its device time is host-bound: CUDA graphs or fewer,
  larger kernels help, a faster kernel does not.
- **bytes**: the least the residual stream must move, from the rule's source plan (what
  every sublayer reads): forward reads each source and writes the sublayer's input,
  backward reads the sources, the incoming gradient and the saved input and writes each
  source's gradient (the convention of ``bench kernels``), with a float32 stream. Over
  the device's copy bandwidth that is the rule's time floor, to hold against its extra
  device time.
"""

from __future__ import annotations

import gzip
import json
import statistics
import time
from pathlib import Path
from typing import Any

import click

from attnres_search.bench import command_console
from attnres_search.bench.step import PATHS, bare_step_fn, run_config, sync_device, training_batches

PROFILE_PATHS = tuple(name for name, (_, mode) in PATHS.items() if mode is None)
"""The eager training paths (a compiled step's trace shows the compiler, not the rule)."""
STREAM_BYTES = 4
"""Bytes per element of the residual stream: ``train`` keeps it in float32 under autocast."""


def busy_time(intervals: list[tuple[float, float]]) -> float:
    """Length of the union of ``(start, end)`` intervals: the time a device was running
    anything, however many kernels overlapped."""
    total, end = 0.0, float("-inf")
    for start, stop in sorted(intervals):
        if stop <= end:
            continue
        total += stop - max(start, end)
        end = stop
    return total


def mixing_bytes(preset_name: str, shape: dict[str, int]) -> int:
    """The least bytes the residual rule moves in one training step (module docstring)."""
    from attnres_search.residual.registry import spec_for

    cfg = run_config(preset_name, steps=1, **shape).model
    plan = spec_for(cfg.residual).source_plan(cfg.residual, cfg.n_sublayers)
    tensor = shape["batch_size"] * shape["seq_len"] * shape["width"] * STREAM_BYTES
    sources = sum(len(read) for read in plan.sources)
    points = len(plan.sources)
    return (sources + points) * tensor + (2 * sources + 2 * points) * tensor  # forward + backward


def _outermost_aten(events: Any) -> int:
    """ATen calls made by the dispatcher for the step itself, not inside another ATen op."""
    count = 0
    for event in events:
        if not event.name.startswith("aten::"):
            continue
        parent = event.cpu_parent
        while parent is not None and not parent.name.startswith("aten::"):
            parent = parent.cpu_parent
        count += parent is None
    return count


def summarize(events: Any, steps: int, cuda: bool, top: int) -> dict[str, Any]:
    """Per-step figures of one profiled row: device kernels (or ATen calls), device busy
    time, host op time and the ``top`` ops by self time (device time on CUDA)."""
    from torch.autograd import DeviceType

    kernels = [e for e in events if e.device_type == DeviceType.CUDA] if cuda else []
    host_us = sum(e.self_cpu_time_total for e in events if e.device_type == DeviceType.CPU)
    by_name: dict[str, list[float]] = {}
    for event in kernels if cuda else (e for e in events if e.device_type == DeviceType.CPU):
        spent = (event.time_range.end - event.time_range.start) if cuda else event.self_cpu_time_total
        by_name.setdefault(event.name, []).append(spent)
    ranked = sorted(by_name.items(), key=lambda item: -sum(item[1]))[:top]
    return {
        "launches": (len(kernels) if cuda else _outermost_aten(events)) / steps,
        "device_ms": busy_time([(e.time_range.start, e.time_range.end) for e in kernels]) / 1e3 / steps
        if cuda else None,
        "host_ms": host_us / 1e3 / steps,
        "top": [{"name": name, "ms": sum(spent) / 1e3 / steps, "calls": len(spent) / steps}
                for name, spent in ranked],
    }  # fmt: skip


def profile_row(preset_name: str, path: str | None, shape: dict[str, int], warmup: int, steps: int, top: int,
                device: Any, trace_dir: Path | None) -> dict[str, Any]:
    """Time ``steps`` steps un-profiled (the wall time), then profile as many."""
    import torch
    from torch.profiler import ProfilerActivity, profile

    cuda = device.type == "cuda"
    cfg = run_config(preset_name, steps=1, **shape)
    step = bare_step_fn(cfg, device, cuda, training_batches(cfg, warmup + 2 * steps, device),
                         backend=PATHS[path][0] if path is not None else None)
    for _ in range(warmup):
        step()
    times = []
    for _ in range(steps):
        sync_device(device)
        start = time.perf_counter()
        step()
        sync_device(device)
        times.append((time.perf_counter() - start) * 1e3)
    activities = [ProfilerActivity.CPU] + ([ProfilerActivity.CUDA] if cuda else [])
    with profile(activities=activities) as prof:
        for _ in range(steps):
            step()
        sync_device(device)
    row: dict[str, Any] = {"preset": preset_name, "path": path, "wall_ms": statistics.median(times),
                           **summarize(prof.events(), steps, cuda, top)}
    row["idle_fraction"] = max(0.0, 1 - row["device_ms"] / row["wall_ms"]) if cuda else None
    row["mixing_bytes"] = mixing_bytes(preset_name, shape)
    if trace_dir is not None:
        trace_dir.mkdir(parents=True, exist_ok=True)
        raw = trace_dir / f"{preset_name}{'@' + path if path else ''}.json"
        prof.export_chrome_trace(str(raw))
        with raw.open("rb") as src, gzip.open(f"{raw}.gz", "wb") as dst:
            dst.write(src.read())
        raw.unlink()
        row["trace"] = f"{raw}.gz"
    return row


def against_baseline(rows: list[dict[str, Any]], n_sublayers: int, bandwidth: float | None) -> None:
    """Add each row's extra launches per sublayer, extra device ms and its bytes' time floor
    against the baseline on the same path (in place)."""
    base = {row["path"]: row for row in rows if row["preset"] == "baseline"}
    for row in rows:
        ref = base.get(row["path"])
        row["extra_launches_per_sublayer"] = (row["launches"] - ref["launches"]) / n_sublayers if ref else None
        row["extra_device_ms"] = (row["device_ms"] - ref["device_ms"]
                                  if ref is not None and row["device_ms"] is not None else None)
        extra_bytes = row["mixing_bytes"] - ref["mixing_bytes"] if ref is not None else None
        row["extra_bytes_floor_ms"] = (extra_bytes / bandwidth * 1e3
                                       if bandwidth and extra_bytes is not None else None)


@click.command()
@click.option("--layers", type=click.IntRange(min=1), default=8, show_default=True, help="Transformer blocks L_b.")
@click.option("--width", type=click.IntRange(min=2), default=128, show_default=True)
@click.option("--heads", type=click.IntRange(min=1), default=4, show_default=True)
@click.option("--seq-len", type=click.IntRange(min=1), default=128, show_default=True)
@click.option("--batch-size", type=click.IntRange(min=1), default=8, show_default=True)
@click.option("--preset", "presets", multiple=True, default=("baseline", "block-s4", "full", "mhc"),
              show_default=True, help="Residual presets to profile (repeatable); the baseline is added if missing.")
@click.option("--path", "paths", multiple=True, type=click.Choice(list(PROFILE_PATHS)),
              help="Eager depth-attention path (repeatable) [default: the backend in force].")
@click.option("--warmup", type=click.IntRange(min=0), default=3, show_default=True, help="Untimed steps first.")
@click.option("--steps", type=click.IntRange(min=1), default=5, show_default=True,
              help="Steps timed, then as many profiled.")
@click.option("--top", type=click.IntRange(min=0), default=6, show_default=True, help="Ops listed per row.")
@click.option("--trace", "trace_dir", type=click.Path(file_okay=False, path_type=Path), default=None,
              help="Also write each row's Chrome trace here (gzipped; chrome://tracing or Perfetto opens it).")
@click.option("--threads", type=click.IntRange(min=1), default=None, help="CPU threads for torch [default: torch's].")
@click.option("--json", "as_json", is_flag=True, help="Print the results as one JSON object instead of tables.")
def command(layers: int, width: int, heads: int, seq_len: int, batch_size: int, presets: tuple[str, ...],
            paths: tuple[str, ...], warmup: int, steps: int, top: int, trace_dir: Path | None, threads: int | None,
            as_json: bool) -> None:
    """Profile one training step per rule: launches, host overhead, bytes (what bench step cannot say)."""
    import os

    import torch

    from attnres_search.errors import BadInput
    from attnres_search.residual.presets import preset

    for name in presets:
        try:
            preset(name)
        except ValueError as exc:
            raise BadInput(f"--preset: {exc}") from None
    device = torch.device("cuda" if torch.cuda.is_available() else "cpu")
    if "fused" in paths and device.type != "cuda" and os.environ.get("TRITON_INTERPRET") != "1":
        raise BadInput("--path fused runs the Triton kernel: it needs CUDA (or TRITON_INTERPRET=1 on a CPU)")
    if threads is not None:
        torch.set_num_threads(threads)
    shape = dict(layers=layers, width=width, heads=heads, seq_len=seq_len, batch_size=batch_size)
    names = list(dict.fromkeys(["baseline", *presets]))
    bandwidth = None
    if device.type == "cuda":
        from attnres_search.bench.kernels import copy_bandwidth

        bandwidth = copy_bandwidth(warmup=2, repeats=5)
    try:
        rows = [profile_row(name, path, shape, warmup, steps, top, device, trace_dir)
                for path in (paths or (None,)) for name in names]
    except ValueError as exc:
        raise BadInput(str(exc)) from None
    against_baseline(rows, 2 * layers, bandwidth)
    device_name = torch.cuda.get_device_name(device) if device.type == "cuda" else f"CPU, {torch.get_num_threads()} threads"
    if as_json:
        click.echo(json.dumps({"device": device_name, "shape": shape, "warmup": warmup, "steps": steps,
                               "copy_bandwidth_gbs": bandwidth / 1e9 if bandwidth else None, "rows": rows}, indent=2))
        return
    _print(rows, device_name, shape, steps, bandwidth)


def _print(rows: list[dict[str, Any]], device_name: str, shape: dict[str, int], steps: int,
           bandwidth: float | None) -> None:
    from rich.table import Table

    console = command_console()
    cuda = rows[0]["device_ms"] is not None
    unit = "kernels" if cuda else "ATen calls"
    table = Table(title=f"one optimizer step, {steps} profiled (L_b={shape['layers']}, d={shape['width']}, "
                        f"T={shape['seq_len']}, B={shape['batch_size']} on {device_name})")
    for header in ("rule", "wall ms", "device ms" if cuda else "op ms (host)", "idle" if cuda else "",
                   f"{unit}/step", f"extra {unit}/sublayer", "stream MB", "extra ms floor" if bandwidth else ""):
        if header:
            table.add_column(header, justify="left" if header == "rule" else "right")
    for row in rows:
        cells = [row["preset"] + (f" ({row['path']})" if row["path"] else ""), f"{row['wall_ms']:.2f}",
                 f"{row['device_ms']:.2f}" if cuda else f"{row['host_ms']:.2f}"]
        if cuda:
            cells.append(f"{100 * row['idle_fraction']:.0f}%")
        extra = row["extra_launches_per_sublayer"]
        cells += [f"{row['launches']:.0f}", "—" if row["preset"] == "baseline" or extra is None else f"{extra:+.1f}",
                  f"{row['mixing_bytes'] / 1e6:.1f}"]
        if bandwidth:
            floor = row["extra_bytes_floor_ms"]
            cells.append("—" if row["preset"] == "baseline" or floor is None else f"{floor:.3f}")
        table.add_row(*cells)
    console.print(table)
    if cuda:
        console.print("host op time per step: " + ", ".join(f"{r['preset']} {r['host_ms']:.2f} ms" for r in rows)
                      + "; a row whose host time exceeds its device time is host-bound")
    for row in rows:
        if row["top"]:
            ops = "; ".join(f"{op['name'][:60]} {op['ms']:.2f} ms ×{op['calls']:.0f}" for op in row["top"])
            console.print(f"{row['preset']} top ops by {'device' if cuda else 'self CPU'} time: {ops}",
                          markup=False, highlight=False)
