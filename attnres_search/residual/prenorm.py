"""The baseline: the standard pre-norm residual stream, h_{i+1} = h_i + f_i, h_1 = v_0."""

from __future__ import annotations

from dataclasses import dataclass
from typing import ClassVar

from torch import Tensor

from attnres_search.residual.base import ResidualConfig, ResidualRule, RuleSpec, SourcePlan


@dataclass(frozen=True)
class PreNormConfig(ResidualConfig):
    kind: str = "prenorm"
    KINDS: ClassVar[tuple[str, ...]] = ("prenorm",)


class PreNormRule(ResidualRule):
    def begin(self, v0: Tensor) -> list[Tensor]:
        return [v0]

    def layer_input(self, i: int, state: list[Tensor]) -> Tensor:
        if self.record:  # M: every earlier output with weight one
            self.save_mixing_row(state[0].new_ones(i + 1, 1))
        return state[0]

    def update(self, i: int, state: list[Tensor], f: Tensor) -> None:
        state[0] = state[0] + f

    def final(self, state: list[Tensor]) -> Tensor:
        if self.record:
            self.save_mixing_row(state[0].new_ones(self.n_sublayers + 1, 1))
        return state[0]


def running_sum_plan(n_sublayers: int, first: str = "v0") -> SourcePlan:
    """Every point reads one stream: the embedding plus all earlier outputs."""
    sources = tuple((first + "".join(f" + f{j}" for j in range(1, i + 1)),) for i in range(n_sublayers + 1))
    return SourcePlan(sources, (None,) * (n_sublayers + 1))


class PreNormSpec(RuleSpec):
    config = PreNormConfig

    def build(self, cfg: PreNormConfig, n_sublayers: int, d_model: int) -> PreNormRule:
        return PreNormRule(n_sublayers, d_model)

    def flops_per_token(self, cfg: PreNormConfig, n_sublayers: int, d_model: int) -> float:
        return float(n_sublayers * d_model)  # one add per sublayer

    def num_params(self, cfg: PreNormConfig, n_sublayers: int, d_model: int) -> int:
        return 0

    def source_plan(self, cfg: PreNormConfig, n_sublayers: int) -> SourcePlan:
        return running_sum_plan(n_sublayers)

    def label(self, cfg: PreNormConfig, n_sublayers: int | None) -> str:
        return "prenorm"

    def family(self, cfg: PreNormConfig) -> str:
        return "baseline"


SPEC = PreNormSpec()
