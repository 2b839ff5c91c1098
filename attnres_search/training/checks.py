"""Everything a run would fail on later, checked before anything is written.

:func:`check_run` is the one gate every run passes: ``train`` calls it before it creates
its output folder, and the study side calls it for every run a space makes before the
study is created, so a bad token budget, an unknown optimizer, a missing data file or a
model that cannot fit in memory is a one-line :class:`BadInput` (exit 2) naming the
field, never a traceback in every trial. The checks read metadata only (file sizes,
shard headers, arithmetic parameter counts): nothing is allocated, trained or written.
"""

from __future__ import annotations

import math
import os
import tempfile
from pathlib import Path

import torch

from attnres_search.errors import BadInput
from attnres_search.model.flops import count_params
from attnres_search.training.config import COMPILE_MODES, OPTIMIZERS, SCHEDULES, RunConfig
from attnres_search.training.data import check_source

PRECISIONS = (
    "auto", "64-true", "64", "32-true", "32", "16-mixed", "16", "bf16-mixed", "bf16", "16-true", "bf16-true",
    "transformer-engine", "transformer-engine-float16",
)  # fmt: skip
ACCELERATORS = ("auto", "cpu", "gpu", "cuda", "mps", "tpu", "hpu")
# fp32 weights, fp32 gradients and two fp32 AdamW moments (Muon keeps one: AdamW bounds it).
BYTES_PER_PARAM_TRAINING = 16
_POSITIVE_INTS = ("batch_size", "val_every", "val_windows", "diagnostics_every", "devices")


def check_run(config: RunConfig) -> None:
    """Raise :class:`BadInput` (a ``ValueError``) naming the field for anything in
    ``config`` that would make the run fail later: counts, names, learning rates, the
    output folder, the data source and whether the model fits in memory."""
    cfg = config
    for name in _POSITIVE_INTS:
        _positive_int(name, getattr(cfg, name))
    if not _is_int(cfg.seed) or cfg.seed < 0:
        raise BadInput(f"seed must be a non-negative integer, got {cfg.seed!r}")
    check_budget(cfg)
    check_optimization(cfg)
    if str(cfg.precision) not in PRECISIONS:
        raise BadInput(f"precision must be one of {', '.join(PRECISIONS)}; got {cfg.precision!r}")
    if not isinstance(cfg.compile, bool) and cfg.compile not in COMPILE_MODES:
        raise BadInput(f"compile must be true, false or a mode ({', '.join(COMPILE_MODES)}); got {cfg.compile!r}")
    if cfg.accelerator not in ACCELERATORS:
        raise BadInput(f"accelerator must be one of {', '.join(ACCELERATORS)}; got {cfg.accelerator!r}")
    if cfg.ckpt_every is not None:
        _positive_int("ckpt_every", cfg.ckpt_every)
        if cfg.out_dir is None:
            raise BadInput("ckpt_every needs an out_dir for the checkpoints")
    if cfg.resume and cfg.out_dir is None:
        raise BadInput("resume needs an out_dir holding the checkpoints")
    if cfg.out_dir is not None:
        check_writable_dir(cfg.out_dir, "out_dir")
    if cfg.logger:
        from attnres_search.training.loggers import check_loggers, log_root

        check_loggers(cfg.logger)
        check_writable_dir(log_root(cfg), "log_dir")
    check_source(cfg.data, vocab_size=cfg.model.vocab_size, seq_len=cfg.model.seq_len)
    check_memory(cfg)


def _is_int(value: object) -> bool:
    return isinstance(value, int) and not isinstance(value, bool)


def _positive_int(name: str, value: object) -> None:
    if not _is_int(value) or value < 1:  # type: ignore[operator]
        raise BadInput(f"{name} must be a positive integer, got {value!r}")


def tokens_per_step(cfg: RunConfig) -> int:
    """Tokens one optimizer step consumes over all devices."""
    return cfg.batch_size * cfg.model.seq_len * cfg.devices


