"""Search spaces: YAML files that say which runs a study makes.

A space is validated completely when it is loaded, before any storage is touched, so a
typo fails in a second with a message naming the key instead of hours later in a trial.
Built-in spaces ship in ``attnres_search.search_spaces`` (``spaces list``); any other
path to a ``.yaml`` file works too.

Schema (every key but ``variants`` is optional)::

    name: my_space          # default: the file name without .yaml
    description: one line shown by `spaces list`
    kind: ablation          # report kind: ablation | block-count | depth-width | scaling
                            # (default: depth-width with `shapes`, scaling with `sizes`, else ablation)
    model:                  # ModelConfig fields shared by every run (not `residual`)
      n_layers: 2
      d_model: 48
    train:                  # RunConfig fields shared by every run (not model/seed/out_dir/resume)
      tokens: 200k          # integers accept k / M / B suffixes
      lr: 3.0e-3
      ckpt_every: 2000      # with checkpoints, a retried trial continues from its last one
    variants:               # the residual rules compared; each is a preset name (Table 4 rows)...
      - baseline
      - full
      - {name: full-s1, preset: full, score: sigmoid}   # ...or a preset plus ResidualConfig fields
    baseline: baseline      # variant the others are compared with (default: `baseline` if listed, else the first)
    seeds: 2                # a count (seeds 0..n-1) or a list of seeds; every cell runs once per seed
    axes:                   # extra swept fields of RunConfig / ModelConfig / ResidualConfig
      lr: [1.0e-3, 3.0e-3]                 # a list: grid values
      weight_decay: {low: 0.0, high: 0.2}  # a range: sampled (TPE); add `log: true`, `int: true`
    sizes:                  # scaling: label -> model/train/residual fields of that size
      xs: {n_layers: 2, d_model: 32, n_heads: 2, tokens: 100k}
    shapes:                 # depth-width: one model per target d_model/n_layers ratio...
      ratios: [4, 12, 32]
      params: 100k          # ...with about this many non-embedding parameters...
      head_dim: 8           # ...and heads of this many channels (reports use the realised ratio)
    budget:
      flops: 2.0e13         # training FLOPs per run: tokens = flops / train FLOPs per token,
                            # rounded down to whole batches, so every cell spends the same compute
    sampler: auto           # auto (grid when every axis is a list, else tpe) | grid | tpe | random
    n_trials: 20            # trials for tpe/random spaces (grid spaces run every cell x seed once)
    pruner: none            # none | median | hyperband, or {type: median, n_warmup_steps: 100, ...}

A study's trial parameters are ``variant``, ``seed``, ``size`` (with sizes), ``ratio``
(with shapes) and one per axis; a *cell* is one setting of all of them but the seed.
"""

from __future__ import annotations

import inspect
import itertools
import json
import math
import typing
from dataclasses import dataclass, field, replace
from importlib import resources
from pathlib import Path
from typing import Any, Mapping

import yaml

from attnres_search.model.config import PRESETS, ModelConfig, ResidualConfig
from attnres_search.training.config import RunConfig

KINDS = ("ablation", "block-count", "depth-width", "scaling")
SAMPLERS = ("auto", "grid", "tpe", "random")
PRUNERS = ("none", "median", "hyperband")
TOP_KEYS = ("name", "description", "kind", "model", "train", "variants", "baseline", "seeds", "axes",
            "sizes", "shapes", "budget", "sampler", "n_trials", "pruner")
RESERVED_PARAMS = ("variant", "seed", "size", "ratio")
# Fields the study owns: a space may not set them.
_MANAGED_RUN_FIELDS = ("model", "seed", "out_dir", "resume")
_MANAGED_MODEL_FIELDS = ("residual",)

_RUN_HINTS = typing.get_type_hints(RunConfig)
_MODEL_HINTS = typing.get_type_hints(ModelConfig)
_RESIDUAL_HINTS = typing.get_type_hints(ResidualConfig)
_SUFFIXES = {"k": 10**3, "m": 10**6, "b": 10**9, "g": 10**9}


@dataclass(frozen=True)
class Variant:
    """One residual rule of the comparison. ``preset`` names the paper row it came from."""

    name: str
    preset: str
    residual: ResidualConfig


