"""The LightningModule: next-token cross-entropy on :class:`AttnResLM`.

Logs ``train_loss`` every ``TRAIN_LOG_EVERY`` steps and ``val_loss`` (nats/token over all
fixed validation windows) after each validation pass; pruning callbacks read ``val_loss`` from
``trainer.callback_metrics``. The loss curves travel inside checkpoints so a resumed run
reports its whole history.
"""

from __future__ import annotations

import math
import time
from typing import Any

import lightning as L
import torch
import torch.nn.functional as F
from torch import Tensor

from attnres_search.model.decoder import AttnResLM
from attnres_search.training.optim import build_optimizer, build_scheduler
from attnres_search.training.config import RunConfig, compile_mode

# Fields that may differ between a run and the checkpoint it resumes from: they change
# where things go or how fast they run, not what is computed.
RESUME_FREE_FIELDS = frozenset(
    {"out_dir", "resume", "ckpt_every", "val_every", "diagnostics_every", "compile", "accelerator", "devices", "precision",
     "logger", "log_dir", "run_name", "experiment"}
)
TRAIN_CURVE_POINTS = 256  # at most about this many train-loss points are kept
TRAIN_LOG_EVERY = 10  # steps between train_loss updates in trainer.callback_metrics


class NonFiniteLoss(ValueError):
    """The training loss became NaN or infinite: the trial diverged."""

    def __init__(self, step: int, value: float) -> None:
        super().__init__(f"training loss is {value} at step {step}")
        self.step, self.value = step, value


