"""Highway residual (Srivastava, Greff and Schmidhuber 2015), per sublayer:

    h_{l+1} = (1 - g_l) h_l + g_l f_l,    g_l = sigmoid(w_l . RMSNorm(h_l) + b_l),    h_1 = v_0,

a learned, input-dependent gate between carrying the stream and taking the sublayer's
output. Unrolled, h_l = sum_i M_{i->l} v_i with M_{0->l} = prod_k (1 - g_k) and
M_{i->l} = g_i prod_{k>i} (1 - g_k): a 1-semiseparable mixing matrix whose rows sum to 1
(a convex combination of the embedding and every earlier output), where the plain
residual's rows are all ones.

**One scalar gate per token and sublayer**, not one per channel. The gate is the same
computation as an AttnRes pseudo-query: a d-vector read against the normalised state
(d + 1 parameters and ~8d FLOPs per sublayer), so Highway and AttnRes differ in how depth is
mixed, not in what the mixing costs; a per-channel gate would add a d x d matrix per
sublayer (for d = 64 and 16 sublayers, +16% non-embedding parameters and ~1/6 more matmul
FLOPs per sublayer), which would confound every equal-token comparison with the baseline.
A scalar also keeps M one number per token and (layer, source), the picture every other
rule except multihead AttnRes gives.

**Initialisation**: w_l = 0, so every token starts with the same gate (M at step 0 is
exactly known and input-independent, as AttnRes starts uniform), and the carry bias
b_l = ``carry_bias`` = -2: Srivastava et al. initialise the transform gate's bias negative
("e.g. -1, -3") so the network starts biased towards carrying its input; -2 is the middle
of that range and GluonNLP's default for the paper's layer. Then g = sigmoid(-2) = 0.119,
and at 16 sublayers the head still reads 0.881^16 = 13% of the embedding. w_l gets a
gradient from the first step (RMSNorm(h_l) is not zero). The state's RMSNorm has no gain
(w_l absorbs it); statistics and the gate run in fp32 (fp64 for an fp64 model).
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Any, ClassVar

import torch
from torch import Tensor, nn

from attnres_search.kernels.reference import compute_dtype
from attnres_search.model.layers import rms_normalize
from attnres_search.residual.base import ResidualConfig, ResidualRule, RuleSpec, SourcePlan, mixing_dtype

GATE_EPS = 1e-6


@dataclass(frozen=True)
class HighwayConfig(ResidualConfig):
    """``carry_bias``: the gate bias b_l at initialisation (negative: start by carrying)."""

    kind: str = "highway"
    carry_bias: float = -2.0
    KINDS: ClassVar[tuple[str, ...]] = ("highway",)

    def validate(self) -> None:
        value = self.carry_bias
        if isinstance(value, bool) or not isinstance(value, (int, float)) or not math.isfinite(value):
            raise ValueError(f"carry_bias must be a finite number, got {value!r}")


class HighwayRule(ResidualRule):
    def __init__(self, cfg: HighwayConfig, n_sublayers: int, d_model: int) -> None:
        super().__init__(n_sublayers, d_model)
        self.gate_weight = nn.Parameter(torch.zeros(n_sublayers, d_model))  # zero: the same gate for every token
        self.gate_bias = nn.Parameter(torch.full((n_sublayers,), float(cfg.carry_bias)))

    def gate(self, i: int, h: Tensor) -> Tensor:
        """g_i per token, ``[*tokens, 1]`` in the compute dtype. The dot product is written
        as a product and a sum, not a matmul, so CPU autocast leaves it in fp32."""
        ct = compute_dtype(h.dtype)
        x = rms_normalize(h.to(ct), GATE_EPS)
        logit = (x * self.gate_weight[i].to(ct)).sum(-1, keepdim=True) + self.gate_bias[i].to(ct)
        return torch.sigmoid(logit)

    def begin(self, v0: Tensor) -> dict[str, Any]:
        state: dict[str, Any] = {"h": v0}
        if self.record:  # M bookkeeping: h = sum_j C[..., j, 0] v_j
            state["C"] = torch.ones(*v0.shape[:-1], 1, 1, dtype=mixing_dtype(v0.dtype), device=v0.device)
        return state

    def layer_input(self, i: int, state: dict[str, Any]) -> Tensor:
        if self.record:
            self.save_mixing_row(state["C"])
        return state["h"]

    def update(self, i: int, state: dict[str, Any], f: Tensor) -> None:
        h = state["h"]
        g = self.gate(i, h).to(h.dtype)
        state["h"] = h + g * (f - h)  # (1 - g) h + g f, one fewer pass over the stream
        if self.record:
            C = state["C"]
            gc = g.to(C.dtype).unsqueeze(-1)  # [*tokens, 1, 1]
            state["C"] = torch.cat([(1 - gc) * C, gc], dim=-2)

    def final(self, state: dict[str, Any]) -> Tensor:
        if self.record:
            self.save_mixing_row(state["C"])
        return state["h"]


class HighwaySpec(RuleSpec):
    config = HighwayConfig

    def build(self, cfg: HighwayConfig, n_sublayers: int, d_model: int) -> HighwayRule:
        return HighwayRule(cfg, n_sublayers, d_model)

    def flops_per_token(self, cfg: HighwayConfig, n_sublayers: int, d_model: int) -> float:
        # Per sublayer: RMSNorm of the state (square, sum, scale: 3d), the gate's dot product
        # (d multiply-accumulates: 2d), the blend h + g (f - h) (subtract, scale, add: 3d).
        return float(n_sublayers * 8 * d_model)

    def num_params(self, cfg: HighwayConfig, n_sublayers: int, d_model: int) -> int:
        return n_sublayers * (d_model + 1)  # w_l and b_l

    def source_plan(self, cfg: HighwayConfig, n_sublayers: int) -> SourcePlan:
        sources = tuple(("h0 = v0",) if i == 0 else (f"(1-g{i})·h{i - 1} + g{i}·f{i}",) for i in range(n_sublayers + 1))
        return SourcePlan(sources, (None,) * (n_sublayers + 1))

    def label(self, cfg: HighwayConfig, n_sublayers: int | None) -> str:
        return f"highway b={cfg.carry_bias:g}"


SPEC = HighwaySpec()
