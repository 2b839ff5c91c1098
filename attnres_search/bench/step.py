"""``attnres-search bench step``: what a training step costs, side by side in one process.

1. Residual rules: one forward + backward + optimizer step of the bare model for the
   baseline, block AttnRes, full AttnRes and mHC on the same shapes, eager and (with
   ``--compile``) ``torch.compile``-d, every variant stepping through the same real
   training batches. Steps are interleaved (every row, then the next round in a rotated
   order) so machine drift and thermal throttling hit every row equally; the median after
   warm-up is kept, and the quartiles of the per-round ratios say how much drift there
   was. Ratios are against the baseline in the same mode (compiled rows against the
   compiled baseline).
2. Loop overhead: the Lightning trainer that ``train`` uses against a bare PyTorch loop
   doing the same work (same data stream, model, optimizer, schedule, clipping and
   finite-loss check). Per-step time is the interval between consecutive step starts, so
   it includes data loading and every hook; rounds alternate which loop runs first, and
   the quartiles of the per-round ratios say how much the machine drifted (on a busy VM
   one run of four rounds read 1.125x where eight rounds read 1.006x).
"""

from __future__ import annotations

import json
import statistics
import time
from collections.abc import Callable
from typing import Any

import click

from attnres_search.bench import command_console
from attnres_search.training.config import COMPILE_MODES


def _sync(device: Any) -> None:
    import torch

    if device.type == "cuda":
        torch.cuda.synchronize(device)


def _run_config(preset_name: str, layers: int, width: int, heads: int, seq_len: int, batch_size: int, steps: int) -> Any:
    from attnres_search.model.config import ModelConfig, preset
    from attnres_search.training.config import RunConfig

    model = ModelConfig(vocab_size=256, n_layers=layers, d_model=width, n_heads=heads, seq_len=seq_len, residual=preset(preset_name))
    # No validation or diagnostics inside the timed window: this measures the step loop.
    return RunConfig(model=model, tokens=None, steps=steps, batch_size=batch_size, val_every=10**9, diagnostics_every=10**9)


def _batches(cfg: Any, count: int, device: Any) -> list[tuple[Any, Any]]:
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


def _bare_step_fn(cfg: Any, device: Any, autocast: bool, batches: list[tuple[Any, Any]],
                  compile_mode: str | None = None) -> Callable[[], None]:
    """A closure doing one full optimizer step of a fresh model on the next of ``batches``."""
    import itertools

    import torch
    import torch.nn.functional as F

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


def bench_variants(
    presets: list[str], shape: dict[str, int], warmup: int, repeats: int, device: Any,
    compile_mode: str | None = None,
) -> dict[str, list[float]]:
    """Milliseconds of each timed optimizer step, one per round, for each preset (and, with a
    ``compile_mode``, each preset compiled in that mode under the key ``name + COMPILED``);
    every round runs every variant once, so entry ``r`` of two lists was timed side by side."""
    autocast = device.type == "cuda"
    batches = _batches(_run_config(presets[0], steps=1, **shape), warmup + repeats + 1, device)
    steps = {name: _bare_step_fn(_run_config(name, steps=1, **shape), device, autocast, batches) for name in presets}
    if compile_mode is not None:
        for name in presets:
            steps[name + COMPILED] = _bare_step_fn(_run_config(name, steps=1, **shape), device, autocast, batches,
                                                   compile_mode=compile_mode)
    keys = list(steps)
    for key in keys:
        if key.endswith(COMPILED):
            steps[key]()  # compile outside the timed rounds whatever --warmup says
    times: dict[str, list[float]] = {key: [] for key in keys}
    for round_ in range(warmup + repeats):
        order = keys[round_ % len(keys):] + keys[: round_ % len(keys)]
        for name in order:
            _sync(device)
            start = time.perf_counter()
            steps[name]()
            _sync(device)
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
            _sync(pl_module.device)
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
        _sync(device)
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


def _table(title: str, rows: list[tuple[str, float, float, list[float] | None]], ratio_label: str) -> Any:
    from rich.table import Table

    table = Table(title=title)
    spread = any(r[3] is not None for r in rows)
    columns = [("", "left"), ("ms / step", "right"), (ratio_label, "right")]
    for col, justify in columns + ([("per-round ratio: p25 / median / p75", "right")] if spread else []):
        table.add_column(col, justify=justify)  # type: ignore[arg-type]
    for name, ms, ratio, quartiles in rows:
        cells = [name, f"{ms:.2f}", f"{ratio:.3f}x"]
        if spread:
            cells.append("" if quartiles is None else " / ".join(f"{q:.3f}" for q in quartiles))
        table.add_row(*cells)
    return table


