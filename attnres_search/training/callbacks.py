"""Callbacks every run installs: the throughput clock and the checkpoint a preempted
run leaves behind."""

from __future__ import annotations

import time
from pathlib import Path
from typing import Any

import lightning as L
import torch
from lightning.pytorch.utilities.exceptions import SIGTERMException


class TrainTimer(L.Callback):
    """Wall time of the training loop from the start of its second step (the first pays
    for torch.compile and warm-up) to its end, with validation passes left out. The GPU is
    synchronised only at those edges, never every step, so timing does not slow training."""

    def __init__(self) -> None:
        self.seconds = 0.0
        self.batches = 0
        self._since: float | None = None  # set while the clock runs
        self._paused = False  # the clock was stopped by a validation pass

    @property
    def steps(self) -> int:
        return max(0, self.batches - 1)

    def _start(self, pl_module: L.LightningModule) -> None:
        _sync(pl_module)
        self._since = time.perf_counter()

    def _stop(self, pl_module: L.LightningModule) -> bool:
        if self._since is None:
            return False
        _sync(pl_module)
        self.seconds += time.perf_counter() - self._since
        self._since = None
        return True

    def on_train_batch_start(self, trainer: L.Trainer, pl_module: L.LightningModule, batch: Any, batch_idx: int) -> None:
        self.batches += 1
        if self.batches == 2:
            self._start(pl_module)

    def on_validation_start(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        self._paused = self._stop(pl_module)

    def on_validation_end(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        if self._paused:
            self._start(pl_module)

    def on_train_end(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        self._stop(pl_module)

    def on_exception(self, trainer: L.Trainer, pl_module: L.LightningModule, exception: BaseException) -> None:
        self._stop(pl_module)


def _sync(pl_module: L.LightningModule) -> None:
    if pl_module.device.type == "cuda":
        torch.cuda.synchronize(pl_module.device)


class CheckpointOnSigterm(L.Callback):
    """On SIGTERM (a scheduler's preemption) save the state of the last completed step to
    ``path``, the checkpoint ``resume`` continues from, so no finished step is lost.
    Lightning raises its ``SIGTERMException`` only between steps, where the state is whole."""

    def __init__(self, path: Path) -> None:
        self.path = path
        self.saved_step: int | None = None

    def on_exception(self, trainer: L.Trainer, pl_module: L.LightningModule, exception: BaseException) -> None:
        if isinstance(exception, SIGTERMException) and trainer.global_step > 0:
            trainer.save_checkpoint(self.path)
            self.saved_step = trainer.global_step