@dataclass(frozen=True)
class Axis:
    """A swept field: grid ``values``, or a sampled range ``low``..``high``."""

    name: str
    level: str  # train | model | residual: where the field lives
    values: tuple[Any, ...] | None = None
    low: float | None = None
    high: float | None = None
    log: bool = False
    integer: bool = False

    @property
    def is_grid(self) -> bool:
        return self.values is not None


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
    axes: tuple[Axis, ...] = ()
    sizes: dict[str, dict[str, dict[str, Any]]] = field(default_factory=dict)  # label -> level -> fields
    shapes: Shapes | None = None
    budget_flops: float | None = None
    sampler: str = "grid"
    n_trials: int | None = None
    pruner: dict[str, Any] | None = None
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

    def cells(self) -> list[dict[str, Any]]:
        """Every cell x seed of a grid space, as trial parameters."""
        if not self.is_grid:
            raise ValueError(f"space {self.name} samples with {self.sampler}: it has no fixed list of cells")
        choices = self.choices()
        return [dict(zip(choices, combo)) for combo in itertools.product(*choices.values())]

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
        residual = self.variant(params["variant"]).residual
        if levels["residual"]:
            residual = replace(residual, **levels["residual"])
        model = ModelConfig(**levels["model"], residual=residual)
        train = levels["train"]
        if self.budget_flops is not None:
            train["tokens"] = tokens_for_budget(model, self.budget_flops, train.get("batch_size", 16))
            train["steps"] = None
        return RunConfig(model=model, seed=int(params["seed"]), out_dir=out_dir,
                         resume=train.get("ckpt_every") is not None, **train)


def cell_key(params: Mapping[str, Any]) -> str:
    """A stable identity for a cell x seed: trials with the same key are the same run."""
    return json.dumps(dict(params), sort_keys=True, separators=(",", ":"))


def tokens_for_budget(model: ModelConfig, flops: float, batch_size: int) -> int:
    """Tokens that spend ``flops`` training FLOPs, in whole batches (at least one)."""
    from attnres_search.model.flops import flops_per_token

    per_batch = batch_size * model.seq_len
    batches = max(1, math.floor(flops / flops_per_token(model)["train"] / per_batch))
    return batches * per_batch


# ----------------------------------------------------------------------------------- loading

def builtin_names() -> list[str]:
    return sorted(p.name[:-5] for p in resources.files("attnres_search.search_spaces").iterdir()
                  if p.name.endswith(".yaml"))


def load_space(name_or_path: str) -> Space:
    """A built-in space by name (``block-count`` and ``block_count`` both work) or a YAML file."""
    text, name, where = space_text(name_or_path)
    return parse_space(text, default_name=name, where=where)


def space_text(name_or_path: str) -> tuple[str, str, str]:
    """(YAML text, default name, where it came from) of a built-in name or a file path."""
    path = Path(name_or_path)
    if path.suffix in (".yaml", ".yml") or path.exists():
        if not path.is_file():
            raise ValueError(f"no search space file {name_or_path}")
        return path.read_text(), path.stem, str(path)
    name = name_or_path.replace("-", "_")
    if name not in builtin_names():
        raise ValueError(f"unknown search space {name_or_path!r}; built-in: {', '.join(builtin_names())} "
                         "(or give a path to a .yaml file)")
    return resources.files("attnres_search.search_spaces").joinpath(f"{name}.yaml").read_text(), name, name


def parse_space(text: str, *, default_name: str = "space", where: str = "space") -> Space:
    try:
        data = yaml.safe_load(text)
    except yaml.YAMLError as exc:
        mark = getattr(exc, "problem_mark", None)
        at = f" at line {mark.line + 1}, column {mark.column + 1}" if mark is not None else ""
        problem = getattr(exc, "problem", None) or str(exc).splitlines()[0]
        raise ValueError(f"search space {where}: malformed YAML{at}: {problem}") from None
    try:
        return space_from_dict(data, default_name=default_name)
    except ValueError as exc:
        raise ValueError(f"search space {where}: {exc}") from None


