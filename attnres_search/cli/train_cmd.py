"""``attnres-search train`` (one run, a summary table or JSON) and ``attnres-search plot``
(the figures of a finished run). Heavy imports happen inside the commands."""

from __future__ import annotations

import json
import sys
from typing import Any

import click

from attnres_search.cli.errors import BadInput
from attnres_search.cli.options import TOKENS, preset_option
from attnres_search.cli.terminal import error, stderr_console, stdout_console
from attnres_search.training.config import COMPILE_MODES, LOGGERS
from attnres_search.units import format_count as _si


def _summary_table(result: Any, peak_tflops: float | None = None) -> Any:
    from rich.table import Table

    from attnres_search.training.mfu import achieved_tflops, mfu_text, run_mfu

    table = Table(title="training run", show_header=False)
    table.add_column(style="bold")
    table.add_column(justify="right")
    rows = [
        ("parameters", f"{_si(result.params_total)} ({_si(result.params_non_embedding)} non-embedding)"),
        ("FLOPs / token (train)", _si(result.flops_per_token)),
        ("FLOPs total", _si(result.flops_total)),
        ("tokens / steps", f"{_si(result.tokens)} / {result.steps}"),
        ("tokens / s", _si(result.tokens_per_s)),
        ("training TFLOP/s", f"{achieved_tflops(result.flops_per_token, result.tokens_per_s):.3g}"),
        ("final val loss", f"{result.final_val_loss:.4f}"),
        ("best val loss", f"{result.best_val_loss:.4f}"),
        ("final val bits/byte", f"{result.final_val_bpb:.4f}" if result.final_val_bpb is not None else "n/a (not byte-level)"),
        ("wall time", f"{result.wall_time_s:.1f} s"),
        ("device", result.device_name),
        ("data hash", (result.data_hash or "")[:16]),
    ]
    peak, value = run_mfu(result.flops_per_token, result.tokens_per_s, result.device_name,
                          int(result.config.get("devices") or 1), peak_tflops)
    if value is not None:  # a CPU has no datasheet peak: only with --peak-tflops
        rows.insert(rows.index(next(r for r in rows if r[0] == "training TFLOP/s")) + 1, ("MFU", mfu_text(value, peak)))
    if result.resumed_from_step is not None:
        rows.append(("resumed from step", str(result.resumed_from_step)))
    if result.config.get("out_dir"):
        rows.append(("written to", str(result.config["out_dir"])))
    for name, value in rows:
        table.add_row(name, value)
    return table


@click.command()
@preset_option()
@click.option("--layers", "n_layers", type=click.IntRange(min=1), default=4, show_default=True,
              help="Transformer blocks L_b (the residual rule sees 2·L_b sublayers).")
@click.option("--width", "d_model", type=click.IntRange(min=2), default=128, show_default=True, help="d_model.")
@click.option("--heads", "n_heads", type=click.IntRange(min=1), default=4, show_default=True)
@click.option("--seq-len", type=click.IntRange(min=1), default=256, show_default=True)
@click.option("--vocab", "vocab_size", type=click.IntRange(min=2), default=None,
              help="Model vocabulary [default: the data's: 256 for bytes, the shards' vocab option].")
@click.option("--batch-size", type=click.IntRange(min=1), default=16, show_default=True, help="Sequences per step and device.")
@click.option("--tokens", type=TOKENS, default="1M", show_default=True, help="Token budget (500k, 2M, 1.5B).")
@click.option("--steps", type=click.IntRange(min=1), default=None, help="Train this many steps instead of a token budget.")
@click.option("--data", default="pystdlib", show_default=True, help="pystdlib | text:PATH | shards:GLOB[?vocab=N] | hf:NAME[:CONFIG].")
@click.option("--seed", type=click.IntRange(min=0), default=0, show_default=True)
@click.option("--optimizer", type=click.Choice(["adamw", "muon"]), default="adamw", show_default=True)
@click.option("--lr", type=float, default=3e-3, show_default=True, help="AdamW learning rate.")
@click.option("--muon-lr", type=float, default=0.02, show_default=True, help="Muon learning rate (hidden matrices).")
@click.option("--weight-decay", type=float, default=0.1, show_default=True)
@click.option("--schedule", type=click.Choice(["wsd", "cosine"]), default="wsd", show_default=True)
@click.option("--warmup-frac", type=float, default=0.05, show_default=True)
@click.option("--decay-frac", type=float, default=0.2, show_default=True, help="WSD: fraction of steps in the final decay.")
@click.option("--grad-clip", type=float, default=1.0, show_default=True, help="Global gradient-norm clip (0: none).")
@click.option("--val-every", type=click.IntRange(min=1), default=50, show_default=True)
@click.option("--val-windows", type=click.IntRange(min=1), default=32, show_default=True)
@click.option("--diagnostics-every", type=click.IntRange(min=1), default=100, show_default=True)
@click.option("--precision", default="auto", show_default=True, help="auto (bf16-mixed on GPU, 32-true on CPU) or a Lightning precision.")
@click.option("--compile/--no-compile", default=False, show_default=True, help="torch.compile the model.")
@click.option("--compile-mode", type=click.Choice(COMPILE_MODES), default=None,
              help="torch.compile mode (implies --compile): reduce-overhead replays CUDA graphs.")
