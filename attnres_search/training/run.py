"""One training run: :func:`run` turns a :class:`RunConfig` into a :class:`RunResult`.

This is the only entry point the CLI and the studies use. It checks the whole config
first (:func:`attnres_search.training.checks.check_run`), builds a fresh Trainer
(:mod:`.trainer`), restores the process-wide torch flags it touched and frees memory
afterwards, because a study worker calls it hundreds of times in one process.

A run stopped by SIGTERM (a scheduler's preemption) saves a checkpoint when checkpointing
is on, writes ``run.json`` marked ``interrupted`` and raises :class:`RunInterrupted`, a
``SystemExit`` with status 143, so that neither a script nor a study worker mistakes it
for success.
"""

from __future__ import annotations

import gc
import json
import math
import signal
import time
import warnings
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import lightning as L
import torch

from attnres_search.model.flops import flops_per_token
from attnres_search.training.callbacks import CheckpointOnSigterm, TrainTimer
from attnres_search.training.checks import check_run, tokens_per_step
from attnres_search.training.config import RunConfig, RunResult
from attnres_search.training.data import Corpus, LMDataModule, check_vocab, load_corpus
from attnres_search.training.ddp import inside_launched_rank, run_ddp
from attnres_search.training.diagnostics import DiagnosticsCallback
from attnres_search.training.lit_module import LitLM, NonFiniteLoss
from attnres_search.training.loggers import RunLogging, build_loggers, finish_loggers, flat_params, throughput_monitor
from attnres_search.training.progress import TrainProgress
from attnres_search.training.provenance import device_name, git_commit, hardware, versions
from attnres_search.training.trainer import build_trainer, last_checkpoint, quiet_lightning, restore_torch_flags

__all__ = ["NonFiniteLoss", "RunInterrupted", "run", "resolve_steps"]

SIGTERM_EXIT_STATUS = 128 + signal.SIGTERM  # 143, what a shell reports for a SIGTERM death


class RunInterrupted(SystemExit):
    """SIGTERM stopped the run after ``step`` of ``total_steps`` steps. A ``SystemExit``
    (status 143) so it ends a process the way the signal would, but only after the
    checkpoint (``checkpoint``, or None) and ``run.json`` (``record``, or None) are written."""

    def __init__(self, step: int, total_steps: int, checkpoint: Path | None, record: Path | None) -> None:
        super().__init__(SIGTERM_EXIT_STATUS)
        self.step, self.total_steps, self.checkpoint, self.record = step, total_steps, checkpoint, record

    def __str__(self) -> str:
        saved = f"checkpoint {self.checkpoint}" if self.checkpoint is not None else "no checkpoint (checkpointing off)"
        return f"interrupted by SIGTERM after step {self.step} of {self.total_steps}; {saved}"


def resolve_steps(cfg: RunConfig) -> int:
    """Optimizer steps of the run; a token budget wins over ``steps``."""
    if cfg.tokens is not None:
        steps = cfg.tokens // tokens_per_step(cfg)
        if steps < 1:
            raise ValueError(f"token budget {cfg.tokens} is less than one step ({tokens_per_step(cfg)} tokens)")
        return steps
    if cfg.steps is None or cfg.steps < 1:
        raise ValueError("give a positive token budget (tokens) or number of steps")
    return cfg.steps


def _resume_checkpoint(cfg: RunConfig) -> str | None:
    if not cfg.resume:
        return None
    path = last_checkpoint(cfg)
    return str(path) if path.exists() else None


def _fit(trainer: L.Trainer, module: LitLM, data: LMDataModule, ckpt_path: str | None) -> None:
    """``trainer.fit`` that lets Ctrl-C be Ctrl-C: Lightning answers a KeyboardInterrupt by
    tearing down, ignoring SIGINT from then on, and calling ``exit(1)``. A SystemExit slips
    past Optuna and leaves the trial RUNNING until its heartbeat goes stale, so the
    interrupt is raised again as itself (Optuna then fails the trial at once) and the
    SIGINT handler is put back. SIGTERM ends in Lightning's ``SIGTERMException`` (a
    ``SystemExit``), which the caller turns into :class:`RunInterrupted`."""
    handler = signal.getsignal(signal.SIGINT)
    try:
        trainer.fit(module, datamodule=data, ckpt_path=ckpt_path)
    except SystemExit as exc:
        if trainer.interrupted and exc.code == 1 and not trainer.received_sigterm:
            raise KeyboardInterrupt from None
        raise
    finally:
        if handler is not None:
            signal.signal(signal.SIGINT, handler)


