"""``attnres-search bench step``: what a training step costs, side by side in one process.

1. Residual rules: one forward + backward + optimizer step of the bare model for the
   baseline, block AttnRes, full AttnRes and mHC on the same shapes, eager and (with
   ``--compile``) ``torch.compile``-d, every variant stepping through the same real
   training batches. Steps are interleaved (every row, then the next round in a rotated
   order) so machine drift and thermal throttling hit every row equally; the median after
   warm-up is kept, and the quartiles of the per-round ratios say how much drift there
   was. Ratios are against the baseline in the same mode (compiled rows against the
   compiled baseline).
   ``--path`` times the CUDA training paths of the depth-attention side by side instead
   (:data:`PATHS`: the fused one-shot Triton kernel, the PyTorch block cache, compiled
   with CUDA graphs), each row against the baseline on the same path; which one ``auto``
   trains with is one constant, :data:`attnres_search.kernels.backend.AUTO_ON_CUDA`.
   Every row reports its training TFLOP/s (the model's FLOP count,
   :mod:`attnres_search.model.flops`) and, with a known peak, its MFU
   (:mod:`attnres_search.training.mfu`).
2. Loop overhead: the Lightning trainer that ``train`` uses against a bare PyTorch loop
   doing the same work (same data stream, model, optimizer, schedule, clipping and
   finite-loss check). Per-step time is the interval between consecutive step starts, so
   it includes data loading and every hook; rounds alternate which loop runs first, and
   the quartiles of the per-round ratios say how much the machine drifted (on a busy VM
   one run of four rounds read 1.125x where eight rounds read 1.006x).
"""

from __future__ import annotations

import contextlib
import json
import os
import statistics
import time
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import click

from attnres_search.bench import command_console
from attnres_search.training.config import COMPILE_MODES


def sync_device(device: Any) -> None:
    import torch

    if device.type == "cuda":
        torch.cuda.synchronize(device)


def run_config(preset_name: str, layers: int, width: int, heads: int, seq_len: int, batch_size: int, steps: int) -> Any:
    from attnres_search.model.config import ModelConfig, preset
    from attnres_search.training.config import RunConfig

    model = ModelConfig(vocab_size=256, n_layers=layers, d_model=width, n_heads=heads, seq_len=seq_len, residual=preset(preset_name))
    # No validation or diagnostics inside the timed window: this measures the step loop.
    return RunConfig(model=model, tokens=None, steps=steps, batch_size=batch_size, val_every=10**9, diagnostics_every=10**9)


def training_batches(cfg: Any, count: int, device: Any) -> list[tuple[Any, Any]]:
    """The first ``count`` training batches of the run's corpus, as ``train`` would draw them.

    Every variant steps through the same list: one batch repeated step after step is
    memorised within a few steps, and a model that fits it faster than another drifts into
    a different numerical regime (peaked softmaxes, subnormal intermediates) whose cost
    has nothing to do with its residual rule."""
    import itertools

    from attnres_search.training.data import LMDataModule, load_corpus

    data = LMDataModule(load_corpus(cfg.data), seq_len=cfg.model.seq_len, batch_size=cfg.batch_size, seed=0,
                        val_windows=1)
    return [(x.to(device), y.to(device)) for x, y in itertools.islice(data.train_dataloader(), count)]