def space_from_dict(data: Any, *, default_name: str = "space") -> Space:
    """Validate a parsed space mapping. Errors name the offending key."""
    if not isinstance(data, dict):
        raise ValueError("the file must hold a mapping of keys (name, model, train, variants, ...)")
    _no_unknown(data, TOP_KEYS, "key")
    name = _typed(data.get("name", default_name), str, "name")
    model = _fields(data.get("model", {}), _MODEL_HINTS, _MANAGED_MODEL_FIELDS, "model")
    train = _fields(data.get("train", {}), _RUN_HINTS, _MANAGED_RUN_FIELDS, "train")
    variants = _variants(data.get("variants"))
    names = [v.name for v in variants]
    baseline = _typed(data.get("baseline", "baseline" if "baseline" in names else names[0]), str, "baseline")
    if baseline not in names:
        raise ValueError(f"baseline {baseline!r} is not one of the variants ({', '.join(names)})")
    axes = _axes(data.get("axes", {}))
    sizes = _sizes(data.get("sizes", {}))
    shapes = _shapes(data["shapes"]) if "shapes" in data else None
    if sizes and shapes is not None:
        raise ValueError("give sizes (scaling) or shapes (depth-width), not both")
    budget = _budget(data["budget"]) if "budget" in data else None
    if shapes is not None and budget is None:
        raise ValueError("shapes needs budget.flops, so that every depth/width cell spends the same compute")
    kind = _typed(data.get("kind", "depth-width" if shapes else "scaling" if sizes else "ablation"), str, "kind")
    if kind not in KINDS:
        raise ValueError(f"kind must be one of {', '.join(KINDS)}; got {kind!r}")
    sampler = _typed(data.get("sampler", "auto"), str, "sampler")
    if sampler not in SAMPLERS:
        raise ValueError(f"sampler must be one of {', '.join(SAMPLERS)}; got {sampler!r}")
    has_ranges = any(not a.is_grid for a in axes)
    if sampler == "auto":
        sampler = "tpe" if has_ranges else "grid"
    if sampler == "grid" and has_ranges:
        ranged = ", ".join(a.name for a in axes if not a.is_grid)
        raise ValueError(f"axes {ranged}: a grid sampler needs lists of values, not ranges")
    n_trials = data.get("n_trials")
    if n_trials is not None and (not isinstance(n_trials, int) or isinstance(n_trials, bool) or n_trials < 1):
        raise ValueError(f"n_trials must be a positive integer, got {n_trials!r}")
    if sampler != "grid" and n_trials is None:
        raise ValueError(f"n_trials is required with the {sampler} sampler")
    seeds = _seeds(data.get("seeds", 1))
    if sampler != "grid" and len(seeds) != 1:
        raise ValueError(f"seeds: a {sampler} space runs one seed per sampled point; give one seed")
    space = Space(name=name, kind=kind, description=_typed(data.get("description", ""), str, "description"),
                  model=model, train=train, variants=variants, baseline=baseline, seeds=seeds, axes=axes,
                  sizes=sizes, shapes=shapes, budget_flops=budget, sampler=sampler, n_trials=n_trials,
                  pruner=_pruner(data.get("pruner", "none")), source=dict(data, name=name))
    _check_cells(space)
    return space


def _check_cells(space: Space) -> None:
    """Build every run up front: a block size that does not divide the depth, or a width the
    heads do not divide, is reported now with the cell that has it."""
    cells = space.cells() if space.is_grid else _corner_cells(space)
    seen: set[str] = set()
    for params in cells:
        key = cell_key({k: v for k, v in params.items() if k != "seed"})
        if key in seen:
            continue
        seen.add(key)
        try:
            space.run_config(params)
        except (ValueError, TypeError) as exc:
            shown = ", ".join(f"{k}={v}" for k, v in params.items() if k != "seed")
            raise ValueError(f"cell {shown}: {exc}") from None


def _corner_cells(space: Space) -> list[dict[str, Any]]:
    """For sampled spaces: every categorical combination with each range at both ends."""
    choices = space.choices()
    ends = {a.name: ((int(a.low), int(a.high)) if a.integer else (a.low, a.high)) for a in space.axes if not a.is_grid}
    return [dict(zip(choices, combo)) | dict(zip(ends, corner))
            for combo in itertools.product(*choices.values()) for corner in itertools.product(*ends.values())]


