"""DenseFormer (Pagliardini et al. 2024): a learned depth-weighted average after every
sublayer, h_{i+1} = sum_j a_{i,j} y_j over the embedding y_0 and all residual outputs
y_j = h_j + f_j so far (period and dilation 1). a_i starts one-hot on the newest output,
so the model starts exactly as the baseline."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, ClassVar

import torch
from torch import Tensor, nn

from attnres_search.residual.base import ResidualConfig, ResidualRule, RuleSpec, SourcePlan, mixing_dtype


@dataclass(frozen=True)
class DenseFormerConfig(ResidualConfig):
    kind: str = "denseformer"
    KINDS: ClassVar[tuple[str, ...]] = ("denseformer",)


class DenseFormerRule(ResidualRule):
    def __init__(self, n_sublayers: int, d_model: int) -> None:
        super().__init__(n_sublayers, d_model)
        self.weights = nn.ParameterList()
        for i in range(n_sublayers):
            w = torch.zeros(i + 2)
            w[-1] = 1.0
            self.weights.append(nn.Parameter(w))

    def begin(self, v0: Tensor) -> dict[str, Any]:
        state: dict[str, Any] = {"h": v0, "ys": [v0]}
        if self.record:
            # M bookkeeping, input-independent: h and every y_j as coefficients over v_0..v_i.
            dt = mixing_dtype(v0.dtype)
            state["Ch"] = torch.ones(1, dtype=dt, device=v0.device)
            state["Cy"] = torch.ones(1, 1, dtype=dt, device=v0.device)
        return state

    def layer_input(self, i: int, state: dict[str, Any]) -> Tensor:
        if self.record:
            self.save_mixing_row(state["Ch"].unsqueeze(-1))
        return state["h"]

    def update(self, i: int, state: dict[str, Any], f: Tensor) -> None:
        ys = state["ys"]
        ys.append(state["h"] + f)
        w = self.weights[i].to(f.dtype)
        state["h"] = torch.einsum("n,n...->...", w, torch.stack(ys))
        if self.record:  # y_{i+1} = h_i + f_{i+1}; h_{i+1} = sum_j a_ij y_j
            ch, cy = state["Ch"], state["Cy"]
            y_new = torch.cat([ch, ch.new_ones(1)])
            state["Cy"] = torch.cat([nn.functional.pad(cy, (0, 1)), y_new.unsqueeze(0)])
            state["Ch"] = w.to(ch.dtype) @ state["Cy"]

    def final(self, state: dict[str, Any]) -> Tensor:
        if self.record:
            self.save_mixing_row(state["Ch"].unsqueeze(-1))
        return state["h"]


class DenseFormerSpec(RuleSpec):
    config = DenseFormerConfig

    def build(self, cfg: DenseFormerConfig, n_sublayers: int, d_model: int) -> DenseFormerRule:
        return DenseFormerRule(n_sublayers, d_model)

    def flops_per_token(self, cfg: DenseFormerConfig, n_sublayers: int, d_model: int) -> float:
        return float(2 * d_model * self.num_params(cfg, n_sublayers, d_model))  # one MAC per weight and channel

    def num_params(self, cfg: DenseFormerConfig, n_sublayers: int, d_model: int) -> int:
        return n_sublayers * (n_sublayers + 3) // 2  # sublayer i mixes i + 2 outputs

    def source_plan(self, cfg: DenseFormerConfig, n_sublayers: int) -> SourcePlan:
        sources = tuple(("y0",) + tuple(f"y{j}" for j in range(1, i + 1)) for i in range(n_sublayers + 1))
        return SourcePlan(sources, (None,) * (n_sublayers + 1))

    def label(self, cfg: DenseFormerConfig, n_sublayers: int | None) -> str:
        return "denseformer"


SPEC = DenseFormerSpec()