def bare_step_fn(cfg: Any, device: Any, autocast: bool, batches: list[tuple[Any, Any]],
                  compile_mode: str | None = None, backend: str | None = None) -> Callable[[], None]:
    """A closure doing one full optimizer step of a fresh model on the next of ``batches``,
    under the depth-attention ``backend`` (None: the one in force) at every call, so that
    rows of different paths can alternate in one process."""
    import itertools

    import torch
    import torch.nn.functional as F

    from attnres_search.kernels.backend import use_backend
    from attnres_search.model.decoder import AttnResLM
    from attnres_search.training.optim import build_optimizer

    torch.manual_seed(0)
    model = AttnResLM(cfg.model).to(device)
    optimizer = build_optimizer(model, cfg)
    if compile_mode is not None:
        model.compile(mode=compile_mode)  # in place, as train --compile does
    stream = itertools.cycle(batches)

    def step() -> None:
        inputs, targets = next(stream)
        with use_backend(backend) if backend is not None else contextlib.nullcontext():  # type: ignore[arg-type]
            with torch.autocast(device.type, dtype=torch.bfloat16, enabled=autocast):
                logits = model(inputs)
            loss = F.cross_entropy(logits.flatten(0, 1).float(), targets.flatten())
            loss.backward()
        torch.nn.utils.clip_grad_norm_(model.parameters(), cfg.grad_clip)
        optimizer.step()
        optimizer.zero_grad(set_to_none=True)

    return step


COMPILED = "+compile"
"""Suffix of a compiled row's key: ``"block-s4+compile"``."""
ON_PATH = "@"
"""Separator of a training path's row key: ``"block-s4@fused"``."""

PATHS: dict[str, tuple[str | None, str | None]] = {
    "fused": ("triton", None),  # eager; one-shot fused Triton kernel per layer on CUDA (kernels/fused.py)
    "block-cache": ("reference", None),  # eager; PyTorch two-phase schedule over one buffer (kernels/block_cache.py)
    "cudagraphs": (None, "reduce-overhead"),  # torch.compile with CUDA graphs, the backend auto picks
}
"""The CUDA training paths of the depth-attention: name -> (kernel backend, or None for the
one in force; torch.compile mode, or None for eager)."""


@dataclass(frozen=True)
class Arm:
    """One row of the variant table: a preset trained on one path."""

    key: str  # "block-s4", "block-s4+compile" or "block-s4@fused"
    preset: str
    backend: str | None = None
    compile_mode: str | None = None


def plan_arms(presets: list[str], compile_mode: str | None = None, paths: tuple[str, ...] = ()) -> list[Arm]:
    """Every preset eager under the backend in force (and compiled, with ``compile_mode``),
    or, with ``paths``, every preset on each of those :data:`PATHS` (and nothing else)."""
    if paths:
        return [Arm(f"{name}{ON_PATH}{path}", name, *PATHS[path]) for path in paths for name in presets]
    arms = [Arm(name, name) for name in presets]
    if compile_mode is not None:
        arms += [Arm(name + COMPILED, name, None, compile_mode) for name in presets]
    return arms


def bench_variants(
    presets: list[str], shape: dict[str, int], warmup: int, repeats: int, device: Any,
    compile_mode: str | None = None, paths: tuple[str, ...] = (),
) -> dict[str, list[float]]:
    """Milliseconds of each timed optimizer step, one per round, for each row of
    :func:`plan_arms` (presets, compiled presets under ``name + COMPILED``, or presets on
    training paths under ``name@path``); every round runs every row once, so entry ``r``
    of two lists was timed side by side."""
    autocast = device.type == "cuda"
    batches = training_batches(run_config(presets[0], steps=1, **shape), warmup + repeats + 1, device)
    steps = {arm.key: bare_step_fn(run_config(arm.preset, steps=1, **shape), device, autocast, batches,
                                    compile_mode=arm.compile_mode, backend=arm.backend)
             for arm in plan_arms(presets, compile_mode, paths)}
    compiled = {arm.key for arm in plan_arms(presets, compile_mode, paths) if arm.compile_mode is not None}
    keys = list(steps)
    for key in keys:
        if key in compiled:
            steps[key]()  # compile outside the timed rounds whatever --warmup says
    times: dict[str, list[float]] = {key: [] for key in keys}
    for round_ in range(warmup + repeats):
        order = keys[round_ % len(keys):] + keys[: round_ % len(keys)]
        for name in order:
            sync_device(device)
            start = time.perf_counter()
            steps[name]()
            sync_device(device)
            if round_ >= warmup:
                times[name].append((time.perf_counter() - start) * 1e3)
    return times


