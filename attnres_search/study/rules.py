"""The residual rules as a search space sees them: preset names, the fields a variant or
an axis may set, and building a rule from a preset plus changed fields.

This is the study package's only import of the residual-rule registry
(:mod:`attnres_search.residual`). A field is checked by the rule it is given to: a field
the rule does not have, or ignores in that setting, is an error naming the field (and the
cell), never a duplicate trial that differs in name only.
"""

from __future__ import annotations

from typing import Any, Mapping

from attnres_search.residual import PRESETS, ResidualConfig, config_from_dict
from attnres_search.residual.registry import field_types

Rule = ResidualConfig
"""A residual rule's configuration, as a space's variants hold it."""


def preset_names() -> tuple[str, ...]:
    return tuple(PRESETS)


def field_hints() -> dict[str, Any]:
    """Every field a variant or an axis may set on some rule, with its type."""
    return {name: hint for name, hint in field_types().items() if name != "kind"}


def from_preset(name: str, fields: Mapping[str, Any], where: str) -> Rule:
    """The rule of preset ``name`` with ``fields`` changed; errors name ``where``."""
    if name not in PRESETS:
        raise ValueError(f"{where}: unknown preset {name!r}; known presets: {', '.join(PRESETS)}")
    try:
        return with_fields(PRESETS[name][0], fields)
    except (ValueError, TypeError) as exc:
        raise ValueError(f"{where}: {exc}") from None


def with_fields(rule: Rule, fields: Mapping[str, Any]) -> Rule:
    """``rule`` with some fields changed (a variant, an axis or a size sets them)."""
    if not fields:
        return rule
    return config_from_dict({**rule.to_dict(), **fields})
