"""Optimizers and learning-rate schedules.

``muon``: :class:`torch.optim.Muon` for the 2-D matrices inside sublayers, AdamW for the
embedding, head, norms and residual-rule parameters. ``adamw``: AdamW for everything.
Either way Lightning sees *one* optimizer (:class:`CombinedOptimizer`): Lightning counts
every optimizer's step as a global step, so two optimizers would make ``global_step``
(and with it pruning, validation and checkpoint intervals) run twice as fast; one
optimizer also lets Lightning's gradient clipping and the schedule cover all parameters.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any

import torch
from torch.optim import AdamW, Optimizer
from torch.optim.lr_scheduler import LambdaLR

from attnres_search.model.decoder import AttnResLM
from attnres_search.training.checks import check_optimization
from attnres_search.training.config import OPTIMIZERS, SCHEDULES, RunConfig

__all__ = ["OPTIMIZERS", "SCHEDULES", "CombinedOptimizer", "Schedule", "build_optimizer", "build_scheduler"]
ADAM_BETAS = (0.9, 0.95)
MUON_MOMENTUM = 0.95


class CombinedOptimizer(Optimizer):
    """Several optimizers stepped as one. ``param_groups`` are the parts' own group dicts,
    so a scheduler changing ``lr`` here changes it in the part that owns the group."""

    def __init__(self, parts: Sequence[Optimizer]) -> None:
        self.parts = list(parts)
        params = [p for part in self.parts for group in part.param_groups for p in group["params"]]
        super().__init__(params, defaults={})
        self.param_groups = [group for part in self.parts for group in part.param_groups]

    @property  # type: ignore[override]
    def state(self) -> dict[torch.Tensor, Any]:
        """A merged view of the parts' states (parameters are disjoint)."""
        return {p: s for part in self.parts for p, s in part.state.items()}

    @state.setter
    def state(self, value: Any) -> None:
        if value:  # Optimizer.__init__ assigns an empty state; real state lives in the parts
            raise AttributeError("CombinedOptimizer.state is owned by its parts")

    def step(self, closure: Callable[[], Any] | None = None) -> Any:  # type: ignore[override]
        loss = None
        if closure is not None:
            with torch.enable_grad():
                loss = closure()
        for part in self.parts:
            part.step()
        return loss

    def zero_grad(self, set_to_none: bool = True) -> None:
        for part in self.parts:
            part.zero_grad(set_to_none=set_to_none)

    def state_dict(self) -> dict[str, Any]:  # type: ignore[override]
        return {"parts": [part.state_dict() for part in self.parts]}

    def load_state_dict(self, state_dict: dict[str, Any]) -> None:  # type: ignore[override]
        saved = state_dict["parts"]
        if len(saved) != len(self.parts):
            raise ValueError(f"optimizer state has {len(saved)} parts, this optimizer has {len(self.parts)}")
        for part, part_state in zip(self.parts, saved):
            part.load_state_dict(part_state)
        # Loading replaces the parts' group dicts; share the new ones, or the scheduler
        # would go on changing the lr of groups no part uses any more.
        self.param_groups = [group for part in self.parts for group in part.param_groups]


def build_optimizer(model: AttnResLM, cfg: RunConfig) -> CombinedOptimizer:
    """Muon + AdamW or AdamW alone; residual-rule and norm parameters are never decayed."""
    check_optimization(cfg)
    fused = {"fused": True} if next(model.parameters()).is_cuda else {}
    if cfg.optimizer == "adamw":
        adamw = AdamW(model.param_groups(cfg.weight_decay), lr=cfg.lr, betas=ADAM_BETAS, **fused)
        return CombinedOptimizer([adamw])
    kinds = model.param_kinds()
    muon = torch.optim.Muon(kinds["hidden"], lr=cfg.muon_lr, weight_decay=cfg.weight_decay, momentum=MUON_MOMENTUM)
    adamw = AdamW(
        [
            {"params": kinds["embedding"] + kinds["head"], "weight_decay": cfg.weight_decay},
            {"params": kinds["norm"] + kinds["residual"], "weight_decay": 0.0},
        ],
        lr=cfg.lr,
        betas=ADAM_BETAS,
        **fused,
    )
    return CombinedOptimizer([muon, adamw])


@dataclass(frozen=True)
class Schedule:
    """LR multiplier of step ``s`` (0-based). Linear warmup, then either constant with a
    final linear decay (``wsd``) or a cosine to zero (``cosine``). The decay never reaches
    exactly zero on the last step so that every step still updates the weights."""

    kind: str
    total_steps: int
    warmup_steps: int
    decay_steps: int

    def __call__(self, step: int) -> float:
        if step < self.warmup_steps:
            return (step + 1) / self.warmup_steps
        if self.kind == "cosine":
            span = max(1, self.total_steps - self.warmup_steps)
            return 0.5 * (1 + math.cos(math.pi * min(1.0, (step - self.warmup_steps) / span)))
        decay_start = self.total_steps - self.decay_steps
        if self.decay_steps and step >= decay_start:
            return max(0.0, (self.total_steps - step) / self.decay_steps)
        return 1.0


def build_scheduler(optimizer: Optimizer, cfg: RunConfig, total_steps: int) -> LambdaLR:
    check_optimization(cfg)
    schedule = Schedule(
        cfg.schedule,
        total_steps,
        warmup_steps=round(cfg.warmup_frac * total_steps),
        decay_steps=round(cfg.decay_frac * total_steps),
    )
    return LambdaLR(optimizer, schedule)