# ----------------------------------------------------------------------------- key checkers

def _no_unknown(data: Mapping[str, Any], known: tuple[str, ...], what: str, where: str = "") -> None:
    unknown = [k for k in data if k not in known]
    if unknown:
        prefix = f"{where}: " if where else ""
        raise ValueError(f"{prefix}unknown {what} {unknown[0]!r}; known: {', '.join(known)}")


def _typed(value: Any, kind: type, where: str) -> Any:
    if not isinstance(value, kind) or (kind is int and isinstance(value, bool)):
        raise ValueError(f"{where} must be a {kind.__name__}, got {value!r}")
    return value


def _route(name: str, where: str) -> str:
    """Which config a swept field belongs to."""
    if name in RESERVED_PARAMS:
        raise ValueError(f"{where}: {name!r} is set by the space itself (variants/seeds/sizes/shapes)")
    for level, hints, managed in (("train", _RUN_HINTS, _MANAGED_RUN_FIELDS),
                                  ("model", _MODEL_HINTS, _MANAGED_MODEL_FIELDS),
                                  ("residual", _RESIDUAL_HINTS, ())):
        if name in hints and name not in managed:
            return level
    raise ValueError(f"{where}: unknown field {name!r} (not a RunConfig, ModelConfig or ResidualConfig field)")


def _hint_for(level: str, name: str) -> Any:
    return {"train": _RUN_HINTS, "model": _MODEL_HINTS, "residual": _RESIDUAL_HINTS}[level][name]


def _fields(data: Any, hints: dict[str, Any], managed: tuple[str, ...], where: str) -> dict[str, Any]:
    if not isinstance(data, dict):
        raise ValueError(f"{where} must be a mapping of fields, got {data!r}")
    known = tuple(n for n in hints if n not in managed)
    _no_unknown(data, known, "field", where)
    return {k: coerce(v, hints[k], f"{where}.{k}") for k, v in data.items()}


def coerce(value: Any, hint: Any, where: str) -> Any:
    """Check ``value`` against a dataclass field's type; numbers may be written ``200k``,
    ``2M`` or ``3e-3`` (which YAML would otherwise read as a string)."""
    args = [a for a in typing.get_args(hint) if a is not type(None)]
    optional = type(None) in typing.get_args(hint)
    base = hint if not args or typing.get_origin(hint) is typing.Literal else args[0]
    if typing.get_origin(base) is typing.Literal:
        base = str
    if value is None:
        if optional:
            return None
        raise ValueError(f"{where} must not be null")
    if base is bool:
        if not isinstance(value, bool):
            raise ValueError(f"{where} must be true or false, got {value!r}")
        return value
    if base in (int, float):
        number = _number(value, where)
        if base is int:
            if number != int(number):
                raise ValueError(f"{where} must be an integer, got {value!r}")
            return int(number)
        return float(number)
    if base is str and not isinstance(value, str):
        raise ValueError(f"{where} must be a string, got {value!r}")
    return value


def _number(value: Any, where: str) -> float:
    if isinstance(value, bool):
        raise ValueError(f"{where} must be a number, got {value!r}")
    if isinstance(value, (int, float)):
        return value
    if isinstance(value, str):
        text = value.strip().lower().replace("_", "")
        scale = _SUFFIXES.get(text[-1:], 1)
        try:
            number = float(text[:-1] if scale != 1 else text) * scale
        except ValueError:
            pass
        else:
            return int(number) if number == int(number) and scale != 1 else number
    raise ValueError(f"{where} must be a number (e.g. 200k, 2M, 3e-3), got {value!r}")