def run(cfg: RunConfig, *, callbacks: Sequence[L.Callback] = (), progress: bool | None = None,
        console: Any | None = None) -> RunResult:
    """Train one model as ``cfg`` says and measure it.

    Raises :class:`attnres_search.errors.BadInput` (a ``ValueError``) for bad input before
    anything is written, :class:`NonFiniteLoss` when training diverges and
    :class:`RunInterrupted` on SIGTERM. ``callbacks`` (e.g. an Optuna pruning callback) see
    ``val_loss`` in ``trainer.callback_metrics`` at ``on_validation_end``; steps are global
    steps. ``progress``: False shows nothing, True or None (the default) shows
    :class:`TrainProgress`, a live bar on ``console`` (a rich Console) when one is given,
    else plain lines on standard error about every 5% of the run.
    """
    started = time.perf_counter()
    check_run(cfg)
    steps = resolve_steps(cfg)
    if cfg.devices > 1 and not inside_launched_rank():
        if callbacks:
            warnings.warn("multi-device runs ignore caller callbacks (no pruning or step progress)", stacklevel=2)
        return run_ddp(cfg, run)
    corpus = load_corpus(cfg.data)
    check_vocab(cfg.data, corpus.vocab_size, cfg.model.vocab_size)
    out_dir = Path(cfg.out_dir) if cfg.out_dir is not None else None
    diag_path = out_dir / "diagnostics.json" if out_dir is not None else None
    own: list[L.Callback] = []
    if progress is not False:
        own.append(TrainProgress(steps, tokens_per_step(cfg), console=console))
    sigterm = CheckpointOnSigterm(last_checkpoint(cfg)) if cfg.ckpt_every is not None else None
    if sigterm is not None:
        own.append(sigterm)
    trainer = module = None
    loggers = build_loggers(cfg) if cfg.logger else []
    finished = False
    try:
        with quiet_lightning(), restore_torch_flags():
            L.seed_everything(cfg.seed, workers=True, verbose=False)
            data = LMDataModule(
                corpus, seq_len=cfg.model.seq_len, batch_size=cfg.batch_size, seed=cfg.seed, val_windows=cfg.val_windows
            )
            module = LitLM(cfg, steps)
            timer = TrainTimer()
            diagnostics = DiagnosticsCallback(cfg.diagnostics_every, data.val_inputs[: cfg.batch_size], diag_path)
            if loggers:
                own += [throughput_monitor(cfg, steps), RunLogging(cfg, flat_params(cfg.to_dict()), diagnostics)]
            trainer = build_trainer(cfg, steps, [timer, diagnostics, *callbacks, *own], loggers=loggers)
            try:
                _fit(trainer, module, data, _resume_checkpoint(cfg))
            except SystemExit:
                if not trainer.received_sigterm:
                    raise
                result = _result(cfg, steps, corpus, module, trainer, timer, diagnostics, diag_path, started,
                                 interrupted=True)
                record = _write_record(out_dir, result, trainer)
                finish_loggers(loggers, result, "interrupted")
                finished = True
                checkpoint = sigterm.path if sigterm is not None and sigterm.saved_step is not None else None
                raise RunInterrupted(trainer.global_step, steps, checkpoint, record) from None
            if not module.val_curve or module.val_curve[-1][0] != trainer.global_step:
                trainer.validate(module, datamodule=data, verbose=False)
            if diag_path is not None and trainer.is_global_zero:
                diagnostics.write(module.model)
            result = _result(cfg, steps, corpus, module, trainer, timer, diagnostics, diag_path, started)
        _write_record(out_dir, result, trainer)
        finish_loggers(loggers, result)
        finished = True
        return result
    finally:
        if not finished:  # a failed run still closes its logger runs (marked failed)
            finish_loggers(loggers, None, "failed")
        del trainer, module
        gc.collect()
        if torch.cuda.is_available():
            torch.cuda.empty_cache()


def _write_record(out_dir: Path | None, result: RunResult, trainer: L.Trainer) -> Path | None:
    """``run.json`` (rank 0 only); NaN losses (nothing measured yet) are written as null."""
    if out_dir is None or not trainer.is_global_zero:
        return None
    out_dir.mkdir(parents=True, exist_ok=True)
    record = {k: (None if isinstance(v, float) and math.isnan(v) else v) for k, v in result.to_dict().items()}
    path = out_dir / "run.json"
    path.write_text(json.dumps(record, indent=1))
    return path


def _result(
    cfg: RunConfig,
    steps: int,
    corpus: Corpus,
    module: LitLM,
    trainer: L.Trainer,
    timer: TrainTimer,
    diagnostics: DiagnosticsCallback,
    diag_path: Path | None,
    started: float,
    *,
    interrupted: bool = False,
) -> RunResult:
    per_step = cfg.batch_size * cfg.model.seq_len * trainer.world_size
    done = trainer.global_step if interrupted else steps
    tokens = done * per_step
    train_flops = flops_per_token(cfg.model)["train"]
    final = module.val_curve[-1][1] if module.val_curve else math.nan
    return RunResult(
        config=cfg.to_dict(),
        params_total=module.model.num_params(),
        params_non_embedding=module.model.num_params(non_embedding=True),
        flops_per_token=train_flops,
        flops_total=train_flops * tokens,
        tokens=tokens,
        steps=done,
        tokens_per_s=timer.steps * per_step / timer.seconds if timer.seconds > 0 else 0.0,
        wall_time_s=time.perf_counter() - started,
        final_val_loss=final,
        best_val_loss=min((loss for _, loss in module.val_curve), default=math.nan),
        final_val_bpb=final / math.log(2) if corpus.byte_level and math.isfinite(final) else None,
        val_curve=list(module.val_curve),
        val_elapsed_s=list(module.elapsed_at_val_points()),
        train_curve=list(module.train_curve),
        diagnostics_path=str(diag_path) if diag_path is not None else None,
        diagnostics_summary=diagnostics.summary(),
        data_hash=corpus.data_hash,
        device_name=device_name(trainer.strategy.root_device),
        hardware=hardware(trainer.strategy.root_device),
        versions=versions(),
        git_commit=git_commit(),
        resumed_from_step=module.resumed_from_step,
        interrupted=interrupted,
    )
