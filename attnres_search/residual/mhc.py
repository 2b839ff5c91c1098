"""Manifold-constrained hyper-connections (mHC, and mHC-lite) with m residual streams.

X[m, ..., d] are the streams; per sublayer, X' = H_res X + H_post^T f and the sublayer
reads h = H_pre X, with H_pre = sigmoid(.), H_post = 2 sigmoid(.) and H_res doubly
stochastic: Sinkhorn-projected (``mhc``) or a convex combination of the m! permutation
matrices (``mhc_lite``, exactly doubly stochastic). Each map is a static bias plus a
dynamic projection of the normalised streams; the projections start at zero and the
biases make H_pre = 1/m, H_post = 1, so with every stream initialised to v_0 the streams
stay equal and the model starts as the baseline.
"""

from __future__ import annotations

import itertools
import math
from dataclasses import dataclass
from typing import Any, ClassVar

import torch
from torch import Tensor, nn
from torch.autograd.function import once_differentiable

from attnres_search.kernels.reference import compute_dtype, inv_rms, inv_rms_no_grad, without_autocast
from attnres_search.residual.base import (ResidualConfig, ResidualRule, RuleSpec, SourcePlan, check_positive,
                                          mixing_dtype)


@dataclass(frozen=True)
class MHCConfig(ResidualConfig):
    kind: str = "mhc"
    streams: int = 4
    sinkhorn_iters: int = 20
    KINDS: ClassVar[tuple[str, ...]] = ("mhc", "mhc_lite")

    def validate(self) -> None:
        check_positive("streams", self.streams)
        check_positive("sinkhorn_iters", self.sinkhorn_iters)
        if self.streams < 2:
            raise ValueError(f"streams must be >= 2 for {self.kind}, got {self.streams}")
        if self.kind == "mhc_lite" and self.streams > 5:
            raise ValueError("streams must be <= 5 for mhc_lite (it mixes all m! permutation matrices)")

    def ignored_fields(self) -> tuple[str, ...]:
        return ("sinkhorn_iters",) if self.kind == "mhc_lite" else ()