def _intervals(starts: list[float], skip: int) -> list[float]:
    return [(b - a) * 1e3 for a, b in zip(starts[skip:], starts[skip + 1 :])]


def _lightning_steps(cfg: Any, warmup: int) -> list[float]:
    import lightning as L

    from attnres_search.training.data import LMDataModule, load_corpus
    from attnres_search.training.lit_module import LitLM
    from attnres_search.training.trainer import build_trainer, quiet_lightning

    class StepStarts(L.Callback):
        def __init__(self) -> None:
            self.starts: list[float] = []

        def on_train_batch_start(self, trainer: L.Trainer, pl_module: L.LightningModule, batch: Any, batch_idx: int) -> None:
            sync_device(pl_module.device)
            self.starts.append(time.perf_counter())

    with quiet_lightning():
        L.seed_everything(0, verbose=False)
        data = LMDataModule(load_corpus(cfg.data), seq_len=cfg.model.seq_len, batch_size=cfg.batch_size, seed=0, val_windows=1)
        probe = StepStarts()
        trainer = build_trainer(cfg, cfg.steps, [probe])
        trainer.fit(LitLM(cfg, cfg.steps), datamodule=data)
    return _intervals(probe.starts, warmup)


def _bare_loop_steps(cfg: Any, warmup: int, device: Any, autocast: bool) -> list[float]:
    """The loop one would write by hand for the same training."""
    import math

    import torch
    import torch.nn.functional as F

    from attnres_search.training.data import LMDataModule, load_corpus
    from attnres_search.model.decoder import AttnResLM
    from attnres_search.training.optim import build_optimizer, build_scheduler

    torch.manual_seed(0)
    model = AttnResLM(cfg.model).to(device)
    optimizer = build_optimizer(model, cfg)
    scheduler = build_scheduler(optimizer, cfg, cfg.steps)
    data = LMDataModule(load_corpus(cfg.data), seq_len=cfg.model.seq_len, batch_size=cfg.batch_size, seed=0, val_windows=1)
    starts: list[float] = []
    for step, (inputs, targets) in enumerate(data.train_dataloader()):
        if step == cfg.steps:
            break
        sync_device(device)
        starts.append(time.perf_counter())
        inputs, targets = inputs.to(device), targets.to(device)
        with torch.autocast(device.type, dtype=torch.bfloat16, enabled=autocast):
            logits = model(inputs)
        loss = F.cross_entropy(logits.flatten(0, 1).float(), targets.flatten())
        if not math.isfinite(loss.item()):
            raise RuntimeError(f"loss is {loss.item()} at step {step}")
        loss.backward()
        torch.nn.utils.clip_grad_norm_(model.parameters(), cfg.grad_clip)
        optimizer.step()
        scheduler.step()
        optimizer.zero_grad(set_to_none=True)
    return _intervals(starts, warmup)


def bench_loops(cfg: Any, rounds: int, warmup: int, device: Any) -> dict[str, list[list[float]]]:
    """Milliseconds of each timed step of the bare loop and the Lightning loop, one list per
    round; within a round the two loops ran one after the other (alternating which first)."""
    import torch

    autocast = device.type == "cuda"
    times: dict[str, list[list[float]]] = {"bare": [], "lightning": []}
    deterministic = torch.are_deterministic_algorithms_enabled()
    try:
        for round_ in range(rounds):
            for name in (("bare", "lightning") if round_ % 2 == 0 else ("lightning", "bare")):
                # Same global flags for both: the trainer turns deterministic algorithms on for CPU.
                torch.use_deterministic_algorithms(device.type == "cpu")
                if name == "bare":
                    times[name].append(_bare_loop_steps(cfg, warmup, device, autocast))
                else:
                    times[name].append(_lightning_steps(cfg, warmup))
    finally:
        torch.use_deterministic_algorithms(deterministic)
    return times