def check_budget(cfg: RunConfig) -> None:
    """A token budget of at least one step, or (without one) a positive step count."""
    per_step = tokens_per_step(cfg)
    if cfg.tokens is not None:
        if isinstance(cfg.tokens, float) and not math.isfinite(cfg.tokens):
            raise BadInput(f"tokens must be a finite number, got {cfg.tokens!r}")
        if not _is_int(cfg.tokens):
            raise BadInput(f"tokens must be an integer, got {cfg.tokens!r}")
        if cfg.tokens <= 0:
            raise BadInput(f"tokens must be positive, got {cfg.tokens}")
        if cfg.tokens < per_step:
            raise BadInput(
                f"tokens={cfg.tokens} is less than one step (batch_size x seq_len x devices = {per_step} tokens)"
            )
        return
    if cfg.steps is None:
        raise BadInput("give a token budget (tokens) or a number of steps (steps)")
    _positive_int("steps", cfg.steps)


def _finite(name: str, value: object, *, positive: bool = False) -> float:
    if isinstance(value, bool) or not isinstance(value, (int, float)) or not math.isfinite(value):
        raise BadInput(f"{name} must be a finite number, got {value!r}")
    if positive and value <= 0:
        raise BadInput(f"{name} must be positive, got {value!r}")
    if not positive and value < 0:
        raise BadInput(f"{name} must not be negative, got {value!r}")
    return float(value)


def check_optimization(cfg: RunConfig) -> None:
    """Known optimizer and schedule, finite positive learning rates, sane fractions."""
    if cfg.optimizer not in OPTIMIZERS:
        raise BadInput(f"optimizer must be one of {', '.join(OPTIMIZERS)}; got {cfg.optimizer!r}")
    if cfg.schedule not in SCHEDULES:
        raise BadInput(f"schedule must be one of {', '.join(SCHEDULES)}; got {cfg.schedule!r}")
    _finite("lr", cfg.lr, positive=True)
    _finite("muon_lr", cfg.muon_lr, positive=True)
    _finite("weight_decay", cfg.weight_decay)
    _finite("grad_clip", cfg.grad_clip)
    warmup = _finite("warmup_frac", cfg.warmup_frac)
    decay = _finite("decay_frac", cfg.decay_frac)
    if warmup > 1 or decay > 1 or warmup + decay > 1:
        raise BadInput(f"warmup_frac ({warmup}) and decay_frac ({decay}) must lie in [0, 1] and sum to at most 1")


def check_writable_dir(path: str | os.PathLike[str], name: str = "out_dir") -> None:
    """``path`` is a folder we can write in, or one we can create: its nearest existing
    ancestor is a writable folder. Probed with a temporary file that is removed at once,
    because ``os.access`` says yes to root on a read-only file system."""
    target = Path(path).expanduser()
    if target.exists() and not target.is_dir():
        raise BadInput(f"{name} {str(path)!r} exists and is not a folder")
    probe = target
    while not probe.exists():
        if probe.parent == probe:
            break
        probe = probe.parent
    if not probe.is_dir():
        raise BadInput(f"{name} {str(path)!r} cannot be created: {str(probe)!r} is not a folder")
    try:
        with tempfile.TemporaryFile(dir=probe):
            pass
    except OSError as exc:
        raise BadInput(f"{name} {str(path)!r} is not writable: {exc.strerror or exc}") from None


def estimated_params(cfg: RunConfig) -> int:
    """Parameters of the run's model, counted by arithmetic
    (:func:`attnres_search.model.flops.count_params`): nothing is allocated."""
    return count_params(cfg.model)["total"]


def memory_limit_bytes(cfg: RunConfig) -> int | None:
    """Memory a run may use on one device: the GPU's when it trains on one, else RAM."""
    if cfg.accelerator in ("gpu", "cuda", "auto") and torch.cuda.is_available():
        return int(torch.cuda.get_device_properties(0).total_memory)
    try:
        return int(os.sysconf("SC_PHYS_PAGES") * os.sysconf("SC_PAGE_SIZE"))
    except (ValueError, OSError, AttributeError):
        return None


def check_memory(cfg: RunConfig) -> None:
    """Refuse a model whose weights, gradients and optimizer state alone exceed memory."""
    need = estimated_params(cfg) * BYTES_PER_PARAM_TRAINING
    limit = memory_limit_bytes(cfg)
    if limit is not None and need > limit:
        raise BadInput(
            f"model (d_model={cfg.model.d_model}, n_layers={cfg.model.n_layers}, vocab_size={cfg.model.vocab_size}) "
            f"has about {estimated_params(cfg):.3g} parameters and needs {need / 2**30:.3g} GiB for weights, "
            f"gradients and optimizer state; this machine has {limit / 2**30:.3g} GiB"
        )
