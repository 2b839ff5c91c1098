"""Reading a search space from YAML: every key validated and coerced to its field's type,
before any storage is touched, so a typo fails in a second with a message naming the key
instead of hours later in a trial. Built-in spaces ship in ``attnres_search.search_spaces``
(``spaces list``); any other path to a ``.yaml`` file works too.

Schema (every key but ``variants`` is optional)::

    name: my_space          # default: the file name without .yaml
    description: one line shown by `spaces list`
    kind: ablation          # report kind: ablation | block-count | depth-width | scaling
                            # (default: depth-width with `shapes`, scaling with `sizes`, else ablation)
    model:                  # ModelConfig fields shared by every run (not `residual`)
      n_layers: 2
      d_model: 48
    train:                  # RunConfig fields shared by every run (not model/seed/out_dir/resume/run_name/experiment)
      tokens: 200k          # integers accept k / M / B suffixes
      lr: 3.0e-3
      ckpt_every: 2000      # with checkpoints, a retried trial continues from its last one
      logger: [tensorboard, csv]  # Lightning loggers: tensorboard | csv | wandb | mlflow; one run per cell x seed
    variants:               # the residual rules compared; each is a preset name (Table 4 rows)...
      - baseline
      - full
      - {name: full-s1, preset: full, score: sigmoid}   # ...or a preset plus residual-rule fields
    baseline: baseline      # variant the others are compared with (default: `baseline` if listed, else the first)
    seeds: 2                # a count (seeds 0..n-1) or a list of seeds; every cell runs once per seed
    axes:                   # extra swept fields of RunConfig / ModelConfig / the residual rule
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
    design:                 # a pre-registered sequential design (attnres_search.study.design)
      primary: [full]       # ...verdicts and Holm over these comparisons with the baseline only
      max_seeds: 8          # ...grown look by look (`study extend --until-decided`) up to this many pairs

Loading checks the structure of every run (a block size that does not divide the depth
fails here, naming the cell); :func:`attnres_search.study.space_checks.check_space_runs`
then applies the trainer's own checks to each run before a study is created.
"""

from __future__ import annotations

import math
import typing
from importlib import resources
from pathlib import Path
from typing import Any, Mapping

import yaml

from attnres_search.model.config import ModelConfig
from attnres_search.study import rules
from attnres_search.study.cells import cell_label, distinct_runs
from attnres_search.study.design import parse_design
from attnres_search.study.pruners import PRUNERS, pruner_arguments
from attnres_search.study.space import KINDS, RESERVED_PARAMS, SAMPLERS, Axis, Shapes, Space, Variant
from attnres_search.training.config import RunConfig
from attnres_search.units import parse_count

TOP_KEYS = ("name", "description", "kind", "model", "train", "variants", "baseline", "seeds", "extra_seeds", "axes",
            "sizes", "shapes", "budget", "sampler", "n_trials", "pruner", "design")
# Fields the study owns: a space may not set them.
_MANAGED_RUN_FIELDS = ("model", "seed", "out_dir", "resume", "run_name", "experiment")
_MANAGED_MODEL_FIELDS = ("residual",)

_RUN_HINTS = typing.get_type_hints(RunConfig)
_MODEL_HINTS = typing.get_type_hints(ModelConfig)
_RESIDUAL_HINTS = rules.field_hints()


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
    """Parse and validate YAML text; every error is one line starting ``search space WHERE:``."""
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
    """Validate a parsed space mapping (a file's, or the one a study stored). Errors name
    the offending key."""
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
    extra_seeds = _extra_seeds(data.get("extra_seeds", {}), seeds)
    if extra_seeds and sampler != "grid":
        raise ValueError("extra_seeds: only grid spaces run cells over seeds")
    design = None
    if "design" in data:
        if sampler != "grid" or axes or sizes or shapes is not None:
            raise ValueError("design: a sequential design needs a grid space with one cell per variant "
                             "(no axes, sizes or shapes)")
        design = parse_design(data["design"], tuple(names), baseline, len(seeds))
    space = Space(name=name, kind=kind, description=_typed(data.get("description", ""), str, "description"),
                  model=model, train=train, variants=variants, baseline=baseline, seeds=seeds,
                  extra_seeds=extra_seeds, axes=axes,
                  sizes=sizes, shapes=shapes, budget_flops=budget, sampler=sampler, n_trials=n_trials,
                  pruner=_pruner(data.get("pruner", "none")), design=design, source=dict(data, name=name))
    if design is not None:  # the first look is fixed at creation: extending adds seeds, not looks before it
        space.source["design"] = dict(data["design"], start=design.start)
    _check_structure(space)
    return space


