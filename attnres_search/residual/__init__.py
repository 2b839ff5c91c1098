"""Residual rules: how each sublayer's input is formed from the embedding and the earlier
sublayers' outputs. One file per rule; the registry finds them; presets name them."""

from attnres_search.residual.base import ResidualConfig, ResidualRule, RuleSpec, SourcePlan
from attnres_search.residual.presets import PRESETS, preset, preset_label, register_preset
from attnres_search.residual.registry import config_from_dict, get_spec, kinds, register_rule, spec_for

__all__ = [
    "PRESETS", "ResidualConfig", "ResidualRule", "RuleSpec", "SourcePlan", "config_from_dict", "get_spec", "kinds",
    "preset", "preset_label", "register_preset", "register_rule", "spec_for",
]
