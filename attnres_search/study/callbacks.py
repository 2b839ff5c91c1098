"""Lightning callbacks a study adds to each training run: Optuna pruning against the
global step, progress reports for the worker's display, Ctrl-C at batch boundaries, and
the checkpoint a time-limited worker leaves at its deadline.

They live apart from :mod:`attnres_search.study.objective` so that importing the study machinery
(for ``study status`` or a report) does not import Lightning and torch.
"""

from __future__ import annotations

from pathlib import Path
from typing import TYPE_CHECKING, Any

import lightning as L
import optuna

from attnres_search.study.time_limit import TimeLimit, TimeLimitReached

if TYPE_CHECKING:
    from attnres_search.study.worker import WorkerInterrupts


class StepPruning(L.Callback):
    """Report ``val_loss`` at ``trainer.global_step`` after every validation and stop the
    run when the pruner says so. Reporting against the step, not the epoch, is what makes
    runs of different lengths comparable (our runs have one endless epoch)."""

    def __init__(self, trial: optuna.Trial) -> None:
        self.trial = trial

    def on_validation_end(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        if trainer.sanity_checking or "val_loss" not in trainer.callback_metrics:
            return
        step = trainer.global_step
        prune = False
        if trainer.is_global_zero:
            self.trial.report(float(trainer.callback_metrics["val_loss"]), step=step)
            # The closing evaluation after training is reported, never pruned: the compute is spent.
            prune = trainer.state.fn == "fit" and self.trial.should_prune()
        # Every rank must stop together, or DDP would wait forever for the one that left.
        if trainer.strategy.broadcast(prune):
            raise optuna.TrialPruned(f"pruned at step {step}")


class StepProgress(L.Callback):
    """Forward the current step and the latest validation loss to a study progress view."""

    def __init__(self, progress: Any) -> None:
        self.progress = progress
        self.val_loss: float | None = None

    def on_train_batch_end(self, trainer: L.Trainer, pl_module: L.LightningModule, outputs: Any, batch: Any,
                           batch_idx: int) -> None:
        self.progress.step(trainer.global_step, trainer.max_steps, self.val_loss)

    def on_validation_end(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        if "val_loss" in trainer.callback_metrics:
            self.val_loss = float(trainer.callback_metrics["val_loss"])
            self.progress.step(trainer.global_step, trainer.max_steps, self.val_loss)


class StopOnInterrupt(L.Callback):
    """Stop the run before the next batch once the worker saw Ctrl-C.

    The KeyboardInterrupt is raised here, between batches, instead of in the signal
    handler, so it never lands inside a storage call of another callback (see
    :class:`attnres_search.study.worker.WorkerInterrupts`). Lightning handles it as it
    handles Ctrl-C: it tears down and exits, which the run turns back into the interrupt."""

    def __init__(self, interrupts: "WorkerInterrupts") -> None:
        self.interrupts = interrupts

    def on_train_batch_start(self, trainer: L.Trainer, pl_module: L.LightningModule, batch: Any,
                             batch_idx: int) -> None:
        self.interrupts.check()

    def on_validation_batch_start(self, trainer: L.Trainer, pl_module: L.LightningModule, batch: Any,
                                  batch_idx: int, dataloader_idx: int = 0) -> None:
        self.interrupts.check()


class CheckpointAtDeadline(L.Callback):
    """Stop the run once the worker's time limit has passed, after saving its state to
    ``path`` (the checkpoint a retry continues from), whether or not the run checkpoints
    periodically.

    It acts where Lightning's ``ModelCheckpoint`` saves, at the end of a training batch:
    the optimizer and scheduler steps are complete and Lightning's loop counters agree
    with them (saved before the next batch, they count that batch as fetched and a resumed
    run validates one step early), so the run resumes exactly; a validation due at this
    step is run on resume (:meth:`attnres_search.training.lit_module.LitLM.on_train_start`).
    The last step is let finish: only the closing validation would be left. It raises
    :class:`TimeLimitReached`, which Lightning passes through after its teardown and the
    objective turns into a re-queued trial. Single-process runs only: a multi-device
    trial's ranks are other processes (they stop at the scheduler's SIGTERM instead)."""

    def __init__(self, limit: TimeLimit, path: Path) -> None:
        self.limit, self.path = limit, path

    def on_train_batch_end(self, trainer: L.Trainer, pl_module: L.LightningModule, outputs: Any, batch: Any,
                           batch_idx: int) -> None:
        step = trainer.global_step
        if step >= trainer.max_steps or not self.limit.expired():
            return
        saved = None
        if step > 0:
            trainer.save_checkpoint(self.path)
            saved = self.path
        raise TimeLimitReached(step, saved)