def _variants(data: Any) -> tuple[Variant, ...]:
    if not isinstance(data, list) or not data:
        raise ValueError("variants must be a non-empty list of preset names or {name, preset, ...} mappings")
    out: list[Variant] = []
    for i, item in enumerate(data):
        where = f"variants[{i}]"
        if isinstance(item, str):
            name, preset_name, overrides = item, item, {}
        elif isinstance(item, dict):
            rest = dict(item)
            preset_name = _typed(rest.pop("preset", None), str, f"{where}.preset")
            name = _typed(rest.pop("name", preset_name), str, f"{where}.name")
            overrides = _fields(rest, _RESIDUAL_HINTS, (), where)
        else:
            raise ValueError(f"{where} must be a preset name or a mapping, got {item!r}")
        if preset_name not in PRESETS:
            raise ValueError(f"{where}: unknown preset {preset_name!r}; known presets: {', '.join(PRESETS)}")
        try:
            residual = replace(PRESETS[preset_name][0], **overrides)
        except ValueError as exc:
            raise ValueError(f"{where}: {exc}") from None
        if name in (v.name for v in out):
            raise ValueError(f"{where}: variant {name!r} is listed twice")
        out.append(Variant(name, preset_name, residual))
    return tuple(out)


def _seeds(data: Any) -> tuple[int, ...]:
    if isinstance(data, int) and not isinstance(data, bool) and data >= 1:
        return tuple(range(data))
    if (isinstance(data, list) and data and len(set(data)) == len(data)
            and all(isinstance(s, int) and not isinstance(s, bool) for s in data)):
        return tuple(data)
    raise ValueError(f"seeds must be a positive count or a list of distinct integers, got {data!r}")


def _axes(data: Any) -> tuple[Axis, ...]:
    if not isinstance(data, dict):
        raise ValueError(f"axes must be a mapping of field -> values or range, got {data!r}")
    out = []
    for name, spec in data.items():
        where = f"axes.{name}"
        level = _route(name, where)
        hint = _hint_for(level, name)
        if isinstance(spec, list):
            if not spec:
                raise ValueError(f"{where} must list at least one value")
            values = tuple(coerce(v, hint, f"{where}[{i}]") for i, v in enumerate(spec))
            if len(set(map(repr, values))) != len(values):
                raise ValueError(f"{where} lists a value twice")
            out.append(Axis(name, level, values=values))
        elif isinstance(spec, dict):
            _no_unknown(spec, ("low", "high", "log", "int"), "range key", where)
            if "low" not in spec or "high" not in spec:
                raise ValueError(f"{where}: a range needs low and high")
            low, high = _number(spec["low"], f"{where}.low"), _number(spec["high"], f"{where}.high")
            log = _typed(spec.get("log", False), bool, f"{where}.log")
            integer = _typed(spec.get("int", False), bool, f"{where}.int")
            if not low < high or (log and low <= 0):
                raise ValueError(f"{where}: need low < high (and low > 0 with log), got {low}..{high}")
            out.append(Axis(name, level, low=low, high=high, log=log, integer=integer))
        else:
            raise ValueError(f"{where} must be a list of values or a {{low, high}} range, got {spec!r}")
    return tuple(out)


def _sizes(data: Any) -> dict[str, dict[str, dict[str, Any]]]:
    if not isinstance(data, dict):
        raise ValueError(f"sizes must be a mapping of label -> fields, got {data!r}")
    out: dict[str, dict[str, dict[str, Any]]] = {}
    for label, spec in data.items():
        where = f"sizes.{label}"
        if not isinstance(spec, dict) or not spec:
            raise ValueError(f"{where} must be a mapping of fields (n_layers, d_model, tokens, ...)")
        levels: dict[str, dict[str, Any]] = {"model": {}, "train": {}, "residual": {}}
        for name, value in spec.items():
            level = _route(name, where)
            levels[level][name] = coerce(value, _hint_for(level, name), f"{where}.{name}")
        out[str(label)] = levels
    return out


