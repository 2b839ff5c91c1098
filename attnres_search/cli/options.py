"""Click parameter types and options shared by several commands."""

from __future__ import annotations

from typing import Any, Callable

import click

from attnres_search.cli.errors import BadInput
from attnres_search.residual import PRESETS
from attnres_search.units import parse_count, parse_duration


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


class Duration(click.ParamType):
    """A duration in seconds from ``90s``, ``10m``, ``1h30m`` or ``1:30:00``
    (:func:`attnres_search.units.parse_duration`). A bad one is one ``error:`` line and
    exit 2, raised while click parses the command line, so before anything is written."""

    name = "duration"

    def convert(self, value: Any, param: click.Parameter | None, ctx: click.Context | None) -> float:
        if isinstance(value, (int, float)) and not isinstance(value, bool):
            return float(value)  # a default given in seconds
        flag = param.opts[0] if param is not None and param.opts else "duration"
        try:
            return parse_duration(value, flag)
        except ValueError as exc:
            raise BadInput(str(exc)) from None

    def get_metavar(self, param: click.Parameter, ctx: click.Context | None = None) -> str:
        return "DURATION"


DURATION = Duration()
TIME_LIMIT_HELP = ("Stop in time: claim a trial only if it should finish before the limit (judged from the "
                   "study's finished trials), checkpoint and re-queue the running one at the limit, and exit 0 "
                   "with one line saying what is left; run again to continue (e.g. 90s, 10m, 1h30m).")


def time_limit_option(func: Callable[..., Any]) -> Callable[..., Any]:
    """``--time-limit DURATION`` (seconds, or None) for the commands that run a study's trials."""
    return click.option("--time-limit", type=DURATION, default=None, help=TIME_LIMIT_HELP)(func)


def preset_option(argument: bool = False) -> Callable[[Callable[..., Any]], Callable[..., Any]]:
    if argument:
        return click.argument("preset", type=PresetType())
    return click.option("--preset", type=PresetType(), default="baseline", show_default=True,
                        help="Residual rule (a row of the paper's Table 4).")
