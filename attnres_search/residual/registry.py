"""Residual kind -> :class:`~attnres_search.residual.base.RuleSpec`.

Rule modules are found by themselves: every module of this package other than the
infrastructure (``base``, ``registry``, ``presets``, ``mixing``) is imported on first lookup and each
``RuleSpec`` instance at its top level is registered. Code outside the package (a test, a
user's plug-in) calls :func:`register_rule`.

This module imports no other module of the package at import time (rule modules are
imported by name), so ``base`` can use it without an import cycle.
"""

from __future__ import annotations

import importlib
import pkgutil
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from attnres_search.residual.base import ResidualConfig, RuleSpec

_INFRASTRUCTURE = {"base", "registry", "presets", "mixing"}
_SPECS: dict[str, "RuleSpec"] = {}
_discovered = False


def register_rule(spec: "RuleSpec", *, replace: bool = False) -> "RuleSpec":
    """Make ``spec``'s kinds known to configs, models, FLOP counts and reports."""
    for kind in spec.kinds:
        if kind in _SPECS and _SPECS[kind] is not spec and not replace:
            raise ValueError(f"residual kind {kind!r} is already registered")
        _SPECS[kind] = spec
    return spec


def unregister_rule(spec: "RuleSpec") -> None:
    for kind in spec.kinds:
        if _SPECS.get(kind) is spec:
            del _SPECS[kind]


def _discover() -> None:
    global _discovered
    if _discovered:
        return
    _discovered = True
    package = importlib.import_module(__package__)
    for info in pkgutil.iter_modules(package.__path__):
        if info.name in _INFRASTRUCTURE or info.name.startswith("_"):
            continue
        module = importlib.import_module(f"{__package__}.{info.name}")
        for value in vars(module).values():
            if getattr(type(value), "IS_RULE_SPEC", False):  # a RuleSpec instance (no import of base)
                register_rule(value)


def kinds() -> tuple[str, ...]:
    _discover()
    return tuple(_SPECS)


def get_spec(kind: str) -> "RuleSpec":
    _discover()
    try:
        return _SPECS[kind]
    except (KeyError, TypeError):
        raise ValueError(f"kind must be one of {', '.join(_SPECS)}; got {kind!r}") from None


def spec_for(cfg: "ResidualConfig") -> "RuleSpec":
    return get_spec(cfg.kind)


def field_types() -> dict[str, Any]:
    """Every residual field any rule has, with its type hint (for YAML coercion)."""
    import typing

    _discover()
    hints: dict[str, Any] = {}
    for spec in _SPECS.values():
        for name, hint in typing.get_type_hints(spec.config).items():
            if name != "KINDS":
                hints.setdefault(name, hint)
    return hints


def field_defaults() -> dict[str, Any]:
    import dataclasses

    _discover()
    defaults: dict[str, Any] = {}
    for spec in _SPECS.values():
        for f in dataclasses.fields(spec.config):
            if f.name != "kind" and f.default is not dataclasses.MISSING:
                defaults.setdefault(f.name, f.default)
    return defaults


def config_from_dict(data: dict[str, Any], *, lenient: bool = False) -> "ResidualConfig":
    """Build the config a mapping names by its ``kind`` (default ``prenorm``).

    A field of no rule at all is always an error. A field another rule has is an error
    too, unless ``lenient`` and it holds that field's default (old stored configs).
    """
    data = dict(data)
    kind = data.pop("kind", "prenorm")
    spec = get_spec(kind)
    own = set(spec.field_names())
    defaults = field_defaults()
    known = own | set(defaults)
    unknown = sorted(set(data) - known)
    if unknown:
        raise ValueError(f"unknown residual field(s) {', '.join(map(repr, unknown))}; known: {', '.join(sorted(known))}")
    for name in sorted(set(data) - own):
        if lenient and data[name] == defaults[name]:
            del data[name]
        else:
            raise ValueError(f"{name!r} is not a field of residual kind {kind!r}; its fields: {', '.join(sorted(own))}")
    return spec.config(kind, **data)
