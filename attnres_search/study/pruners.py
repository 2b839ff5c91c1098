"""Pruners: the ``pruner:`` key of a space and the Optuna pruner it makes.

Pruning reports against the global step (see :class:`attnres_search.study.callbacks.StepPruning`).
Optuna is imported inside the functions so that reading a space stays quick.
"""

from __future__ import annotations

import inspect
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    import optuna

    from attnres_search.study.space import Space

PRUNERS = ("none", "median", "hyperband")


def pruner_class(kind: str) -> type:
    import optuna

    return {"median": optuna.pruners.MedianPruner, "hyperband": optuna.pruners.HyperbandPruner}[kind]


def pruner_arguments(kind: str) -> tuple[str, ...]:
    """The constructor arguments the Optuna pruner of ``kind`` accepts (for validation)."""
    return tuple(p for p in inspect.signature(pruner_class(kind)).parameters if p != "self")


def make_pruner(space: "Space") -> "optuna.pruners.BasePruner":
    """The Optuna pruner of a space (NopPruner when it does not prune)."""
    import optuna

    if space.pruner is None:
        return optuna.pruners.NopPruner()
    kwargs: dict[str, Any] = {k: v for k, v in space.pruner.items() if k != "type"}
    return pruner_class(space.pruner["type"])(**kwargs)
