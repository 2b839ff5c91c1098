"""ReZero (Bachlechner et al. 2020): h_{i+1} = h_i + alpha_i * f_i with one scalar gate per
sublayer, zero-initialised, so every sublayer starts switched off and the network starts as
the identity on the embedding. The pre-norm inside each sublayer is kept as it is."""

from __future__ import annotations

from dataclasses import dataclass
from typing import ClassVar

import torch
from torch import Tensor, nn

from attnres_search.residual.base import ResidualConfig, ResidualRule, RuleSpec, SourcePlan


@dataclass(frozen=True)
class ReZeroConfig(ResidualConfig):
    kind: str = "rezero"
    KINDS: ClassVar[tuple[str, ...]] = ("rezero",)


class ReZeroRule(ResidualRule):
    def __init__(self, n_sublayers: int, d_model: int) -> None:
        super().__init__(n_sublayers, d_model)
        self.alpha = nn.Parameter(torch.zeros(n_sublayers))

    def begin(self, v0: Tensor) -> list[Tensor]:
        return [v0]

    def _save_row(self, i: int, like: Tensor) -> None:
        """M row of point i: 1 on the embedding, alpha_j on f_j (input-independent)."""
        one = like.new_ones(1, dtype=self.alpha.dtype)
        self.save_mixing_row(torch.cat([one, self.alpha[:i]]).unsqueeze(-1))

    def layer_input(self, i: int, state: list[Tensor]) -> Tensor:
        if self.record:
            self._save_row(i, state[0])
        return state[0]

    def update(self, i: int, state: list[Tensor], f: Tensor) -> None:
        state[0] = state[0] + self.alpha[i].to(f.dtype) * f

    def final(self, state: list[Tensor]) -> Tensor:
        if self.record:
            self._save_row(self.n_sublayers, state[0])
        return state[0]


class ReZeroSpec(RuleSpec):
    config = ReZeroConfig

    def build(self, cfg: ReZeroConfig, n_sublayers: int, d_model: int) -> ReZeroRule:
        return ReZeroRule(n_sublayers, d_model)

    def flops_per_token(self, cfg: ReZeroConfig, n_sublayers: int, d_model: int) -> float:
        return float(n_sublayers * 2 * d_model)  # one scale-and-add per sublayer

    def num_params(self, cfg: ReZeroConfig, n_sublayers: int, d_model: int) -> int:
        return n_sublayers

    def source_plan(self, cfg: ReZeroConfig, n_sublayers: int) -> SourcePlan:
        sources = tuple(("v0" + "".join(f" + a{j}·f{j}" for j in range(1, i + 1)),) for i in range(n_sublayers + 1))
        return SourcePlan(sources, (None,) * (n_sublayers + 1))

    def label(self, cfg: ReZeroConfig, n_sublayers: int | None) -> str:
        return "rezero"


SPEC = ReZeroSpec()
