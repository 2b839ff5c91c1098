"""Click parameter types and options shared by several commands."""

from __future__ import annotations

from typing import Any, Callable

import click

from attnres_search.model.config import PRESETS


class PresetType(click.Choice):
    """A preset name; an unknown one is a usage error (exit 2) listing the known names."""

    name = "preset"

    def __init__(self) -> None:
        super().__init__(list(PRESETS), case_sensitive=True)


class TokenCount(click.ParamType):
    """Integers with k/M/B suffixes: ``500k``, ``2M``, ``1.5B``."""

    name = "tokens"
    _suffixes = {"k": 10**3, "m": 10**6, "b": 10**9, "g": 10**9}

    def convert(self, value: Any, param: click.Parameter | None, ctx: click.Context | None) -> int:
        if isinstance(value, int):
            return value
        text = str(value).strip().lower().replace("_", "")
        scale = self._suffixes.get(text[-1:], 1)
        number = text[:-1] if scale != 1 else text
        try:
            result = int(float(number) * scale)
        except ValueError:
            self.fail(f"{value!r} is not a token count (examples: 500k, 2M, 1.5B)", param, ctx)
        if result <= 0:
            self.fail(f"{value!r} must be positive", param, ctx)
        return result


TOKENS = TokenCount()


def preset_option(argument: bool = False) -> Callable[[Callable[..., Any]], Callable[..., Any]]:
    if argument:
        return click.argument("preset", type=PresetType())
    return click.option("--preset", type=PresetType(), default="baseline", show_default=True,
                        help="Residual rule (a row of the paper's Table 4).")