class LitLM(L.LightningModule):
    def __init__(self, cfg: RunConfig, total_steps: int) -> None:
        super().__init__()
        self.cfg = cfg
        self.total_steps = total_steps
        self.model = AttnResLM(cfg.model)
        mode = compile_mode(cfg)
        if mode is not None:
            self.model.compile(mode=mode)  # in place: parameter names (and checkpoints) stay unchanged
        self.val_curve: list[tuple[int, float]] = []
        # Seconds of training (validation included, summed over resumes) at each val_curve
        # point, kept apart from the curve so resumed runs still compare equal on it:
        # reports read it to compare variants at equal wall-clock.
        self.val_elapsed_s: list[float] = []
        self._clock_start = time.perf_counter()
        self.train_curve: list[tuple[int, float]] = []
        self.resumed_from_step: int | None = None
        self._curve_every = max(1, total_steps // TRAIN_CURVE_POINTS)
        self._val_sum: Tensor | None = None
        self._val_count = 0

    def forward(self, idx: Tensor) -> Tensor:
        return self.model(idx)

    def _token_losses(self, batch: tuple[Tensor, Tensor], reduction: str) -> Tensor:
        inputs, targets = batch
        logits = self.model(inputs)
        return F.cross_entropy(logits.flatten(0, 1).float(), targets.flatten(), reduction=reduction)

    def training_step(self, batch: tuple[Tensor, Tensor], batch_idx: int) -> Tensor:
        loss = self._token_losses(batch, "mean")
        value = loss.item()  # one sync per step; needed to stop a diverged trial at once
        step = self.global_step
        if not math.isfinite(value):
            raise NonFiniteLoss(step, value)
        if step % self._curve_every == 0 or step == self.total_steps - 1:
            self.train_curve.append((step, value))
        # self.log costs ~0.5 ms of Python per call, as much as a small model's step: log
        # every TRAIN_LOG_EVERY steps (the progress display reads the step's loss itself), on
        # the steps the Trainer (log_every_n_steps=TRAIN_LOG_EVERY) hands to the loggers.
        if (step + 1) % TRAIN_LOG_EVERY == 0 or step == self.total_steps - 1:
            self.log("train_loss", loss.detach(), batch_size=batch[0].shape[0])
        return loss

    def on_train_start(self) -> None:
        """Lightning skips the validation due at the step a checkpoint was saved on when it
        resumes (the checkpoint precedes it); run it here so the curve stays complete."""
        self._clock_start = time.perf_counter() - (self.val_elapsed_s[-1] if self.val_elapsed_s else 0.0)
        step = self.resumed_from_step
        if step and step % self.cfg.val_every == 0 and all(s != step for s, _ in self.val_curve):
            self._record_val(step, self._evaluate())

    def _record_val(self, step: int, loss: float) -> None:
        """Add (or, for a repeated step, replace) a validation point and its elapsed time."""
        elapsed = time.perf_counter() - self._clock_start
        points = {s: (v, e) for (s, v), e in zip(self.val_curve, self.elapsed_at_val_points())}
        points[step] = (loss, elapsed)
        ordered = sorted(points.items())
        self.val_curve = [(s, v) for s, (v, _) in ordered]
        self.val_elapsed_s = [e for _, (_, e) in ordered]

    def elapsed_at_val_points(self) -> list[float]:
        if len(self.val_elapsed_s) == len(self.val_curve):
            return self.val_elapsed_s
        return [float("nan")] * len(self.val_curve)  # a checkpoint from before elapsed times were kept

    @torch.no_grad()
    def _evaluate(self) -> float:
        """Validation loss over the fixed windows, outside Lightning's validation loop."""
        was_training = self.training
        self.eval()
        total = torch.zeros((), dtype=torch.float64, device=self.device)
        count = 0
        try:
            with self.trainer.precision_plugin.forward_context():
                for inputs, targets in self.trainer.datamodule.val_dataloader():
                    batch = (inputs.to(self.device), targets.to(self.device))
                    total += self._token_losses(batch, "sum").double()
                    count += targets.numel()
        finally:
            self.train(was_training)
        return (total / count).float().item()

    def on_validation_epoch_start(self) -> None:
        self._val_sum = torch.zeros((), dtype=torch.float64, device=self.device)
        self._val_count = 0

    def validation_step(self, batch: tuple[Tensor, Tensor], batch_idx: int) -> None:
        assert self._val_sum is not None
        self._val_sum += self._token_losses(batch, "sum").double()
        self._val_count += batch[1].numel()

    def on_validation_epoch_end(self) -> None:
        assert self._val_sum is not None
        total = self.trainer.strategy.reduce(self._val_sum, reduce_op="sum")
        count = self.trainer.strategy.reduce(torch.tensor(float(self._val_count), device=self.device), reduce_op="sum")
        loss = (total / count).float()
        self.log("val_loss", loss)
        if not self.trainer.sanity_checking:
            self._record_val(self.global_step, loss.item())

    def configure_optimizers(self) -> dict[str, Any]:
        optimizer = build_optimizer(self.model, self.cfg)
        scheduler = build_scheduler(optimizer, self.cfg, self.total_steps)
        return {"optimizer": optimizer, "lr_scheduler": {"scheduler": scheduler, "interval": "step"}}

    def on_save_checkpoint(self, checkpoint: dict[str, Any]) -> None:
        checkpoint["attnres_run"] = {
            "config": self.cfg.to_dict(),
            "val_curve": list(self.val_curve),
            "val_elapsed_s": list(self.elapsed_at_val_points()),
            "train_curve": list(self.train_curve),
        }

    def on_load_checkpoint(self, checkpoint: dict[str, Any]) -> None:
        saved = checkpoint.get("attnres_run")
        if saved is None:
            raise ValueError("checkpoint was not written by attnres-search (no run record)")
        ours = self.cfg.to_dict()
        changed = sorted(k for k in ours if k not in RESUME_FREE_FIELDS and saved["config"].get(k) != ours[k])
        if changed:
            raise ValueError(f"cannot resume: the checkpoint was trained with different {', '.join(changed)}")
        self.val_curve = [tuple(p) for p in saved["val_curve"]]  # type: ignore[misc]
        self.val_elapsed_s = [float(e) for e in saved.get("val_elapsed_s", [])]
        self.train_curve = [tuple(p) for p in saved["train_curve"]]  # type: ignore[misc]
        self.resumed_from_step = int(checkpoint["global_step"])
