"""What every residual rule is made of: its config, the module the decoder drives, and the
spec that owns everything else the tool needs to know about the rule.

A rule is one file under ``attnres_search/residual/`` defining a :class:`ResidualConfig`
subclass (only the fields that rule uses), a :class:`ResidualRule` module and a
:class:`RuleSpec` tying them to FLOPs, parameter count, the source plan, the report label
and the paper family. The registry finds the spec by itself, so adding a rule touches that
one file and one line in ``presets.py``.
"""

from __future__ import annotations

import dataclasses
from abc import ABC, abstractmethod
from dataclasses import dataclass
from typing import Any, ClassVar

import torch
from torch import Tensor, nn

from attnres_search.residual import registry


class ResidualConfig:
    """Base of every rule's frozen config dataclass; ``kind`` is always its first field.

    ``ResidualConfig("block", block_size=4)`` builds the config class registered for that
    kind, so callers and YAML spaces keep naming a rule by its kind. A field the rule does
    not have is an error naming the field, and so is a field the rule has but ignores in the
    chosen setting (see :meth:`ignored_fields`): otherwise a sweep over it would make
    trials that differ in name only.
    """

    kind: str
    KINDS: ClassVar[tuple[str, ...]] = ()

    def __new__(cls, *args: Any, **kwargs: Any) -> "ResidualConfig":
        if cls is ResidualConfig:
            kind = args[0] if args else kwargs.get("kind", "prenorm")
            spec = registry.get_spec(kind)
            unknown = sorted(set(kwargs) - {f.name for f in dataclasses.fields(spec.config)})
            if unknown:
                raise ValueError(f"{unknown[0]!r} is not a field of residual kind {kind!r}; "
                                 f"its fields: {', '.join(spec.field_names())}")
            cls = spec.config
        return object.__new__(cls)

    def __post_init__(self) -> None:
        if self.kind not in self.KINDS:
            raise ValueError(f"kind must be one of {', '.join(self.KINDS)}; got {self.kind!r}")
        self.validate()
        defaults = {f.name: f.default for f in dataclasses.fields(self)}
        for name in self.ignored_fields():
            if getattr(self, name) != defaults[name]:
                raise ValueError(f"residual field {name!r} has no effect on {self.describe_setting()}; "
                                 f"remove it (got {getattr(self, name)!r})")

    def validate(self) -> None:
        """Field checks that need no model shape; raise ``ValueError`` naming the field."""

    def ignored_fields(self) -> tuple[str, ...]:
        """Fields this setting of the rule does not read (they must keep their defaults)."""
        return ()

    def describe_setting(self) -> str:
        return f"kind {self.kind!r}"

    def to_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)  # type: ignore[call-overload]

    @classmethod
    def from_dict(cls, data: dict[str, Any], *, lenient: bool = False) -> "ResidualConfig":
        """The config a stored or written mapping describes (``kind`` picks the rule).

        ``lenient`` accepts fields of *other* rules when they hold that field's default:
        trial configs stored before each rule had its own fields carry every field.
        """
        return registry.config_from_dict(data, lenient=lenient)


def mixing_dtype(dtype: torch.dtype) -> torch.dtype:
    """What M is tracked in: fp64 for an fp64 model, else fp32."""
    return torch.float64 if dtype == torch.float64 else torch.float32


def check_choice(name: str, value: object, choices: tuple[str, ...]) -> None:
    if value not in choices:
        raise ValueError(f"{name} must be one of {', '.join(choices)}; got {value!r}")


def check_positive(name: str, value: object, optional: bool = False) -> None:
    if optional and value is None:
        return
    if not isinstance(value, int) or isinstance(value, bool) or value < 1:
        raise ValueError(f"{name} must be a positive integer{' or null' if optional else ''}, got {value!r}")