def _spread(paired: list[float]) -> list[float]:
    """``[p25, median, p75]`` of paired per-round ratios (one value repeated when there is one)."""
    quartiles = statistics.quantiles(paired, n=4) if len(paired) > 1 else paired * 3
    return [quartiles[0], statistics.median(paired), quartiles[2]]


def loop_summary(loop_times: dict[str, list[list[float]]]) -> dict[str, Any]:
    """Median ms per step of each loop over every round, their ratio, and the quartiles of
    the per-round ratios (each round's two loops ran back to back: how far the ratio moved
    while the machine's speed drifted)."""
    bare = statistics.median(t for rnd in loop_times["bare"] for t in rnd)
    lightning = statistics.median(t for rnd in loop_times["lightning"] for t in rnd)
    paired = [statistics.median(lt) / statistics.median(bt) for lt, bt in zip(loop_times["lightning"], loop_times["bare"])]
    return {"bare_ms": bare, "lightning_ms": lightning, "lightning_vs_bare": lightning / bare,
            "lightning_vs_bare_rounds": _spread(paired)}


def _table(title: str, rows: list[tuple[str, float, float, list[float] | None]], ratio_label: str,
           extra: dict[str, list[str]] | None = None) -> Any:
    """A ratio table; ``extra`` adds columns (header -> one cell per row) at the right."""
    from rich.table import Table

    table = Table(title=title)
    spread = any(r[3] is not None for r in rows)
    columns = [("", "left"), ("ms / step", "right"), (ratio_label, "right")]
    columns += [("per-round ratio: p25 / median / p75", "right")] if spread else []
    columns += [(header, "right") for header in extra or {}]
    for col, justify in columns:
        table.add_column(col, justify=justify)  # type: ignore[arg-type]
    for i, (name, ms, ratio, quartiles) in enumerate(rows):
        cells = [name, f"{ms:.2f}", f"{ratio:.3f}x"]
        if spread:
            cells.append("" if quartiles is None else " / ".join(f"{q:.3f}" for q in quartiles))
        cells += [column[i] for column in (extra or {}).values()]
        table.add_row(*cells)
    return table


def _split_key(key: str) -> tuple[str, str | None, bool]:
    """``(preset, path or None, compiled)`` of a row key."""
    if ON_PATH in key:
        name, path = key.split(ON_PATH)
        return name, path, PATHS[path][1] is not None
    if key.endswith(COMPILED):
        return key[: -len(COMPILED)], None, True
    return key, None, False


def variant_rows(variant_times: dict[str, list[float]], flops_per_step: dict[str, float] | None = None,
                 peak: Any = None) -> list[dict[str, Any]]:
    """Machine-readable rows: preset, training path (None: the backend in force), whether
    compiled, median ms per step, the ratio of medians against the baseline on the same
    path or in the same mode and against the eager baseline (None when no eager baseline
    ran), and the quartiles ``[p25, median, p75]`` of the per-round ratios against that
    baseline (each round's steps ran side by side, so their spread says how far one run's
    ratio can be trusted on a machine whose speed drifts). With ``flops_per_step`` (model
    training FLOPs of one step, per key): achieved TFLOP/s, and the MFU against ``peak``
    (a :class:`attnres_search.training.mfu.Peak`, or None: no MFU)."""
    ms = {key: statistics.median(t) for key, t in variant_times.items()}
    eager_base = next((k for k in variant_times if _split_key(k)[0] == "baseline" and not _split_key(k)[2]), None)
    rows = []
    for key, times in variant_times.items():
        name, path, compiled = _split_key(key)
        base_key = f"baseline{ON_PATH}{path}" if path is not None else "baseline" + (COMPILED if compiled else "")
        paired = [t / b for t, b in zip(times, variant_times[base_key])]
        row: dict[str, Any] = {
            "preset": name, "path": path, "compile": compiled, "ms": ms[key],
            "vs_baseline": ms[key] / ms[base_key],
            "vs_eager_baseline": ms[key] / ms[eager_base] if eager_base is not None else None,
            "vs_baseline_rounds": _spread(paired),
        }  # fmt: skip
        if flops_per_step is not None:
            tflops = flops_per_step[key] / (ms[key] / 1e3) / 1e12
            row["tflops"] = tflops
            row["mfu"] = tflops / peak.tflops if peak is not None else None
        rows.append(row)
    return rows