def _shapes(data: Any) -> Shapes:
    if not isinstance(data, dict):
        raise ValueError(f"shapes must be a mapping with ratios, params, head_dim; got {data!r}")
    _no_unknown(data, ("ratios", "params", "head_dim"), "key", "shapes")
    ratios = data.get("ratios")
    if not isinstance(ratios, list) or not ratios:
        raise ValueError("shapes.ratios must be a non-empty list of d_model/n_layers ratios")
    ratios_t = tuple(_number(r, "shapes.ratios") for r in ratios)
    if any(r <= 0 for r in ratios_t) or len(set(ratios_t)) != len(ratios_t):
        raise ValueError("shapes.ratios must be distinct positive numbers")
    params = coerce(data.get("params"), int, "shapes.params")
    head_dim = coerce(data.get("head_dim", 8), int, "shapes.head_dim")
    if params < 1 or head_dim < 2 or head_dim % 2:
        raise ValueError("shapes.params must be positive and shapes.head_dim an even number >= 2")
    shapes = Shapes(ratios_t, params, head_dim)
    seen: dict[tuple[int, int], float] = {}
    for ratio in ratios_t:
        fields_ = shapes.model_fields(ratio)
        shape = (fields_["n_layers"], fields_["d_model"])
        if shape in seen:
            raise ValueError(f"shapes.ratios {seen[shape]:g} and {ratio:g} give the same model (L_b={shape[0]}, "
                             f"d_model={shape[1]}) at {params} parameters; spread the ratios or raise params")
        seen[shape] = ratio
    return shapes


def _budget(data: Any) -> float:
    if not isinstance(data, dict):
        raise ValueError(f"budget must be a mapping like {{flops: 2.0e13}}, got {data!r}")
    _no_unknown(data, ("flops",), "key", "budget")
    flops = _number(data.get("flops"), "budget.flops")
    if flops <= 0:
        raise ValueError("budget.flops must be positive")
    return float(flops)


def _pruner(data: Any) -> dict[str, Any] | None:
    """``None`` for no pruning, else ``{"type": ..., **constructor kwargs}`` checked against
    the Optuna pruner's signature so a misspelt argument fails now."""
    spec = {"type": data} if isinstance(data, str) else data
    if not isinstance(spec, dict) or not isinstance(spec.get("type"), str):
        raise ValueError(f"pruner must be one of {', '.join(PRUNERS)} or a mapping with a type; got {data!r}")
    if spec["type"] not in PRUNERS:
        raise ValueError(f"pruner type must be one of {', '.join(PRUNERS)}; got {spec['type']!r}")
    if spec["type"] == "none":
        return None
    allowed = tuple(p for p in inspect.signature(_pruner_class(spec["type"])).parameters if p != "self")
    _no_unknown({k: v for k, v in spec.items() if k != "type"}, allowed, "argument", "pruner")
    return dict(spec)


def _pruner_class(kind: str) -> type:
    import optuna

    return {"median": optuna.pruners.MedianPruner, "hyperband": optuna.pruners.HyperbandPruner}[kind]


def make_pruner(space: Space) -> Any:
    """The Optuna pruner of a space (NopPruner when it does not prune)."""
    import optuna

    if space.pruner is None:
        return optuna.pruners.NopPruner()
    kwargs = {k: v for k, v in space.pruner.items() if k != "type"}
    return _pruner_class(space.pruner["type"])(**kwargs)


def _queued_grid_sampler(optuna: Any) -> type:
    """GridSampler whose ``after_trial`` leaves stopping to the worker loop. Optuna's reads
    the trial's ``grid_id`` once one grid point looks unvisited, but enqueued trials carry
    none (they never mark a grid point visited either), so a one-cell grid raised KeyError
    after its only trial; ``run_worker`` already stops when every cell is done."""

    class QueuedGridSampler(optuna.samplers.GridSampler):
        def after_trial(self, study: Any, trial: Any, state: Any, values: Any) -> None:
            return None

    return QueuedGridSampler


def make_sampler(space: Space) -> Any:
    """GridSampler for grid spaces. Their trials are all enqueued with fixed parameters, so
    it decides nothing for them; it only fills a fresh trial that a worker creates when
    another emptied the queue under it, and the objective skips that one if it duplicates
    a cell. (BruteForceSampler is no good here: it rebuilds its tree from every trial and
    raises on a failed trial that never got parameters, e.g. one killed right after its claim.)"""
    import optuna

    if space.is_grid:
        return _queued_grid_sampler(optuna)(space.choices(), seed=0)
    if space.sampler == "random":
        return optuna.samplers.RandomSampler()
    return optuna.samplers.TPESampler()
