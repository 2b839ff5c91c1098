"""A search space: which runs a study makes (the schema, once validated).

A :class:`Space` is built from a YAML file by :mod:`attnres_search.study.space_file`,
which validates every key first; here live the dataclasses and how one trial's
parameters become a :class:`~attnres_search.training.config.RunConfig`.

A study's trial parameters are ``variant``, ``seed``, ``size`` (with sizes), ``ratio``
(with shapes) and one per axis; a *cell* is one setting of all of them but the seed.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from typing import Any, Mapping

from attnres_search.model.config import ModelConfig
from attnres_search.study import cells as cells_
from attnres_search.study.design import Design
from attnres_search.study.rules import Rule, with_fields
from attnres_search.training.config import RunConfig

KINDS = ("ablation", "block-count", "depth-width", "scaling")
SAMPLERS = ("auto", "grid", "tpe", "random")
RESERVED_PARAMS = ("variant", "seed", "size", "ratio")
LEVELS = ("train", "model", "residual")  # where a swept field lives: RunConfig, ModelConfig, the rule


@dataclass(frozen=True)
class Variant:
    """One residual rule of the comparison. ``preset`` names the paper row it came from."""

    name: str
    preset: str
    residual: Rule


@dataclass(frozen=True)
class Axis:
    """A swept field: grid ``values``, or a sampled range ``low``..``high``."""

    name: str
    level: str  # one of LEVELS
    values: tuple[Any, ...] | None = None
    low: float | None = None
    high: float | None = None
    log: bool = False
    integer: bool = False

    @property
    def is_grid(self) -> bool:
        return self.values is not None

    def ends(self) -> tuple[Any, Any]:
        """Both ends of a range (ints for an integer range)."""
        assert self.low is not None and self.high is not None
        return (int(self.low), int(self.high)) if self.integer else (self.low, self.high)


@dataclass(frozen=True)
class Shapes:
    """Depth-width cells: for each target d_model/n_layers ratio, the depth whose model at
    that ratio has about ``params`` non-embedding parameters (12·L_b·d² for attention plus
    SwiGLU), then the width (a multiple of ``head_dim``) that keeps the parameters closest
    to ``params`` at that whole depth. The realised ratio d_model/L_b is what reports use."""

    ratios: tuple[float, ...]
    params: int
    head_dim: int

    def model_fields(self, ratio: float) -> dict[str, int]:
        n_layers = max(1, round((self.params / (12 * ratio * ratio)) ** (1 / 3)))
        width = (self.params / (12 * n_layers)) ** 0.5
        d_model = max(self.head_dim, round(width / self.head_dim) * self.head_dim)
        return {"n_layers": n_layers, "d_model": d_model, "n_heads": d_model // self.head_dim}


@dataclass(frozen=True)
class Space:
    """A validated search space. ``source`` is the mapping it was built from; studies store
    it so that resuming never depends on the file still being there or unchanged."""

    name: str
    kind: str
    description: str
    model: dict[str, Any]
    train: dict[str, Any]
    variants: tuple[Variant, ...]
    baseline: str
    seeds: tuple[int, ...]
    extra_seeds: dict[str, tuple[int, ...]] = field(default_factory=dict)  # cell label (no seed) -> more seeds
    axes: tuple[Axis, ...] = ()
    sizes: dict[str, dict[str, dict[str, Any]]] = field(default_factory=dict)  # label -> level -> fields
    shapes: Shapes | None = None
    budget_flops: float | None = None
    sampler: str = "grid"
    n_trials: int | None = None
    pruner: dict[str, Any] | None = None  # {"type": ..., **arguments}, None: no pruning
    design: Design | None = None  # a pre-registered sequential design; None: a fixed-n study
    source: dict[str, Any] = field(default_factory=dict)

    @property
    def is_grid(self) -> bool:
        return self.sampler == "grid"

    def variant(self, name: str) -> Variant:
        for v in self.variants:
            if v.name == name:
                return v
        raise ValueError(f"space {self.name}: no variant {name!r}")

    def choices(self) -> dict[str, tuple[Any, ...]]:
        """Every categorical parameter and its values, in suggestion order (seed last)."""
        out: dict[str, tuple[Any, ...]] = {"variant": tuple(v.name for v in self.variants)}
        if self.sizes:
            out["size"] = tuple(self.sizes)
        if self.shapes is not None:
            out["ratio"] = self.shapes.ratios
        for axis in self.axes:
            if axis.values is not None:
                out[axis.name] = axis.values
        out["seed"] = self.seeds
        return out

    def all_seeds(self) -> tuple[int, ...]:
        """Every seed some cell runs: ``seeds`` plus the cells' extra seeds."""
        extra = {s for seeds in self.extra_seeds.values() for s in seeds}
        return self.seeds + tuple(sorted(extra - set(self.seeds)))

    def base_cells(self) -> list[dict[str, Any]]:
        """Every cell x seed of the space's common seeds (no extra seeds)."""
        if not self.is_grid:
            raise ValueError(f"space {self.name} samples with {self.sampler}: it has no fixed list of cells")
        return cells_.expand(self.choices())

    def cells(self) -> list[dict[str, Any]]:
        """Every cell x seed of a grid space, as trial parameters: each cell once per seed
        and once per extra seed ``study extend`` gave it."""
        cells = self.base_cells()
        if not self.extra_seeds:
            return cells
        out = list(cells)
        for params in cells_.distinct_runs(cells):
            label = cells_.cell_label(params, seed=False)
            out += [{**params, "seed": seed} for seed in self.extra_seeds.get(label, ())]
        return out

    def representative_cells(self) -> list[dict[str, Any]]:
        """Cells that together exercise every value the space can give a run: every grid
        cell, or for a sampled space every categorical combination at both ends of each range."""
        if self.is_grid:
            return self.cells()
        return cells_.corners(self.choices(), {a.name: a.ends() for a in self.axes if not a.is_grid})

    def run_config(self, params: Mapping[str, Any], out_dir: str | None = None) -> RunConfig:
        """The training run of one trial."""
        levels: dict[str, dict[str, Any]] = {"model": dict(self.model), "train": dict(self.train), "residual": {}}
        if "size" in params:
            for level, values in self.sizes[params["size"]].items():
                levels[level].update(values)
        if self.shapes is not None and "ratio" in params:
            levels["model"].update(self.shapes.model_fields(params["ratio"]))
        for axis in self.axes:
            if axis.name in params:
                levels[axis.level][axis.name] = params[axis.name]
        residual = with_fields(self.variant(params["variant"]).residual, levels["residual"])
        model = ModelConfig(**levels["model"], residual=residual)
        train = levels["train"]
        if self.budget_flops is not None:
            train["tokens"] = tokens_for_budget(model, self.budget_flops, train.get("batch_size", 16))
            train["steps"] = None
        return RunConfig(model=model, seed=int(params["seed"]), out_dir=out_dir,
                         resume=train.get("ckpt_every") is not None, **train)


def tokens_for_budget(model: ModelConfig, flops: float, batch_size: int) -> int:
    """Tokens that spend ``flops`` training FLOPs, in whole batches (at least one)."""
    from attnres_search.model.flops import flops_per_token

    per_batch = batch_size * model.seq_len
    batches = max(1, math.floor(flops / flops_per_token(model)["train"] / per_batch))
    return batches * per_batch