def variant_rows(variant_times: dict[str, list[float]]) -> list[dict[str, Any]]:
    """Machine-readable rows: preset, whether compiled, median ms per step, the ratio of
    medians against the baseline in the same mode and against the eager baseline, and the
    quartiles ``[p25, median, p75]`` of the per-round ratios against the baseline in the same
    mode (each round's steps ran side by side, so their spread says how far one run's ratio
    can be trusted on a machine whose speed drifts)."""
    ms = {key: statistics.median(t) for key, t in variant_times.items()}
    rows = []
    for key, times in variant_times.items():
        compiled = key.endswith(COMPILED)
        name = key[: -len(COMPILED)] if compiled else key
        base_key = "baseline" + (COMPILED if compiled else "")
        paired = [t / b for t, b in zip(times, variant_times[base_key])]
        rows.append({
            "preset": name, "compile": compiled, "ms": ms[key],
            "vs_baseline": ms[key] / ms[base_key], "vs_eager_baseline": ms[key] / ms["baseline"],
            "vs_baseline_rounds": _spread(paired),
        })  # fmt: skip
    return rows


@click.command()
@click.option("--layers", type=click.IntRange(min=1), default=8, show_default=True, help="Transformer blocks L_b.")
@click.option("--width", type=click.IntRange(min=2), default=128, show_default=True)
@click.option("--heads", type=click.IntRange(min=1), default=4, show_default=True)
@click.option("--seq-len", type=click.IntRange(min=1), default=128, show_default=True)
@click.option("--batch-size", type=click.IntRange(min=1), default=8, show_default=True)
@click.option("--block", "block_preset", default="block-s4", show_default=True, help="The block AttnRes preset to time.")
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
@click.option("--no-loops", is_flag=True, help="Skip the Lightning-vs-bare-loop comparison.")
@click.option("--json", "as_json", is_flag=True, help="Print the results as one JSON object instead of tables.")
def command(layers: int, width: int, heads: int, seq_len: int, batch_size: int, block_preset: str,
            warmup: int, repeats: int, loop_steps: int, rounds: int, threads: int | None,
            compile_too: bool, compile_mode: str, no_loops: bool, as_json: bool) -> None:
    """Time baseline vs block vs full AttnRes vs mHC steps, and Lightning vs a bare loop."""
    import torch
    from attnres_search.errors import BadInput

    if not no_loops and loop_steps <= warmup + 1:
        raise BadInput(f"--loop-steps ({loop_steps}) must exceed --warmup + 1 ({warmup + 1})")
    if threads is not None:
        torch.set_num_threads(threads)
    device = torch.device("cuda" if torch.cuda.is_available() else "cpu")
    device_name = torch.cuda.get_device_name(device) if device.type == "cuda" else f"CPU, {torch.get_num_threads()} threads"
    shape = dict(layers=layers, width=width, heads=heads, seq_len=seq_len, batch_size=batch_size)
    presets = list(dict.fromkeys(["baseline", block_preset, "full", "mhc"]))
    mode = compile_mode if compile_too else None
    try:
        variant_times = bench_variants(presets, shape, warmup, repeats, device, compile_mode=mode)
        loops = None if no_loops else loop_summary(
            bench_loops(_run_config("baseline", steps=loop_steps, **shape), rounds, warmup, device))
    except ValueError as exc:
        raise BadInput(str(exc)) from None

    rows = variant_rows(variant_times)
    if as_json:
        result: dict[str, Any] = {
            "device": device_name, "shape": shape, "warmup": warmup, "repeats": repeats, "rows": rows,
            "compile_mode": mode, "loops": loops,
        }  # fmt: skip
        click.echo(json.dumps(result, indent=2))
        return
    console = command_console()
    shape_text = f"L_b={layers} ({2 * layers} sublayers), d={width}, heads={heads}, T={seq_len}, B={batch_size} on {device_name}"
    console.print(_table(f"optimizer step of the bare model (AdamW), median of {repeats}\n{shape_text}",
                         [(r["preset"] + (" (compiled)" if r["compile"] else ""), r["ms"], r["vs_baseline"],
                           r["vs_baseline_rounds"]) for r in rows],
                         "vs baseline"))  # fmt: skip
    if loops is not None:
        console.print(_table(f"training loop, baseline model, median over {rounds} x {loop_steps - warmup - 1} steps",
                             [("bare PyTorch loop", loops["bare_ms"], 1.0, None),
                              ("Lightning (train's Trainer)", loops["lightning_ms"], loops["lightning_vs_bare"],
                               loops["lightning_vs_bare_rounds"])],
                             "vs bare loop"))  # fmt: skip