def step_flops(keys: list[str], shape: dict[str, int]) -> dict[str, float]:
    """Model training FLOPs of one optimizer step of each row (its preset at ``shape``)."""
    from attnres_search.model.flops import flops_per_token

    tokens = shape["batch_size"] * shape["seq_len"]
    return {key: flops_per_token(run_config(_split_key(key)[0], steps=1, **shape).model)["train"] * tokens
            for key in keys}


@click.command()
@click.option("--layers", type=click.IntRange(min=1), default=8, show_default=True, help="Transformer blocks L_b.")
@click.option("--width", type=click.IntRange(min=2), default=128, show_default=True)
@click.option("--heads", type=click.IntRange(min=1), default=4, show_default=True)
@click.option("--seq-len", type=click.IntRange(min=1), default=128, show_default=True)
@click.option("--batch-size", type=click.IntRange(min=1), default=8, show_default=True)
@click.option("--block", "block_preset", default="block-s4", show_default=True, help="The block AttnRes preset to time.")
@click.option("--preset", "only", multiple=True,
              help="Time only these presets (repeatable; the baseline is always timed) instead of the baseline, "
                   "--block, full and mhc: fewer graphs to compile on --path cudagraphs.")
@click.option("--warmup", type=click.IntRange(min=0), default=3, show_default=True, help="Untimed steps (per round for loops).")
@click.option("--repeats", type=click.IntRange(min=1), default=20, show_default=True, help="Timed steps per variant.")
@click.option("--loop-steps", type=click.IntRange(min=3), default=40, show_default=True, help="Steps per loop round.")
@click.option("--rounds", type=click.IntRange(min=1), default=4, show_default=True, help="Loop rounds (alternating order).")
@click.option("--threads", type=click.IntRange(min=1), default=None,
              help="CPU threads for torch [default: torch's]. Use 1 on a busy machine: CPU threads that "
                   "outnumber free cores make every step many times slower.")
@click.option("--compile", "compile_too", is_flag=True,
              help="Also time every variant torch.compile-d (rows 'NAME+compile', against the compiled baseline).")
@click.option("--compile-mode", type=click.Choice(COMPILE_MODES), default="default", show_default=True,
              help="torch.compile mode of the compiled rows; reduce-overhead replays CUDA graphs (GPU).")
@click.option("--path", "paths", multiple=True, type=click.Choice(list(PATHS)),
              help="Time every preset on this depth-attention training path instead (repeatable; side by side, "
                   "each against the baseline on its path): fused = one-shot Triton kernel (CUDA, or CPU with "
                   "TRITON_INTERPRET=1), block-cache = PyTorch block cache, cudagraphs = torch.compile "
                   "reduce-overhead.")
@click.option("--peak-tflops", type=click.FloatRange(min=0, min_open=True), default=None,
              help="Device peak in TFLOP/s for the MFU column [default on CUDA: the dense bf16 figure of a known "
                   "GPU; on CPU no MFU unless given].")