class ResidualRule(nn.Module):
    """The per-forward protocol the decoder drives, three calls per sublayer:
    ``layer_input(i, state)`` gives h_i, the model computes f_i = F_i(Norm_i(h_i)), then
    ``update(i, state, f_i)``; after the last sublayer ``final(state)`` gives what the final
    norm and head read. ``state`` comes fresh from ``begin(v0)`` each forward, so rules hold
    parameters only and stay re-entrant. Every parameter of a rule is a "residual"
    parameter that the optimiser keeps out of weight decay.

    With ``record`` set, each ``layer_input`` and ``final`` also saves its row of the
    effective depth-mixing matrix M (:meth:`save_mixing_row`; see
    :mod:`attnres_search.residual.mixing`), so every rule can be drawn as the same kind of
    picture; AttnRes rules also keep their per-token weights for the sink search.
    """

    def __init__(self, n_sublayers: int, d_model: int) -> None:
        super().__init__()
        self.n_sublayers = n_sublayers
        self.d_model = d_model
        self.record = False
        self.recorded_alpha: list[list[float] | None] = []
        self.recorded_mixing: list[Tensor] = []
        # AttnRes only: (weights [n, *tokens, H] over the rule's own sources, which v_i each holds)
        self.recorded_weights: list[tuple[Tensor, list[tuple[int, ...]]]] = []

    def save_mixing_row(self, row: Tensor) -> None:
        """Keep mixing point l's row of M, ``[*tokens, l + 1, G]`` (token dimensions may be
        left out by input-independent rules), in fp32 (fp64 for an fp64 model): a bf16 row
        would not reproduce the layer input it describes."""
        self.recorded_mixing.append(row.detach().to(mixing_dtype(row.dtype)))

    def begin(self, v0: Tensor) -> Any:
        raise NotImplementedError

    def layer_input(self, i: int, state: Any) -> Tensor:
        raise NotImplementedError

    def update(self, i: int, state: Any, f: Tensor) -> None:
        raise NotImplementedError

    def final(self, state: Any) -> Tensor:
        raise NotImplementedError


@dataclass(frozen=True)
class SourcePlan:
    """What each mixing point reads: ``sources[i]`` names the inputs of sublayer ``i``
    (``i == n_sublayers`` is the head), ``block[i]`` its 1-based AttnRes block or None.
    ``model describe``, the diagnostics' heatmap labels and FLOP counts all read this one
    plan, so they cannot disagree with each other."""

    sources: tuple[tuple[str, ...], ...]
    block: tuple[int | None, ...]


class RuleSpec(ABC):
    """Everything about one residual rule besides its forward pass.

    ``config`` is the rule's config class; ``kinds`` the values of ``kind`` it handles
    (several when variants share code, e.g. ``mhc`` and ``mhc_lite``).
    """

    config: type[ResidualConfig]
    IS_RULE_SPEC: ClassVar[bool] = True  # how the registry recognises specs without importing this module

    @property
    def kinds(self) -> tuple[str, ...]:
        return self.config.KINDS

    def field_names(self) -> list[str]:
        return [f.name for f in dataclasses.fields(self.config)]

    @abstractmethod
    def build(self, cfg: Any, n_sublayers: int, d_model: int) -> ResidualRule:
        """The rule's module for a model of ``n_sublayers`` sublayers (2 per transformer block)."""

    def check(self, cfg: Any, n_sublayers: int, d_model: int) -> None:
        """Checks that need the model's shape (a block size dividing the depth, say)."""

    @abstractmethod
    def flops_per_token(self, cfg: Any, n_sublayers: int, d_model: int) -> float:
        """Forward FLOPs per token of the rule's own work (2 per multiply-accumulate)."""

    @abstractmethod
    def num_params(self, cfg: Any, n_sublayers: int, d_model: int) -> int:
        """Parameters the rule adds, counted without building it (so huge shapes are cheap)."""

    @abstractmethod
    def source_plan(self, cfg: Any, n_sublayers: int) -> SourcePlan:
        """What every mixing point reads."""

    @abstractmethod
    def label(self, cfg: Any, n_sublayers: int | None) -> str:
        """A short human description for report rows (what a preset name hides)."""

    def family(self, cfg: Any) -> str:
        """The paper's grouping of this rule for scaling fits (Table 2 / Figure 4 columns)."""
        return cfg.kind.replace("_", "-")

    def depth_width_family(self, cfg: Any) -> str:
        """Figure 7's grouping: baseline vs AttnRes."""
        return self.family(cfg)

    def block_size(self, cfg: Any, n_sublayers: int | None) -> int | None:
        """Sublayers per AttnRes block (1 for Full AttnRes); None for rules without blocks."""
        return None
