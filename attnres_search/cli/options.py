"""Click parameter types and options shared by several commands."""

from __future__ import annotations

from typing import Any, Callable

import click

from attnres_search.residual import PRESETS
from attnres_search.units import parse_count


class PresetType(click.ParamType):
    """A preset name, looked up when the command runs (so presets registered by plug-ins
    count); an unknown one is a usage error (exit 2) listing the known names."""

    name = "preset"

    def convert(self, value: Any, param: click.Parameter | None, ctx: click.Context | None) -> str:
        if value in PRESETS:
            return str(value)
        self.fail(f"unknown preset {value!r}; known presets: {', '.join(PRESETS)}", param, ctx)

    def get_metavar(self, param: click.Parameter, ctx: click.Context | None = None) -> str:
        return "PRESET"

    def shell_complete(self, ctx: click.Context, param: click.Parameter, incomplete: str) -> list[Any]:
        from click.shell_completion import CompletionItem

        return [CompletionItem(name) for name in PRESETS if name.startswith(incomplete)]


class TokenCount(click.ParamType):
    """Positive integers with k/M/B suffixes (``500k``, ``2M``, ``1.5B``), parsed by
    :func:`attnres_search.units.parse_count` exactly as the YAML spaces parse them."""

    name = "tokens"

    def convert(self, value: Any, param: click.Parameter | None, ctx: click.Context | None) -> int:
        try:
            result = parse_count(value, "token count")
        except ValueError as exc:
            self.fail(str(exc), param, ctx)
        if result <= 0:
            self.fail(f"{value!r} must be positive", param, ctx)
        return result


TOKENS = TokenCount()


def preset_option(argument: bool = False) -> Callable[[Callable[..., Any]], Callable[..., Any]]:
    if argument:
        return click.argument("preset", type=PresetType())
    return click.option("--preset", type=PresetType(), default="baseline", show_default=True,
                        help="Residual rule (a row of the paper's Table 4).")
