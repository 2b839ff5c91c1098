"""What `train` shows while it runs: steps and tokens out of the budget, loss, tokens/s and
ETA; a live bar on a terminal, one plain line about every 5% elsewhere (never nothing)."""

from __future__ import annotations

import io
import re

from click.testing import CliRunner
from rich.console import Console

from attnres_search.cli.train_cmd import train
from attnres_search.model.config import ModelConfig
from attnres_search.training.config import RunConfig
from attnres_search.training.progress import TrainProgress
from attnres_search.training.run import run

LINE = re.compile(
    r"^train +(\d+)% \| step (\d+)/40 \| tokens [\d.]+k?/10\.2k \| loss \d+\.\d{4}( \| val \d+\.\d{4})? "
    r"\| [\d.]+[kM]? tok/s \| ETA \S+$"
)


def tiny(**overrides) -> RunConfig:
    model = ModelConfig(vocab_size=256, n_layers=1, d_model=32, n_heads=2, seq_len=32)
    fields = dict(model=model, tokens=None, steps=40, batch_size=8, val_every=10, val_windows=8, diagnostics_every=10)
    fields.update(overrides)
    return RunConfig(**fields)


def test_plain_lines_about_every_5_percent_off_a_terminal(capsys):
    run(tiny())  # progress=None, no console: plain lines on stderr
    lines = capsys.readouterr().err.splitlines()
    parsed = [LINE.match(line) for line in lines]
    assert all(parsed), lines
    steps = [int(m.group(2)) for m in parsed]
    assert steps == [1, *range(2, 41, 2)]  # the first step, then every 2 steps (5% of 40)
    assert [int(m.group(1)) for m in parsed][-1] == 100
    assert any(m.group(3) for m in parsed[-5:])  # the validation loss once measured
    assert not any("Epoch" in line for line in lines)


def test_progress_false_prints_nothing(capsys):
    run(tiny(steps=10), progress=False)
    assert capsys.readouterr().err == ""


def test_live_bar_on_a_terminal_console():
    screen = io.StringIO()
    console = Console(file=screen, force_terminal=True, width=160)
    run(tiny(), console=console)
    text = screen.getvalue()
    assert "step 40/40" in text and "tokens 10.2k/10.2k" in text and "tok/s" in text and "ETA" in text
    assert "Epoch" not in text


def test_eta_and_rate_count_from_this_process_first_step():
    progress = TrainProgress(100, 1000)
    progress._start_step, progress._started = 50, 0.0  # a resumed run, started at step 50
    line = progress.plain_line(50)
    assert line.startswith("train  50% | step 50/100 | tokens 50k/100k") and "ETA ?" in line


def test_train_command_shows_progress_off_a_terminal():
    result = CliRunner().invoke(train, ["--layers", "1", "--width", "32", "--heads", "2", "--seq-len", "32",
                                        "--batch-size", "8", "--val-every", "10", "--val-windows", "8", "--steps", "40"])
    assert result.exit_code == 0, result.output
    lines = [line for line in result.stderr.splitlines() if line.startswith("train ")]
    assert len(lines) == 21 and "step 40/40" in lines[-1] and "final val loss" in result.stdout
    quiet = CliRunner().invoke(train, ["--layers", "1", "--width", "32", "--heads", "2", "--seq-len", "32",
                                       "--batch-size", "8", "--steps", "5", "--quiet"])
    assert quiet.exit_code == 0 and quiet.output == ""
