"""One training run: :func:`run` turns a :class:`RunConfig` into a :class:`RunResult`.

This is the only entry point the CLI and the studies use. Each call builds a fresh
Trainer, is quiet unless asked (no banners, tips or known-harmless warnings), restores
process-wide torch flags it touched and frees memory afterwards, because a study worker
calls it hundreds of times in one process.
"""

from __future__ import annotations

import contextlib
import gc
import importlib.metadata
import json
import logging
import math
import os
import platform
import signal
import subprocess
import sys
import time
import warnings
from collections.abc import Iterator, Sequence
from pathlib import Path
from typing import Any

import lightning as L
import torch
from lightning.pytorch.callbacks import ModelCheckpoint, RichProgressBar

from attnres_search.training.data import Corpus, LMDataModule, load_corpus
from attnres_search.training.ddp import inside_launched_rank, run_ddp
from attnres_search.training.diagnostics import DiagnosticsCallback
from attnres_search.model.flops import flops_per_token
from attnres_search.training.lit_module import LitLM, NonFiniteLoss
from attnres_search.training.optim import check_names
from attnres_search.training.config import RunConfig, RunResult

__all__ = ["NonFiniteLoss", "run", "resolve_steps", "build_trainer"]

LAST_CHECKPOINT = "last.ckpt"
VERSIONED_PACKAGES = ("torch", "lightning", "optuna", "triton", "numpy", "attnres-search")
_QUIET_LOGGERS = ("lightning", "lightning.pytorch", "lightning.fabric", "pytorch_lightning", "lightning_fabric")


def resolve_steps(cfg: RunConfig) -> int:
    """Optimizer steps of the run; a token budget wins over ``steps``."""
    tokens_per_step = cfg.batch_size * cfg.model.seq_len * cfg.devices
    if cfg.tokens is not None:
        steps = cfg.tokens // tokens_per_step
        if steps < 1:
            raise ValueError(f"token budget {cfg.tokens} is less than one step ({tokens_per_step} tokens)")
        return steps
    if cfg.steps is None or cfg.steps < 1:
        raise ValueError("give a positive token budget (tokens) or number of steps")
    return cfg.steps


def _check_config(cfg: RunConfig) -> None:
    check_names(cfg)
    for name in ("batch_size", "val_every", "val_windows", "diagnostics_every", "devices"):
        value = getattr(cfg, name)
        if not isinstance(value, int) or value < 1:
            raise ValueError(f"{name} must be a positive integer, got {value!r}")
    if cfg.ckpt_every is not None and (cfg.ckpt_every < 1 or cfg.out_dir is None):
        raise ValueError("ckpt_every needs a positive number of steps and an out_dir")
    if cfg.resume and cfg.out_dir is None:
        raise ValueError("resume needs an out_dir holding the checkpoints")


def _on_gpu(cfg: RunConfig) -> bool:
    if cfg.accelerator == "auto":
        return torch.cuda.is_available()
    return cfg.accelerator in ("gpu", "cuda")


def _precision(cfg: RunConfig) -> str:
    if cfg.precision != "auto":
        return cfg.precision
    return "bf16-mixed" if _on_gpu(cfg) else "32-true"


class _TrainTimer(L.Callback):
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


def _sync(pl_module: L.LightningModule) -> None:
    if pl_module.device.type == "cuda":
        torch.cuda.synchronize(pl_module.device)


def build_trainer(cfg: RunConfig, steps: int, callbacks: Sequence[L.Callback], progress: bool) -> L.Trainer:
    """The Trainer every run uses (also timed by ``bench step``)."""
    all_callbacks = list(callbacks)
    if cfg.ckpt_every is not None:
        assert cfg.out_dir is not None
        all_callbacks.append(
            ModelCheckpoint(
                dirpath=Path(cfg.out_dir) / "checkpoints",
                every_n_train_steps=cfg.ckpt_every,
                save_last=True,
                save_top_k=0,
                enable_version_counter=False,
            )
        )
    if progress:
        all_callbacks.append(RichProgressBar())
    strategy: Any = "auto"
    if cfg.devices > 1:
        from lightning.pytorch.strategies import DDPStrategy

        strategy = DDPStrategy(process_group_backend="nccl" if _on_gpu(cfg) else "gloo")
    return L.Trainer(
        accelerator=cfg.accelerator,
        devices=cfg.devices,
        strategy=strategy,
        precision=_precision(cfg),  # type: ignore[arg-type]
        max_steps=steps,
        max_epochs=-1,
        val_check_interval=cfg.val_every,
        check_val_every_n_epoch=None,
        num_sanity_val_steps=0,
        gradient_clip_val=cfg.grad_clip if cfg.grad_clip and cfg.grad_clip > 0 else None,
        deterministic=not _on_gpu(cfg),  # bit-identical CPU runs; GPU keeps its fast kernels
        logger=False,
        enable_checkpointing=cfg.ckpt_every is not None,
        enable_model_summary=False,
        enable_progress_bar=progress,
        use_distributed_sampler=False,  # batches are already per-rank functions of (seed, step)
        default_root_dir=cfg.out_dir,
        callbacks=all_callbacks,
    )


