"""What a person watching ``train`` sees: global steps and tokens out of the budget, the
training loss, the latest validation loss, tokens/s and the time left, instead of
Lightning's epoch bar (which reads "Epoch 0/-2" for a step-budgeted run).

On a terminal it is a live rich bar on the console the caller passes (the CLI owns the
one console). Off a terminal (nohup, CI logs, a Slurm output file) a live bar would print
nothing useful, so one plain line goes to the stream about every ``PLAIN_EVERY`` of the run.
"""

from __future__ import annotations

import math
import sys
import time
from typing import Any, TextIO

import lightning as L

from attnres_search.units import format_count as _si

PLAIN_EVERY = 0.05  # fraction of the run between plain progress lines


def _duration(seconds: float) -> str:
    if not math.isfinite(seconds):
        return "?"
    seconds = int(round(seconds))
    hours, rest = divmod(seconds, 3600)
    minutes, secs = divmod(rest, 60)
    return f"{hours}h{minutes:02d}m" if hours else f"{minutes}m{secs:02d}s" if minutes else f"{secs}s"


class TrainProgress(L.Callback):
    """Progress of one run of ``total_steps`` optimizer steps of ``tokens_per_step`` tokens.

    ``console`` (a ``rich.console.Console``) draws a live bar; without one, plain lines go
    to ``stream`` (standard error by default). Rates and the ETA count from the first step
    this process ran, so a resumed run's estimate is not skewed by the steps it skipped.
    """

    def __init__(self, total_steps: int, tokens_per_step: int, *, console: Any | None = None,
                 stream: TextIO | None = None, plain_every: float = PLAIN_EVERY) -> None:
        self.total_steps, self.tokens_per_step = total_steps, tokens_per_step
        self.console, self.stream, self.plain_every = console, stream, plain_every
        self.loss: float | None = None
        self.val_loss: float | None = None
        self._start_step = 0
        self._started: float | None = None
        self._next_line = 0
        self._bar: Any = None
        self._task: Any = None

    # ------------------------------------------------------------------ measurements
    def _rate(self, step: int) -> float:
        """Tokens per second since this process's first step."""
        if self._started is None:
            return 0.0
        elapsed = time.perf_counter() - self._started
        done = step - self._start_step
        return done * self.tokens_per_step / elapsed if elapsed > 0 and done > 0 else 0.0

    def _eta(self, step: int) -> float:
        rate = self._rate(step)
        return (self.total_steps - step) * self.tokens_per_step / rate if rate > 0 else math.inf

    def _fields(self, step: int) -> str:
        parts = [f"step {step}/{self.total_steps}",
                 f"tokens {_si(step * self.tokens_per_step)}/{_si(self.total_steps * self.tokens_per_step)}"]
        if self.loss is not None:
            parts.append(f"loss {self.loss:.4f}")
        if self.val_loss is not None:
            parts.append(f"val {self.val_loss:.4f}")
        parts.append(f"{_si(self._rate(step))} tok/s")
        parts.append(f"ETA {_duration(self._eta(step))}")
        return " | ".join(parts)

    def plain_line(self, step: int) -> str:
        """The line printed off a terminal: percentage first, then :meth:`_fields`."""
        return f"train {100 * step / self.total_steps:3.0f}% | {self._fields(step)}"

    # ------------------------------------------------------------------ Lightning hooks
    def on_train_start(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        if not trainer.is_global_zero:
            return
        self._start_step = trainer.global_step
        self._started = time.perf_counter()
        self._next_line = self._start_step + 1
        if self.console is not None:
            from rich.progress import BarColumn, Progress, TextColumn

            self._bar = Progress(TextColumn("[bold]train"), BarColumn(bar_width=20), TextColumn("{task.fields[info]}"),
                                 console=self.console, transient=False)
            self._task = self._bar.add_task("train", total=self.total_steps, completed=self._start_step,
                                            info=self._fields(self._start_step))
            self._bar.start()

    def on_train_batch_end(self, trainer: L.Trainer, pl_module: L.LightningModule, outputs: Any, batch: Any,
                           batch_idx: int) -> None:
        if not trainer.is_global_zero:
            return
        loss = outputs.get("loss") if isinstance(outputs, dict) else outputs
        if loss is not None:
            self.loss = float(loss)
        self._show(trainer.global_step)

    def on_validation_end(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        value = trainer.callback_metrics.get("val_loss")
        if value is not None and trainer.is_global_zero:
            self.val_loss = float(value)
            if self._bar is not None:
                self._show(trainer.global_step)

    def on_train_end(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        self._close()

    def on_exception(self, trainer: L.Trainer, pl_module: L.LightningModule, exception: BaseException) -> None:
        self._close()

    # ------------------------------------------------------------------ output
    def _show(self, step: int) -> None:
        if self._bar is not None:
            self._bar.update(self._task, completed=step, info=self._fields(step))
            return
        if self._started is None:
            return
        if step >= self._next_line or step == self.total_steps:
            print(self.plain_line(step), file=self.stream or sys.stderr, flush=True)
            every = max(1, math.ceil(self.plain_every * self.total_steps))
            self._next_line = (step // every + 1) * every

    def _close(self) -> None:
        if self._bar is not None:
            self._bar.stop()
            self._bar = None
