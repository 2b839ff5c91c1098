"""``attnres-search model``: inspect a variant before spending compute on it."""

from __future__ import annotations

import click

from attnres_search.cli.errors import BadInput
from attnres_search.cli.options import preset_option
from attnres_search.cli.terminal import stdout_console


@click.group()
def model() -> None:
    """Inspect model variants."""


@model.command()
@preset_option(argument=True)
@click.option("--layers", "n_layers", type=click.IntRange(min=1), default=8, show_default=True,
              help="Transformer blocks L_b (the residual rule sees 2·L_b sublayers).")
@click.option("--width", "d_model", type=click.IntRange(min=2), default=128, show_default=True, help="d_model.")
@click.option("--heads", "n_heads", type=click.IntRange(min=1), default=4, show_default=True)
@click.option("--seq-len", type=click.IntRange(min=1), default=256, show_default=True)
@click.option("--vocab", "vocab_size", type=click.IntRange(min=2), default=256, show_default=True)
def describe(preset: str, n_layers: int, d_model: int, n_heads: int, seq_len: int, vocab_size: int) -> None:
    """Parameter count, FLOPs/token and the sources each layer attends over."""
    from attnres_search.model.config import ModelConfig, preset as get_preset
    from attnres_search.model.describe import print_description

    try:
        cfg = ModelConfig(vocab_size=vocab_size, n_layers=n_layers, d_model=d_model, n_heads=n_heads,
                          seq_len=seq_len, residual=get_preset(preset))
    except ValueError as exc:
        raise BadInput(str(exc)) from None
    print_description(cfg, preset, stdout_console())