@contextlib.contextmanager
def quiet_lightning() -> Iterator[None]:
    """Silence Lightning's info banners ("GPU available", tips) and its advice warnings
    for the duration of a run, then restore the previous state."""
    levels = {name: logging.getLogger(name).level for name in _QUIET_LOGGERS}
    with warnings.catch_warnings():
        from lightning.fabric.utilities.warnings import PossibleUserWarning

        warnings.simplefilter("ignore", PossibleUserWarning)
        warnings.filterwarnings("ignore", message=r".*does not have many workers.*")
        warnings.filterwarnings("ignore", message=r".*`max_epochs` was not set.*")
        warnings.filterwarnings("ignore", message=r".*isinstance\(treespec, LeafSpec\).*")  # torch 2.13 vs Lightning 2.6
        for name in _QUIET_LOGGERS:
            logging.getLogger(name).setLevel(logging.WARNING)
        try:
            yield
        finally:
            for name, level in levels.items():
                logging.getLogger(name).setLevel(level)


@contextlib.contextmanager
def _restore_torch_flags() -> Iterator[None]:
    """``Trainer(deterministic=...)`` sets process-wide flags; put them back afterwards."""
    deterministic = torch.are_deterministic_algorithms_enabled()
    warn_only = torch.is_deterministic_algorithms_warn_only_enabled()
    cublas = os.environ.get("CUBLAS_WORKSPACE_CONFIG")
    try:
        yield
    finally:
        torch.use_deterministic_algorithms(deterministic, warn_only=warn_only)
        if cublas is None:
            os.environ.pop("CUBLAS_WORKSPACE_CONFIG", None)
        else:
            os.environ["CUBLAS_WORKSPACE_CONFIG"] = cublas


def _versions() -> dict[str, str]:
    found = {"python": platform.python_version()}
    for name in VERSIONED_PACKAGES:
        with contextlib.suppress(importlib.metadata.PackageNotFoundError):
            found[name] = importlib.metadata.version(name)
    return found


def _git_commit() -> str | None:
    try:
        out = subprocess.run(
            ["git", "rev-parse", "HEAD"],
            cwd=Path(__file__).resolve().parent,
            capture_output=True,
            text=True,
            timeout=5,
            check=True,
        )
    except (OSError, subprocess.SubprocessError):
        return None
    return out.stdout.strip() or None


def _device_name(trainer: L.Trainer) -> str:
    device = trainer.strategy.root_device
    return torch.cuda.get_device_name(device) if device.type == "cuda" else device.type


def _resume_checkpoint(cfg: RunConfig) -> str | None:
    if not cfg.resume:
        return None
    assert cfg.out_dir is not None
    path = Path(cfg.out_dir) / "checkpoints" / LAST_CHECKPOINT
    return str(path) if path.exists() else None


def _check_vocab(cfg: RunConfig, corpus: Corpus) -> None:
    if corpus.vocab_size > cfg.model.vocab_size:
        raise ValueError(
            f"data {cfg.data!r} has vocabulary {corpus.vocab_size} but model.vocab_size is {cfg.model.vocab_size}"
        )


def _fit(trainer: L.Trainer, module: LitLM, data: LMDataModule, ckpt_path: str | None) -> None:
    """``trainer.fit`` that lets Ctrl-C be Ctrl-C: Lightning answers a KeyboardInterrupt by
    tearing down, ignoring SIGINT from then on, and calling ``exit(1)``. A SystemExit slips
    past Optuna and leaves the trial RUNNING until its heartbeat goes stale, so the
    interrupt is raised again as itself (Optuna then fails the trial at once) and the
    SIGINT handler is put back."""
    handler = signal.getsignal(signal.SIGINT)
    try:
        trainer.fit(module, datamodule=data, ckpt_path=ckpt_path)
    except SystemExit as exc:
        # Lightning's KeyboardInterrupt path ends in sys.exit(1); SIGTERM (a preemption) ends
        # otherwise and stays a SystemExit for the worker to report as 143.
        if trainer.interrupted and exc.code == 1:
            raise KeyboardInterrupt from None
        raise
    finally:
        if handler is not None:
            signal.signal(signal.SIGINT, handler)


