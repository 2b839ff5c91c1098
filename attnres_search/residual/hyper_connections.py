"""Hyper-connections (Zhu et al. 2024), the unconstrained predecessor of mHC.

n residual streams X[n, ..., d]. Sublayer i reads h = sum_k pre_k X_k, and the streams
become X'_j = sum_k res_kj X_k + post_j f. Static (``dynamic: false``): pre, res, post are
learned per sublayer. Dynamic: each gets a token-dependent term s * tanh(RMSNorm(X_k) W)
on top, with W zero-initialised (and s = 0.01), so both start as the static rule.

Initialisation follows the paper's equivalence to the pre-norm residual: pre is one-hot on
stream i mod n, res the identity, post all ones, and every stream starts as v_0. Then all
streams stay equal to the baseline's h, and the head reads their mean, so the model starts
exactly as the baseline. Nothing constrains res to be doubly stochastic: that is what mHC
adds.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, ClassVar

import torch
from torch import Tensor, nn

from attnres_search.model.layers import rms_normalize
from attnres_search.residual.base import (ResidualConfig, ResidualRule, RuleSpec, SourcePlan, check_positive,
                                          mixing_dtype)

DYNAMIC_SCALE_INIT = 0.01


@dataclass(frozen=True)
class HyperConnectionsConfig(ResidualConfig):
    kind: str = "hc"
    streams: int = 4
    dynamic: bool = False
    KINDS: ClassVar[tuple[str, ...]] = ("hc",)

    def validate(self) -> None:
        check_positive("streams", self.streams)
        if not isinstance(self.dynamic, bool):
            raise ValueError(f"dynamic must be true or false, got {self.dynamic!r}")


class HyperConnectionsRule(ResidualRule):
    def __init__(self, cfg: HyperConnectionsConfig, n_sublayers: int, d_model: int) -> None:
        super().__init__(n_sublayers, d_model)
        n = cfg.streams
        self.n = n
        self.dynamic = cfg.dynamic
        pre = torch.zeros(n_sublayers, n)
        pre[torch.arange(n_sublayers), torch.arange(n_sublayers) % n] = 1.0
        self.pre = nn.Parameter(pre)
        self.res = nn.Parameter(torch.eye(n).repeat(n_sublayers, 1, 1))
        self.post = nn.Parameter(torch.ones(n_sublayers, n))
        if cfg.dynamic:
            # Columns: 1 for pre, n for the row of res, 1 for post, per stream.
            self.proj = nn.Parameter(torch.zeros(n_sublayers, d_model, n + 2))
            self.scale = nn.Parameter(torch.full((n_sublayers, 2), DYNAMIC_SCALE_INIT))  # s_alpha, s_beta

    def maps(self, i: int, streams: Tensor) -> tuple[Tensor, Tensor, Tensor]:
        """From token-major streams ``[..., n, d]``: pre ``[..., n]``, res ``[..., n, n]``
        (row k: how stream k feeds each new stream), post ``[..., n]``."""
        n, dt = self.n, streams.dtype
        pre, res, post = self.pre[i].to(dt), self.res[i].to(dt), self.post[i].to(dt)
        if self.dynamic:
            t = torch.tanh(rms_normalize(streams, 1e-6) @ self.proj[i].to(dt))  # [..., n, n + 2]
            s_alpha, s_beta = self.scale[i].to(dt)
            pre = pre + s_alpha * t[..., 0]
            res = res + s_alpha * t[..., 1 : n + 1]
            post = post + s_beta * t[..., n + 1]
        return pre, res, post

    def begin(self, v0: Tensor) -> dict[str, Any]:
        state = {"X": v0.unsqueeze(-2).expand(*v0.shape[:-1], self.n, v0.shape[-1])}
        if self.record:  # M bookkeeping: stream k = sum_j C[..., k, j] v_j; every stream starts as v_0
            state["C"] = torch.ones(*v0.shape[:-1], self.n, 1, dtype=mixing_dtype(v0.dtype), device=v0.device)
        return state

    def layer_input(self, i: int, state: dict[str, Any]) -> Tensor:
        X = state["X"]
        pre, res, post = self.maps(i, X)
        state["res"], state["post"] = res, post
        if self.record:  # h = sum_k pre_k X_k
            C = state["C"]
            self.save_mixing_row(torch.einsum("...k,...kj->...j", pre.to(C.dtype), C).unsqueeze(-1))
        return (pre.unsqueeze(-2) @ X).squeeze(-2) if pre.dim() > 1 else pre @ X

    def update(self, i: int, state: dict[str, Any], f: Tensor) -> None:
        # X'_j = sum_k res_kj X_k + post_j f
        res, post = state["res"], state["post"]
        state["X"] = torch.addcmul(res.transpose(-1, -2) @ state["X"], post.unsqueeze(-1), f.unsqueeze(-2))
        if self.record:
            C = state["C"]
            carried = res.to(C.dtype).transpose(-1, -2) @ C
            new = post.to(C.dtype).unsqueeze(-1).expand(*carried.shape[:-1], 1)
            state["C"] = torch.cat([carried, new], dim=-1)

    def final(self, state: dict[str, Any]) -> Tensor:
        if self.record:
            self.save_mixing_row(state["C"].mean(-2).unsqueeze(-1))
        return state["X"].mean(-2)


class HyperConnectionsSpec(RuleSpec):
    config = HyperConnectionsConfig

    def build(self, cfg: HyperConnectionsConfig, n_sublayers: int, d_model: int) -> HyperConnectionsRule:
        return HyperConnectionsRule(cfg, n_sublayers, d_model)

    def flops_per_token(self, cfg: HyperConnectionsConfig, n_sublayers: int, d_model: int) -> float:
        n, d = cfg.streams, d_model
        per_layer = 2 * n * d + 2 * n * n * d + 2 * n * d  # read, stream mix, write
        if cfg.dynamic:
            per_layer += 3 * n * d + 2 * n * d * (n + 2)  # stream norms and projections
        return float(n_sublayers * per_layer)

    def num_params(self, cfg: HyperConnectionsConfig, n_sublayers: int, d_model: int) -> int:
        n = cfg.streams
        per_layer = n + n * n + n
        if cfg.dynamic:
            per_layer += d_model * (n + 2) + 2
        return n_sublayers * per_layer

    def source_plan(self, cfg: HyperConnectionsConfig, n_sublayers: int) -> SourcePlan:
        streams = tuple(f"X{k}" for k in range(cfg.streams))
        return SourcePlan((streams,) * (n_sublayers + 1), (None,) * (n_sublayers + 1))

    def label(self, cfg: HyperConnectionsConfig, n_sublayers: int | None) -> str:
        return f"hc{'-dynamic' if cfg.dynamic else ''} n={cfg.streams}"

    def family(self, cfg: HyperConnectionsConfig) -> str:
        return "hc-dynamic" if cfg.dynamic else "hc"


SPEC = HyperConnectionsSpec()