def _check_structure(space: Space) -> None:
    """Build every run up front: a block size that does not divide the depth, or a width the
    heads do not divide, is reported now with the cell that has it."""
    if space.extra_seeds:
        labels = {cell_label(p, seed=False) for p in distinct_runs(space.base_cells())}
        unknown = sorted(set(space.extra_seeds) - labels)
        if unknown:
            raise ValueError(f"extra_seeds: no cell {unknown[0]!r}; cells: {', '.join(sorted(labels))}")
    for params in distinct_runs(space.representative_cells()):
        try:
            space.run_config(params)
        except (ValueError, TypeError) as exc:
            raise ValueError(f"cell {cell_label(params, seed=False)}: {exc}") from None


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
    raise ValueError(f"{where}: unknown field {name!r} (not a run, model or residual-rule field)")


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
    if typing.get_origin(hint) is list:  # e.g. train.logger: one name or a list of them
        items = [value] if isinstance(value, str) else value
        if not isinstance(items, list):
            raise ValueError(f"{where} must be a list (or one value), got {value!r}")
        return [coerce(item, typing.get_args(hint)[0], f"{where}[{i}]") for i, item in enumerate(items)]
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
        return number(value, where, integer=base is int)
    if base is str and not isinstance(value, str):
        raise ValueError(f"{where} must be a string, got {value!r}")
    return value


def number(value: Any, where: str, *, integer: bool = False) -> int | float:
    """A finite number from YAML: a number, ``3e-3`` (a string to YAML) or a count with a
    k/M/B suffix (:func:`attnres_search.units.parse_count`). ``.inf`` and ``.nan`` are
    refused here, naming the key, rather than overflowing somewhere in a trial."""
    if isinstance(value, str):
        text = value.strip().replace("_", "")
        try:
            value = float(text)
        except ValueError:
            try:
                value = parse_count(text, where)
            except ValueError:
                raise ValueError(f"{where} must be a number (e.g. 200k, 2M, 3e-3), got {value!r}") from None
    if isinstance(value, bool) or not isinstance(value, (int, float)):
        raise ValueError(f"{where} must be a number (e.g. 200k, 2M, 3e-3), got {value!r}")
    if not math.isfinite(value):
        raise ValueError(f"{where} must be a finite number, got {value!r}")
    if integer:
        if value != int(value):
            raise ValueError(f"{where} must be an integer, got {value!r}")
        return int(value)
    return value


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
        residual = rules.from_preset(preset_name, overrides, where)
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


def _extra_seeds(data: Any, seeds: tuple[int, ...]) -> dict[str, tuple[int, ...]]:
    """``{cell label without the seed: [seeds]}``: seeds some cells run beyond ``seeds``
    (what ``study extend --inconclusive`` adds). Labels are checked against the cells later."""
    if not isinstance(data, dict):
        raise ValueError(f"extra_seeds must map cell labels (e.g. 'variant=full') to lists of seeds, got {data!r}")
    out: dict[str, tuple[int, ...]] = {}
    for label, values in data.items():
        extra = _seeds(values) if isinstance(values, list) else None
        if not isinstance(label, str) or extra is None:
            raise ValueError(f"extra_seeds: {label!r} must map to a list of distinct integer seeds, got {values!r}")
        if set(extra) & set(seeds):
            raise ValueError(f"extra_seeds: {label!r} repeats seeds every cell already runs")
        out[label] = extra
    return out


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
            low, high = number(spec["low"], f"{where}.low"), number(spec["high"], f"{where}.high")
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
    ratios_t = tuple(number(r, "shapes.ratios") for r in ratios)
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
    flops = number(data.get("flops"), "budget.flops")
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
    _no_unknown({k: v for k, v in spec.items() if k != "type"}, pruner_arguments(spec["type"]), "argument", "pruner")
    return dict(spec)
