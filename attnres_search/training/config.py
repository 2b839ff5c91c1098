"""What one training run is asked to do (:class:`RunConfig`) and what it reports back
(:class:`RunResult`). This is the contract between the trainer, the studies that store
runs as Optuna trials, and the reports that read them back: every field here round-trips
through JSON so a trial's user attributes hold the whole story.
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass, field
from typing import Any

from attnres_search.model.config import ModelConfig

OPTIMIZERS = ("adamw", "muon")
SCHEDULES = ("wsd", "cosine")
LOGGERS = ("tensorboard", "csv", "wandb", "mlflow")  # Lightning loggers a run can write to
# torch.compile modes: "reduce-overhead" replays CUDA graphs (static shapes, no per-kernel
# launch cost), "max-autotune" also tunes GEMMs; both only make a difference on a GPU.
COMPILE_MODES = ("default", "reduce-overhead", "max-autotune", "max-autotune-no-cudagraphs")


@dataclass
class RunConfig:
    """One training run. The token budget wins over ``steps`` when both are given."""

    model: ModelConfig = field(default_factory=ModelConfig)
    data: str = "pystdlib"  # pystdlib | text:PATH | shards:GLOB | hf:NAME[:CONFIG]
    tokens: int | None = 1_000_000
    steps: int | None = None
    batch_size: int = 16
    optimizer: str = "adamw"  # adamw | muon
    lr: float = 3e-3  # AdamW learning rate (embeddings, head, norms, residual-rule params)
    muon_lr: float = 0.02  # Muon learning rate for 2-D hidden matrices
    weight_decay: float = 0.1
    schedule: str = "wsd"  # wsd (warmup-stable-decay) | cosine
    warmup_frac: float = 0.05
    decay_frac: float = 0.2  # WSD: fraction of steps in the final linear decay
    grad_clip: float = 1.0
    seed: int = 0
    val_every: int = 50  # steps between validations
    val_windows: int = 32  # fixed validation windows of seq_len tokens
    diagnostics_every: int = 100  # steps between diagnostics snapshots (and one at the end)
    precision: str = "auto"  # auto: bf16-mixed on GPU, 32-true on CPU
    compile: bool | str = False  # True (mode "default") or one of COMPILE_MODES
    accelerator: str = "auto"
    devices: int = 1  # > 1: Lightning DDP within one trial
    out_dir: str | None = None  # run.json, diagnostics.json and checkpoints go here
    ckpt_every: int | None = None  # steps between Lightning checkpoints (None: none)
    resume: bool = False  # continue from out_dir's last checkpoint when there is one
    # Lightning loggers the run writes to (tensorboard | csv | wandb | mlflow), see training/loggers.py;
    # they change where numbers are shown, never what is computed (so a run may resume with others).
    logger: list[str] = field(default_factory=list)
    log_dir: str | None = None  # where loggers write [default: out_dir/logs, else ./lightning_logs]
    run_name: str | None = None  # the run's name in the loggers [default: rule and seed; studies: cell and seed]
    experiment: str | None = None  # the loggers' experiment / project [default: attnres-search; studies: the study]

    def to_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> "RunConfig":
        data = dict(data)
        names = {f.name for f in dataclasses.fields(cls)}
        unknown = sorted(set(data) - names)
        if unknown:
            raise ValueError(f"unknown run field(s) {', '.join(map(repr, unknown))}")
        if isinstance(data.get("model"), dict):
            data["model"] = ModelConfig.from_dict(data["model"])
        return cls(**data)


@dataclass
class RunResult:
    """Everything a finished run measured. Losses are nats/token on the fixed validation windows."""

    config: dict[str, Any]
    params_total: int
    params_non_embedding: int
    flops_per_token: float  # training FLOPs per token (forward + backward)
    flops_total: float
    tokens: int
    steps: int
    tokens_per_s: float
    wall_time_s: float
    final_val_loss: float
    best_val_loss: float
    final_val_bpb: float | None = None  # bits per byte, byte-level data only
    val_curve: list[tuple[int, float]] = field(default_factory=list)  # (global step, loss)
    val_elapsed_s: list[float] = field(default_factory=list)  # training seconds at each val_curve point
    train_curve: list[tuple[int, float]] = field(default_factory=list)
    diagnostics_path: str | None = None
    diagnostics_summary: dict[str, Any] = field(default_factory=dict)
    data_hash: str | None = None
    device_name: str = "cpu"
    # The hardware that produced the bits (CPU model, torch's CPU capability; GPU, driver, CUDA):
    # the same seed is bit-identical only on the same hardware and software.
    hardware: dict[str, str] = field(default_factory=dict)
    versions: dict[str, str] = field(default_factory=dict)
    git_commit: str | None = None
    resumed_from_step: int | None = None
    # True when a signal (SIGTERM) stopped the run early: the numbers cover the steps done
    # (``steps`` of the planned ``config``), the losses are the last measured (None if none).
    interrupted: bool = False

    def to_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> "RunResult":
        names = {f.name for f in dataclasses.fields(cls)}
        return cls(**{k: v for k, v in data.items() if k in names})


def compile_mode(cfg: RunConfig) -> str | None:
    """The ``torch.compile`` mode a run asks for, or ``None`` for eager. ``compile: true``
    means mode ``"default"``; a mode name means compiled in that mode."""
    if cfg.compile is False:
        return None
    return "default" if cfg.compile is True else str(cfg.compile)