def run(cfg: RunConfig, *, callbacks: Sequence[L.Callback] = (), progress: bool | None = None) -> RunResult:
    """Train one model as ``cfg`` says and measure it.

    Raises ``ValueError`` for bad input and :class:`NonFiniteLoss` when training diverges.
    ``callbacks`` (e.g. an Optuna pruning callback) see ``val_loss`` in
    ``trainer.callback_metrics`` at ``on_validation_end``; steps are global steps.
    """
    started = time.perf_counter()
    _check_config(cfg)
    steps = resolve_steps(cfg)
    if cfg.devices > 1 and not inside_launched_rank():
        if callbacks:
            warnings.warn("multi-device runs ignore caller callbacks (no pruning or step progress)", stacklevel=2)
        return run_ddp(cfg)
    corpus = load_corpus(cfg.data)
    _check_vocab(cfg, corpus)
    if progress is None:
        progress = sys.stderr.isatty()
    out_dir = Path(cfg.out_dir) if cfg.out_dir is not None else None
    diag_path = out_dir / "diagnostics.json" if out_dir is not None else None
    trainer = module = None
    try:
        with quiet_lightning(), _restore_torch_flags():
            L.seed_everything(cfg.seed, workers=True, verbose=False)
            data = LMDataModule(
                corpus, seq_len=cfg.model.seq_len, batch_size=cfg.batch_size, seed=cfg.seed, val_windows=cfg.val_windows
            )
            module = LitLM(cfg, steps)
            timer = _TrainTimer()
            diagnostics = DiagnosticsCallback(cfg.diagnostics_every, data.val_inputs[: cfg.batch_size], diag_path)
            trainer = build_trainer(cfg, steps, [timer, diagnostics, *callbacks], progress)
            _fit(trainer, module, data, _resume_checkpoint(cfg))
            if not module.val_curve or module.val_curve[-1][0] != trainer.global_step:
                trainer.validate(module, datamodule=data, verbose=False)
            if diag_path is not None and trainer.is_global_zero:
                diagnostics.write(module.model)
            result = _result(cfg, steps, corpus, module, trainer, timer, diagnostics, diag_path, started)
        if out_dir is not None and trainer.is_global_zero:
            out_dir.mkdir(parents=True, exist_ok=True)
            (out_dir / "run.json").write_text(json.dumps(result.to_dict(), indent=1))
        return result
    finally:
        del trainer, module
        gc.collect()
        if torch.cuda.is_available():
            torch.cuda.empty_cache()


def _result(
    cfg: RunConfig,
    steps: int,
    corpus: Corpus,
    module: LitLM,
    trainer: L.Trainer,
    timer: _TrainTimer,
    diagnostics: DiagnosticsCallback,
    diag_path: Path | None,
    started: float,
) -> RunResult:
    tokens_per_step = cfg.batch_size * cfg.model.seq_len * trainer.world_size
    tokens = steps * tokens_per_step
    train_flops = flops_per_token(cfg.model)["train"]
    final = module.val_curve[-1][1]
    return RunResult(
        config=cfg.to_dict(),
        params_total=module.model.num_params(),
        params_non_embedding=module.model.num_params(non_embedding=True),
        flops_per_token=train_flops,
        flops_total=train_flops * tokens,
        tokens=tokens,
        steps=steps,
        tokens_per_s=timer.steps * tokens_per_step / timer.seconds if timer.seconds > 0 else 0.0,
        wall_time_s=time.perf_counter() - started,
        final_val_loss=final,
        best_val_loss=min(loss for _, loss in module.val_curve),
        final_val_bpb=final / math.log(2) if corpus.byte_level else None,
        val_curve=list(module.val_curve),
        train_curve=list(module.train_curve),
        diagnostics_path=str(diag_path) if diag_path is not None else None,
        diagnostics_summary=diagnostics.summary(),
        data_hash=corpus.data_hash,
        device_name=_device_name(trainer),
        versions=_versions(),
        git_commit=_git_commit(),
        resumed_from_step=module.resumed_from_step,
    )