@click.option("--no-loops", is_flag=True, help="Skip the Lightning-vs-bare-loop comparison.")
@click.option("--json", "as_json", is_flag=True, help="Print the results as one JSON object instead of tables.")
def command(layers: int, width: int, heads: int, seq_len: int, batch_size: int, block_preset: str,
            only: tuple[str, ...], warmup: int, repeats: int, loop_steps: int, rounds: int, threads: int | None,
            compile_too: bool, compile_mode: str, paths: tuple[str, ...], peak_tflops: float | None,
            no_loops: bool, as_json: bool) -> None:
    """Time baseline vs block vs full AttnRes vs mHC steps, and Lightning vs a bare loop."""
    import torch
    from attnres_search.errors import BadInput
    from attnres_search.training.mfu import device_peak, mfu_text

    if not no_loops and loop_steps <= warmup + 1:
        raise BadInput(f"--loop-steps ({loop_steps}) must exceed --warmup + 1 ({warmup + 1})")
    paths = tuple(dict.fromkeys(paths))
    if paths and compile_too:
        raise BadInput("give --path or --compile, not both (--path cudagraphs is the compiled path)")
    device = torch.device("cuda" if torch.cuda.is_available() else "cpu")
    if "fused" in paths and device.type != "cuda" and os.environ.get("TRITON_INTERPRET") != "1":
        raise BadInput("--path fused runs the Triton kernel: it needs CUDA (or TRITON_INTERPRET=1 on a CPU)")
    if threads is not None:
        torch.set_num_threads(threads)
    device_name = torch.cuda.get_device_name(device) if device.type == "cuda" else f"CPU, {torch.get_num_threads()} threads"
    peak = device_peak(device.type, device_name, peak_tflops)
    shape = dict(layers=layers, width=width, heads=heads, seq_len=seq_len, batch_size=batch_size)
    presets = list(dict.fromkeys(["baseline", *(only or (block_preset, "full", "mhc"))]))
    mode = compile_mode if compile_too else None
    try:
        variant_times = bench_variants(presets, shape, warmup, repeats, device, compile_mode=mode, paths=paths)
        loops = None if no_loops else loop_summary(
            bench_loops(run_config("baseline", steps=loop_steps, **shape), rounds, warmup, device))
    except ValueError as exc:
        raise BadInput(str(exc)) from None

    rows = variant_rows(variant_times, step_flops(list(variant_times), shape), peak)
    if as_json:
        result: dict[str, Any] = {
            "device": device_name, "shape": shape, "warmup": warmup, "repeats": repeats, "rows": rows,
            "compile_mode": mode, "paths": list(paths) or None, "loops": loops,
            "peak_tflops": peak.tflops if peak is not None else None,
            "peak_source": peak.source if peak is not None else None,
        }  # fmt: skip
        click.echo(json.dumps(result, indent=2))
        return
    console = command_console()
    shape_text = f"L_b={layers} ({2 * layers} sublayers), d={width}, heads={heads}, T={seq_len}, B={batch_size} on {device_name}"
    extra = {"TFLOP/s": [f"{r['tflops']:.3g}" for r in rows]}
    if peak is not None:
        extra[f"MFU (peak {peak.tflops:g}, {peak.source})"] = [f"{100 * r['mfu']:.1f}%" for r in rows]
    console.print(_table(f"optimizer step of the bare model (AdamW), median of {repeats}\n{shape_text}",
                         [(r["preset"] + (f" ({r['path']})" if r["path"] else " (compiled)" if r["compile"] else ""),
                           r["ms"], r["vs_baseline"], r["vs_baseline_rounds"]) for r in rows],
                         "vs baseline", extra))  # fmt: skip
    base = next((r for r in rows if r["preset"] == "baseline"), None)
    if peak is not None and base is not None:
        console.print(f"baseline MFU: {mfu_text(base['mfu'], peak)}")
    if loops is not None:
        console.print(_table(f"training loop, baseline model, median over {rounds} x {loop_steps - warmup - 1} steps",
                             [("bare PyTorch loop", loops["bare_ms"], 1.0, None),
                              ("Lightning (train's Trainer)", loops["lightning_ms"], loops["lightning_vs_bare"],
                               loops["lightning_vs_bare_rounds"])],
                             "vs bare loop"))  # fmt: skip