class _SinkhornTokensLast(torch.autograd.Function):
    """Sinkhorn-Knopp on ``[m, m, tokens]`` with a hand-written backward.

    Autograd through 2 x iters tiny divisions recorded ~6 kernels and a graph node per
    half-step per layer; here the forward keeps each half-step's result and normaliser
    and the backward walks them in reverse, four fused-size kernels per half-step. For
    y = M / sum_k M_k along the normalised axis, dL/dM_j = (g_j - sum_i g_i y_i) / sum_k M_k.
    The column-max shift before ``exp`` has no gradient: column normalisation cancels it.
    """

    @staticmethod
    def forward(ctx: Any, x: Tensor, iters: int) -> Tensor:  # noqa: D102
        m = torch.exp(x - x.amax(dim=0, keepdim=True))
        saved = [m]
        for _ in range(iters):
            for dim in (0, 1):
                norm = m.sum(dim=dim, keepdim=True)
                m = m / norm
                saved += [m, norm]
        ctx.save_for_backward(*saved)
        return m

    @staticmethod
    def backward(ctx: Any, grad: Tensor) -> tuple[Tensor, None]:  # noqa: D102
        saved = ctx.saved_tensors
        m0, steps = saved[0], saved[1:]
        # The incoming gradient has the caller's token-major strides: every half-step below
        # ran on that strided layout, several times slower (bench step: mhc 2.9x -> see
        # results/bench_cpu/). One copy puts the tokens innermost again, and is ours to update
        # in place (the caller's gradient is never written).
        grad = grad.clone(memory_format=torch.contiguous_format)
        for t in range(len(steps) // 2 - 1, -1, -1):
            y, norm = steps[2 * t], steps[2 * t + 1]
            dim = t % 2
            grad = grad.sub_(torch.linalg.vecdot(grad, y, dim=dim).unsqueeze(dim)).div_(norm)
        return grad.mul_(m0), None


class _NormalizedProjection(torch.autograd.Function):
    """``bias + (x @ phi) / rms(x)``: the maps' coefficients from raw streams ``x[T, m*d]``.

    Autograd differentiated ``rms`` through a ``vecdot`` (a squared copy of ``x`` forward, two
    more products of its size backward) and the scaling as a separate op; here the backward
    is one GEMM for ``d x`` with the key-norm term added in place, one for ``d phi``. With
    ``r = (mean(x^2) + eps)^(-1/2)``, ``y = x @ phi`` and ``g = dL/dcoeff``:
    ``d x = (g r) phi^T - (r^3 / D) (g . y) x``, ``d phi = x^T (g r)``, ``d bias = sum g``.
    """

    @staticmethod
    @without_autocast
    def forward(ctx: Any, x: Tensor, phi: Tensor, bias: Tensor, eps: float) -> Tensor:  # noqa: D102
        y = x @ phi
        r = inv_rms_no_grad(x, eps)
        ctx.save_for_backward(x, phi, y, r)
        return torch.addcmul(bias, y, r.unsqueeze(-1))

    @staticmethod
    @once_differentiable  # r is a constant here: a second derivative through this would be wrong
    @without_autocast
    def backward(ctx: Any, g: Tensor) -> tuple[Tensor, Tensor, Tensor, None]:  # noqa: D102
        x, phi, y, r = ctx.saved_tensors
        gr = g * r.unsqueeze(-1)
        d_x = gr @ phi.T
        d_x.addcmul_(x, (torch.linalg.vecdot(g, y) * r.pow(3)).unsqueeze(-1), value=-1.0 / x.shape[-1])
        return d_x, x.T @ gr, g.sum(0), None


def normalized_projection(x: Tensor, phi: Tensor, bias: Tensor, eps: float = 1e-6) -> Tensor:
    """``bias + RMSNorm(x) @ phi`` (RMSNorm without gain) for ``x[T, D]``, ``phi[D, K]``.

    Eager calls take the hand-written function; while ``torch.compile`` traces, the plain
    expression (Inductor fuses it itself, and Dynamo cannot lift the function's shape-derived
    scalars into its backward graph under dynamic shapes)."""
    if torch.compiler.is_compiling():
        return torch.addcmul(bias, x @ phi, inv_rms(x, eps).unsqueeze(-1))
    return _NormalizedProjection.apply(x, phi, bias, eps)


def sinkhorn(logits: Tensor, iters: int) -> Tensor:
    """Project exp(logits[..., m, m]) towards the doubly stochastic matrices (Sinkhorn-Knopp).

    Works on exp(logits) in fp32 (float64 stays float64) with plain column and row
    divisions, each half-step one reduction and one division instead of a log-sum-exp's
    five kernels. The tokens are moved to the innermost axis first: with m = 4 as the
    inner axis every elementwise kernel ran scalar code on 4-element rows, which made
    mHC several times slower than the baseline. Shifting each column by its max keeps
    every entry in (0, 1], so nothing overflows, and the first column normalisation
    cancels the shift, so the iterates equal those of the log-space algorithm; ends on a
    row normalisation so rows are exact.
    """
    x = logits.to(compute_dtype(logits.dtype))
    batch = x.shape[:-2]
    x = x.reshape(-1, *x.shape[-2:]).permute(1, 2, 0).contiguous()  # [m_i, m_j, tokens]
    m = _SinkhornTokensLast.apply(x, iters)
    return m.permute(2, 0, 1).reshape(*batch, *m.shape[:2])


def sinkhorn_reference(logits: Tensor, iters: int) -> Tensor:
    """The textbook log-space iteration, for tests."""
    log_m = logits
    for _ in range(iters):
        log_m = log_m - torch.logsumexp(log_m, dim=-2, keepdim=True)
        log_m = log_m - torch.logsumexp(log_m, dim=-1, keepdim=True)
    return log_m.exp()


def permutation_matrices(m: int) -> Tensor:
    """All m! permutation matrices, identity first: ``[m!, m, m]``."""
    perms = list(itertools.permutations(range(m)))
    eye = torch.eye(m)
    return torch.stack([eye[list(p)] for p in perms])


class MHCRule(ResidualRule):
    def __init__(self, cfg: MHCConfig, n_sublayers: int, d_model: int) -> None:
        super().__init__(n_sublayers, d_model)
        m = cfg.streams
        self.m = m
        self.lite = cfg.kind == "mhc_lite"
        self.sinkhorn_iters = cfg.sinkhorn_iters
        n_res = math.factorial(m) if self.lite else m * m
        self.phi = nn.Parameter(torch.zeros(n_sublayers, m * d_model, 2 * m + n_res))
        bias = torch.zeros(n_sublayers, 2 * m + n_res)
        bias[:, :m] = math.log(1 / (m - 1))  # sigmoid(b) = 1/m
        # b_post stays 0: 2 sigmoid(0) = 1. H_res leans towards the identity, but only
        # mildly: near-identity matrices are where Sinkhorn converges slowest, and 20
        # iterations must still give columns summing to 1 within 1e-5.
        if self.lite:
            bias[:, 2 * m] = 2.0  # the identity permutation comes first
            # Permutation matrices are exact in any dtype; kept out of .to(dtype) casts'
            # way by being cast to the coefficients' dtype where they are used.
            self.register_buffer("perms", permutation_matrices(m), persistent=False)
        else:
            bias[:, 2 * m :] = torch.eye(m).flatten()
        self.bias = nn.Parameter(bias)

    def maps(self, i: int, streams: Tensor) -> tuple[Tensor, Tensor, Tensor]:
        """(H_pre [..., m], H_post [..., m], H_res [..., m, m]) for sublayer i, per token,
        from streams ``[..., m, d]``; in fp32 (float64 for a float64 model)."""
        m = self.m
        ct = compute_dtype(streams.dtype)
        # phi . RMSNorm(x) = (phi . x) / rms(x): project the raw streams and scale the few
        # coefficients per token, instead of writing (and differentiating) a normalised copy.
        x = streams.flatten(-2).to(ct).flatten(0, -2)  # [tokens, m*d]
        coeff = normalized_projection(x, self.phi[i].to(ct), self.bias[i].to(ct))
        coeff = coeff.view(*streams.shape[:-2], -1)
        pre = torch.sigmoid(coeff[..., :m])
        post = 2 * torch.sigmoid(coeff[..., m : 2 * m])
        res_logits = coeff[..., 2 * m :]
        if self.lite:
            res = (torch.softmax(res_logits, -1) @ self.perms.to(ct).flatten(1)).unflatten(-1, (m, m))
        else:
            res = sinkhorn(res_logits.unflatten(-1, (m, m)), self.sinkhorn_iters)
        return pre, post, res

    # Streams are kept token-major, X[..., m, d], so every map is a batched matmul over
    # tokens with no permutes: h = H_pre X, X' = H_res X + H_post^T f.
    def begin(self, v0: Tensor) -> dict[str, Any]:
        # Materialised (not an expand) and every matmul operand contiguous: CPU batched
        # matmuls with a zero or odd stride fall back to one tiny GEMM per token (bench
        # step: mhc 4.2x the baseline step with them, see results/bench_cpu/).
        state = {"X": v0.unsqueeze(-2).expand(*v0.shape[:-1], self.m, v0.shape[-1]).contiguous()}
        if self.record:  # M bookkeeping: stream k = sum_j C[..., k, j] v_j; every stream starts as v_0
            state["C"] = torch.ones(*v0.shape[:-1], self.m, 1, dtype=mixing_dtype(v0.dtype), device=v0.device)
        return state

    def layer_input(self, i: int, state: dict[str, Any]) -> Tensor:
        X = state["X"]
        pre, post, res = self.maps(i, X)
        state["post"], state["res"] = post.to(X.dtype), res.to(X.dtype).contiguous()
        pre = pre.to(X.dtype)
        if self.record:  # h = H_pre X, with the maps as the forward applies them
            C = state["C"]
            self.save_mixing_row((pre.to(C.dtype).unsqueeze(-2) @ C).squeeze(-2).unsqueeze(-1))
        return (pre.unsqueeze(-2).contiguous() @ X).squeeze(-2)

    def update(self, i: int, state: dict[str, Any], f: Tensor) -> None:
        state["X"] = torch.addcmul(state["res"] @ state["X"], state["post"].unsqueeze(-1), f.unsqueeze(-2))
        if self.record:  # X' = H_res X + H_post^T f
            C = state["C"]
            state["C"] = torch.cat([state["res"].to(C.dtype) @ C, state["post"].to(C.dtype).unsqueeze(-1)], dim=-1)

    def final(self, state: dict[str, Any]) -> Tensor:
        if self.record:
            self.save_mixing_row(state["C"].mean(-2).unsqueeze(-1))
        return state["X"].mean(-2)


class MHCSpec(RuleSpec):
    config = MHCConfig

    def build(self, cfg: MHCConfig, n_sublayers: int, d_model: int) -> MHCRule:
        return MHCRule(cfg, n_sublayers, d_model)

    def _n_res(self, cfg: MHCConfig) -> int:
        return math.factorial(cfg.streams) if cfg.kind == "mhc_lite" else cfg.streams ** 2

    def flops_per_token(self, cfg: MHCConfig, n_sublayers: int, d_model: int) -> float:
        m, d = cfg.streams, d_model
        per_layer = 2 * m * d * (2 * m + self._n_res(cfg)) + 2 * m * d + 2 * m * m * d + 2 * m * d
        return float(n_sublayers * per_layer)

    def num_params(self, cfg: MHCConfig, n_sublayers: int, d_model: int) -> int:
        width = 2 * cfg.streams + self._n_res(cfg)
        return n_sublayers * (cfg.streams * d_model * width + width)

    def source_plan(self, cfg: MHCConfig, n_sublayers: int) -> SourcePlan:
        streams = tuple(f"X{k}" for k in range(cfg.streams))
        return SourcePlan((streams,) * (n_sublayers + 1), (None,) * (n_sublayers + 1))

    def label(self, cfg: MHCConfig, n_sublayers: int | None) -> str:
        return f"{cfg.kind.replace('_', '-')} m={cfg.streams}"


SPEC = MHCSpec()
