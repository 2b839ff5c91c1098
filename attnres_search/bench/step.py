"""``attnres-search bench step``: what a training step costs, side by side in one process.

1. Residual rules: one forward + backward + optimizer step of the bare model for the
   baseline, block AttnRes and full AttnRes on the same shapes. Steps are interleaved
   (baseline, block, full, then the next round in a rotated order) so machine drift
   and thermal throttling hit every variant equally; the median after warm-up is kept.
2. Loop overhead: the Lightning trainer that ``train`` uses against a bare PyTorch loop
   doing the same work (same data stream, model, optimizer, schedule, clipping and
   finite-loss check). Per-step time is the interval between consecutive step starts, so
   it includes data loading and every hook; rounds alternate which loop runs first.
"""

from __future__ import annotations

import statistics
import time
from collections.abc import Callable
from typing import Any

import click


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


def _bare_step_fn(cfg: Any, device: Any, autocast: bool) -> Callable[[], None]:
    """A closure doing one full optimizer step of a fresh model on a fixed batch."""
    import torch
    import torch.nn.functional as F

    from attnres_search.model.decoder import AttnResLM
    from attnres_search.training.optim import build_optimizer

    torch.manual_seed(0)
    model = AttnResLM(cfg.model).to(device)
    optimizer = build_optimizer(model, cfg)
    idx = torch.randint(0, cfg.model.vocab_size, (cfg.batch_size, cfg.model.seq_len + 1), device=device)

    def step() -> None:
        with torch.autocast(device.type, dtype=torch.bfloat16, enabled=autocast):
            logits = model(idx[:, :-1])
        loss = F.cross_entropy(logits.flatten(0, 1).float(), idx[:, 1:].flatten())
        loss.backward()
        torch.nn.utils.clip_grad_norm_(model.parameters(), cfg.grad_clip)
        optimizer.step()
        optimizer.zero_grad(set_to_none=True)

    return step


def bench_variants(presets: list[str], shape: dict[str, int], warmup: int, repeats: int, device: Any) -> dict[str, float]:
    """Median milliseconds per optimizer step for each preset, interleaved."""
    steps = {name: _bare_step_fn(_run_config(name, steps=1, **shape), device, device.type == "cuda") for name in presets}
    times: dict[str, list[float]] = {name: [] for name in presets}
    for round_ in range(warmup + repeats):
        order = presets[round_ % len(presets):] + presets[: round_ % len(presets)]
        for name in order:
            _sync(device)
            start = time.perf_counter()
            steps[name]()
            _sync(device)
            if round_ >= warmup:
                times[name].append((time.perf_counter() - start) * 1e3)
    return {name: statistics.median(t) for name, t in times.items()}


def _intervals(starts: list[float], skip: int) -> list[float]:
    return [(b - a) * 1e3 for a, b in zip(starts[skip:], starts[skip + 1 :])]


def _lightning_steps(cfg: Any, warmup: int) -> list[float]:
    import lightning as L

    from attnres_search.training.data import LMDataModule, load_corpus
    from attnres_search.training.lit_module import LitLM
    from attnres_search.training.run import build_trainer, quiet_lightning

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
        trainer = build_trainer(cfg, cfg.steps, [probe], progress=False)
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


def bench_loops(cfg: Any, rounds: int, warmup: int, device: Any) -> dict[str, float]:
    """Median milliseconds per step of the Lightning loop and the bare loop."""
    import torch

    autocast = device.type == "cuda"
    times: dict[str, list[float]] = {"bare": [], "lightning": []}
    deterministic = torch.are_deterministic_algorithms_enabled()
    try:
        for round_ in range(rounds):
            for name in (("bare", "lightning") if round_ % 2 == 0 else ("lightning", "bare")):
                # Same global flags for both: the trainer turns deterministic algorithms on for CPU.
                torch.use_deterministic_algorithms(device.type == "cpu")
                if name == "bare":
                    times[name] += _bare_loop_steps(cfg, warmup, device, autocast)
                else:
                    times[name] += _lightning_steps(cfg, warmup)
    finally:
        torch.use_deterministic_algorithms(deterministic)
    return {name: statistics.median(t) for name, t in times.items()}


def _table(title: str, rows: list[tuple[str, float, float]], ratio_label: str) -> Any:
    from rich.table import Table

    table = Table(title=title)
    for col, justify in (("", "left"), ("ms / step", "right"), (ratio_label, "right")):
        table.add_column(col, justify=justify)  # type: ignore[arg-type]
    for name, ms, ratio in rows:
        table.add_row(name, f"{ms:.2f}", f"{ratio:.3f}x")
    return table


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
def command(layers: int, width: int, heads: int, seq_len: int, batch_size: int, block_preset: str,
            warmup: int, repeats: int, loop_steps: int, rounds: int, threads: int | None) -> None:
    """Time baseline vs block vs full AttnRes steps, and Lightning vs a bare loop."""
    import torch
    from rich.console import Console

    from attnres_search.cli.errors import BadInput

    if loop_steps <= warmup + 1:
        raise BadInput(f"--loop-steps ({loop_steps}) must exceed --warmup + 1 ({warmup + 1})")
    if threads is not None:
        torch.set_num_threads(threads)
    device = torch.device("cuda" if torch.cuda.is_available() else "cpu")
    device_name = torch.cuda.get_device_name(device) if device.type == "cuda" else f"CPU, {torch.get_num_threads()} threads"
    shape = dict(layers=layers, width=width, heads=heads, seq_len=seq_len, batch_size=batch_size)
    try:
        presets = ["baseline", block_preset, "full"]
        variant_ms = bench_variants(presets, shape, warmup, repeats, device)
        loop_ms = bench_loops(_run_config("baseline", steps=loop_steps, **shape), rounds, warmup, device)
    except ValueError as exc:
        raise BadInput(str(exc)) from None

    console = Console()
    shape_text = f"L_b={layers} ({2 * layers} sublayers), d={width}, heads={heads}, T={seq_len}, B={batch_size} on {device_name}"
    base = variant_ms["baseline"]
    console.print(_table(f"optimizer step of the bare model (AdamW), median of {repeats}\n{shape_text}",
                         [(name, ms, ms / base) for name, ms in variant_ms.items()], "vs baseline"))
    console.print(_table(f"training loop, baseline model, median over {rounds} x {loop_steps - warmup - 1} steps",
                         [("bare PyTorch loop", loop_ms["bare"], 1.0),
                          ("Lightning (train's Trainer)", loop_ms["lightning"], loop_ms["lightning"] / loop_ms["bare"])],
                         "vs bare loop"))