@click.option("--devices", type=click.IntRange(min=1), default=1, show_default=True, help="GPUs for this run (DDP when > 1).")
@click.option("--out", "out_dir", type=click.Path(file_okay=False), default=None, help="Write run.json, diagnostics.json, checkpoints here.")
@click.option("--ckpt-every", type=click.IntRange(min=1), default=None, help="Checkpoint every N steps (needs --out).")
@click.option("--resume", is_flag=True, help="Continue from --out's last checkpoint when there is one.")
@click.option("--logger", "logger", multiple=True, type=click.Choice(LOGGERS),
              help="Also log to this Lightning logger (repeatable): tensorboard, csv, wandb (offline unless "
                   "WANDB_MODE=online), mlflow (a local store unless MLFLOW_TRACKING_URI is set).")
@click.option("--log-dir", type=click.Path(file_okay=False), default=None,
              help="Where the loggers write [default: OUT/logs, else ./lightning_logs].")
@click.option("--peak-tflops", type=click.FloatRange(min=0, min_open=True), default=None,
              help="Device peak in TFLOP/s for the MFU [default on CUDA: the dense bf16 figure of a known GPU; "
                   "on CPU no MFU unless given].")
@click.option("--json", "as_json", is_flag=True, help="Print the full result as JSON instead of a table.")
@click.option("--quiet", is_flag=True, help="No progress bar and no table.")
def train(preset: str, n_layers: int, d_model: int, n_heads: int, seq_len: int, vocab_size: int | None,
          tokens: int, steps: int | None, peak_tflops: float | None, as_json: bool, quiet: bool,
          **run_fields: Any) -> None:
    """Train one model and report loss, compute and throughput."""
    from attnres_search.model.config import ModelConfig, preset as get_preset
    from attnres_search.training.config import RunConfig
    from attnres_search.training.data import source_vocab_size
    from attnres_search.training.run import NonFiniteLoss, RunInterrupted, run

    show = not (quiet or as_json)
    mode = run_fields.pop("compile_mode")
    run_fields["logger"] = list(run_fields["logger"])
    run_fields["run_name"] = f"{preset}-seed{run_fields['seed']}"
    if mode is not None:  # true stays true, so configs (and their fingerprints) without a mode do not change
        run_fields["compile"] = True if mode == "default" else mode
    try:
        model = ModelConfig(
            vocab_size=vocab_size or source_vocab_size(run_fields["data"]),
            n_layers=n_layers, d_model=d_model, n_heads=n_heads, seq_len=seq_len, residual=get_preset(preset),
        )
        cfg = RunConfig(model=model, tokens=None if steps is not None else tokens, steps=steps, **run_fields)
        # run() checks the whole config (check_run) before it writes anything.
        result = run(cfg, progress=show, console=stderr_console() if show and sys.stderr.isatty() else None)
    except NonFiniteLoss as exc:
        raise click.ClickException(f"training diverged: {exc}") from None
    except ValueError as exc:
        raise BadInput(str(exc)) from None
    except RunInterrupted as exc:
        written = f"; {exc.record} marked interrupted" if exc.record is not None else ""
        resume = "; continue with --resume" if exc.checkpoint is not None else ""
        error(f"{exc}{written}{resume}")
        raise SystemExit(exc.code) from None
    if as_json:
        from attnres_search.training.mfu import achieved_tflops, run_mfu

        peak, value = run_mfu(result.flops_per_token, result.tokens_per_s, result.device_name, cfg.devices,
                              peak_tflops)
        click.echo(json.dumps({**result.to_dict(), "tflops": achieved_tflops(result.flops_per_token, result.tokens_per_s),
                               "mfu": value, "peak_tflops": peak.tflops if peak is not None else None,
                               "peak_source": peak.source if peak is not None else None}))
    elif not quiet:
        stdout_console().print(_summary_table(result, peak_tflops))


@click.command()
@click.argument("run_json", type=click.Path(exists=True, dir_okay=False))
@click.option("--out", "out_dir", type=click.Path(file_okay=False), required=True, help="Folder for the PNG files.")
def plot(run_json: str, out_dir: str) -> None:
    """Loss curve, output-magnitude and gradient profiles, depth-mixing heatmap of a run."""
    from attnres_search.reports.run_plots import plot_run

    try:
        paths = plot_run(run_json, out_dir)
    except ValueError as exc:
        raise BadInput(str(exc)) from None
    for path in paths:
        click.echo(str(path))
