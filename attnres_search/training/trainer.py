"""The Lightning Trainer every run uses (also timed by ``bench step``), the precision it
picks, and the process-wide state a run must leave as it found it.

A study worker builds hundreds of Trainers in one process, so each is quiet (no banners,
tips or known-harmless warnings) and the torch flags ``Trainer(deterministic=...)`` sets
are put back afterwards.
"""

from __future__ import annotations

import contextlib
import logging
import os
import warnings
from collections.abc import Iterator, Sequence
from pathlib import Path
from typing import Any

import lightning as L
import torch
from lightning.pytorch.callbacks import ModelCheckpoint
from lightning.pytorch.loggers import Logger

from attnres_search.training.config import RunConfig
from attnres_search.training.lit_module import TRAIN_LOG_EVERY

CHECKPOINT_DIR = "checkpoints"
LAST_CHECKPOINT = "last.ckpt"
_QUIET_LOGGERS = ("lightning", "lightning.pytorch", "lightning.fabric", "pytorch_lightning", "lightning_fabric")


def on_gpu(cfg: RunConfig) -> bool:
    """Whether the run trains on CUDA devices."""
    if cfg.accelerator == "auto":
        return torch.cuda.is_available()
    return cfg.accelerator in ("gpu", "cuda")


def precision(cfg: RunConfig) -> str:
    """``auto``: bf16-mixed on GPU, 32-true on CPU; otherwise the precision asked for."""
    if cfg.precision != "auto":
        return cfg.precision
    return "bf16-mixed" if on_gpu(cfg) else "32-true"


def last_checkpoint(cfg: RunConfig) -> Path:
    """Where the run's latest checkpoint lives (the one ``resume`` continues from)."""
    assert cfg.out_dir is not None
    return Path(cfg.out_dir) / CHECKPOINT_DIR / LAST_CHECKPOINT


def build_trainer(cfg: RunConfig, steps: int, callbacks: Sequence[L.Callback],
                  loggers: Sequence[Logger] = ()) -> L.Trainer:
    """A Trainer for ``steps`` optimizer steps. Lightning's own progress bar stays off: runs
    show :class:`attnres_search.training.progress.TrainProgress` (passed in ``callbacks``).
    ``loggers`` (:mod:`attnres_search.training.loggers`) get what the module logs every
    ``TRAIN_LOG_EVERY`` steps, the steps it logs at; without any, logging is off entirely."""
    all_callbacks = list(callbacks)
    if cfg.ckpt_every is not None:
        all_callbacks.append(
            ModelCheckpoint(
                dirpath=last_checkpoint(cfg).parent,
                every_n_train_steps=cfg.ckpt_every,
                save_last=True,
                save_top_k=0,
                enable_version_counter=False,
            )
        )
    strategy: Any = "auto"
    if cfg.devices > 1:
        from lightning.pytorch.strategies import DDPStrategy

        strategy = DDPStrategy(process_group_backend="nccl" if on_gpu(cfg) else "gloo")
    nodes = _srun_nodes(cfg)
    return L.Trainer(
        accelerator=cfg.accelerator,
        devices=cfg.devices // nodes,
        num_nodes=nodes,
        strategy=strategy,
        precision=precision(cfg),  # type: ignore[arg-type]
        max_steps=steps,
        max_epochs=-1,
        val_check_interval=cfg.val_every,
        check_val_every_n_epoch=None,
        num_sanity_val_steps=0,
        gradient_clip_val=cfg.grad_clip if cfg.grad_clip and cfg.grad_clip > 0 else None,
        deterministic=not on_gpu(cfg),  # bit-identical CPU runs; GPU keeps its fast kernels
        logger=list(loggers) if loggers else False,
        log_every_n_steps=TRAIN_LOG_EVERY,
        enable_checkpointing=cfg.ckpt_every is not None,
        enable_model_summary=False,
        enable_progress_bar=False,
        use_distributed_sampler=False,  # batches are already per-rank functions of (seed, step)
        default_root_dir=cfg.out_dir,
        callbacks=all_callbacks,
    )


def _srun_nodes(cfg: RunConfig) -> int:
    """Nodes of a multi-device run whose ranks ``srun`` started over several nodes (``launch
    --slurm``): Lightning takes devices per node and the node count, which Slurm's step gives."""
    nodes = int(os.environ.get("SLURM_NNODES") or 1)
    if cfg.devices > 1 and nodes > 1 and os.environ.get("WORLD_SIZE") == str(cfg.devices) and cfg.devices % nodes == 0:
        return nodes
    return 1


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
        warnings.filterwarnings("ignore", message=r".*`ThroughputMonitor`.*`flops_per_batch`.*")  # see training/loggers.py
        warnings.filterwarnings("ignore", message=r".*isinstance\(treespec, LeafSpec\).*")  # torch 2.13 vs Lightning 2.6
        for name in _QUIET_LOGGERS:
            logging.getLogger(name).setLevel(logging.WARNING)
        try:
            yield
        finally:
            for name, level in levels.items():
                logging.getLogger(name).setLevel(level)


@contextlib.contextmanager
def restore_torch_flags() -> Iterator[None]:
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
