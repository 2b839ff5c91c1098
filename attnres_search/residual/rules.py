"""Residual rules: how each sublayer's input h_i is formed from the embedding v_0 and the
earlier sublayers' raw outputs f_1..f_{i-1}, and what the head finally reads.

A rule is driven by the model in three calls per sublayer: ``layer_input(i, state)`` gives
h_i, the model computes f_i = F_i(Norm_i(h_i)), then ``update(i, state, f_i)``; after the
last sublayer ``final(state)`` gives what the final norm and head read. ``state`` is a
fresh per-forward object, so rules hold parameters only and stay re-entrant.

Everything that makes a variant start as the baseline or as a uniform average is zero- or
identity-initialised here, and every parameter of a rule is a "residual" parameter that the
optimiser keeps out of weight decay.
"""

from __future__ import annotations

import itertools
import math
from dataclasses import dataclass
from typing import Any

import torch
from torch import Tensor, nn

from attnres_search.model.config import ResidualConfig
from attnres_search.kernels.reference import DEFAULT_EPS, mix_sources
from attnres_search.kernels.attend import attend
from attnres_search.model.layers import rms_normalize


class ResidualRule(nn.Module):
    """Base class; subclasses implement the four calls below."""

    def __init__(self, n_layers: int, d_model: int) -> None:
        super().__init__()
        self.n_layers = n_layers
        self.d_model = d_model
        self.record = False
        self.recorded_alpha: list[list[float] | None] = []

    def begin(self, v0: Tensor) -> Any:
        raise NotImplementedError

    def layer_input(self, i: int, state: Any) -> Tensor:
        raise NotImplementedError

    def update(self, i: int, state: Any, f: Tensor) -> None:
        raise NotImplementedError

    def final(self, state: Any) -> Tensor:
        raise NotImplementedError

    def source_labels(self, i: int) -> list[str]:
        """Names of what sublayer ``i`` (0-based; ``i == n_layers`` is the head) reads."""
        raise NotImplementedError


# --------------------------------------------------------------------------- prenorm
class PreNormRule(ResidualRule):
    """h_{i+1} = h_i + f_i, h_1 = v_0: the standard residual stream."""

    def begin(self, v0: Tensor) -> list[Tensor]:
        return [v0]

    def layer_input(self, i: int, state: list[Tensor]) -> Tensor:
        return state[0]

    def update(self, i: int, state: list[Tensor], f: Tensor) -> None:
        state[0] = state[0] + f

    def final(self, state: list[Tensor]) -> Tensor:
        return state[0]

    def source_labels(self, i: int) -> list[str]:
        return ["v0 + " + " + ".join(f"f{j}" for j in range(1, i + 1))] if i else ["v0"]


# --------------------------------------------------------------------------- AttnRes
@dataclass
class _AttnResState:
    blocks: list[Tensor]  # b_0 = v_0, then one completed block sum per block
    partial: Tensor | None = None  # running sum of the current block, None right after a boundary
    stacked: Tensor | None = None  # torch.stack(blocks), rebuilt only when a block completes


class AttnResRule(ResidualRule):
    """Full (block_size 1) and Block Attention Residuals, with the Table 4 ablation knobs.

    Sublayer i (0-based) in block n = i // S attends over [b_0..b_{n-1}] when it opens its
    block and over [b_0..b_{n-1}, b_n^{i mod S}] otherwise; the head reads all completed
    blocks plus any last partial sum. Partial sums start at zero at each block boundary and
    are never seeded with the embedding.
    """

    def __init__(self, cfg: ResidualConfig, n_layers: int, d_model: int, eps: float = DEFAULT_EPS) -> None:
        super().__init__(n_layers, d_model)
        self.cfg = cfg
        self.block_size = cfg.resolve_block_size(n_layers)
        self.eps = eps
        n_points = n_layers + 1  # every sublayer plus the final aggregation
        if cfg.mixing == "input_independent":
            # One learned logit per source, zero-init: uniform mixing at step 0. A point with
            # a single source has weight 1 whatever its logit, so it gets no parameter.
            self.static_logits = nn.ParameterDict(
                {str(i): nn.Parameter(torch.zeros(n)) for i in range(n_points) if (n := len(self._source_indices(i))) > 1}
            )
        elif cfg.query == "learned":
            self.queries = nn.Parameter(torch.zeros(n_points, d_model))  # zero: uniform at init
        else:
            # w_l = W_l . RMSNorm(latest source); W_l zero-init so step 0 is uniform too.
            self.query_proj = nn.Parameter(torch.zeros(n_points, d_model, d_model))
        if cfg.key_norm == "rmsnorm" and cfg.mixing == "input_dependent":
            self.key_gains = nn.Parameter(torch.ones(n_points, d_model))

    # Which of the sources [b_0, b_1, ..., b_{n-1}, partial] point i reads, as indices into
    # that list (the partial, when present, is the last one).
    def _source_indices(self, i: int) -> list[int]:
        s = self.block_size
        n_done = 1 + i // s  # b_0 plus completed blocks
        has_partial = i % s != 0 if i < self.n_layers else self.n_layers % s != 0
        total = n_done + int(has_partial)
        idx = list(range(total))
        if self.cfg.window is not None and total - 1 > self.cfg.window:
            idx = [0] + idx[-self.cfg.window :]
        return idx

    def source_labels(self, i: int) -> list[str]:
        s = self.block_size
        n_done = 1 + i // s
        labels = []
        for j in self._source_indices(i):
            if j < n_done:
                labels.append(f"b{j}" if s > 1 or j == 0 else f"f{j}")
            else:
                labels.append(f"b{n_done}^{i % s if i < self.n_layers else self.n_layers % s}")
        return labels

    def begin(self, v0: Tensor) -> _AttnResState:
        return _AttnResState(blocks=[v0])

    def _mix(self, i: int, state: _AttnResState) -> Tensor:
        idx = self._source_indices(i)
        n_done = len(state.blocks)
        use_partial = state.partial is not None and idx[-1] == n_done
        block_idx = [j for j in idx if j < n_done]
        if len(block_idx) == n_done:
            if state.stacked is None or state.stacked.shape[0] != n_done:
                state.stacked = torch.stack(state.blocks)
            blocks = state.stacked
        else:  # sliding window: gather the selected blocks
            blocks = torch.stack([state.blocks[j] for j in block_idx])
        partial = state.partial if use_partial else None

        if self.cfg.mixing == "input_independent":
            logits = self.static_logits[str(i)] if str(i) in self.static_logits else blocks.new_zeros(1)
            weights = torch.softmax(logits.to(torch.float64 if blocks.dtype == torch.float64 else torch.float32), 0)
            out = mix_sources(blocks, weights.view((-1,) + (1,) * (blocks.dim() - 1)), partial)
            if self.record:
                self._record(weights.view(-1, 1))
            return out

        if self.cfg.query == "learned":
            query = self.queries[i]
        else:
            latest = partial if partial is not None else blocks[-1]
            query = rms_normalize(latest, self.eps) @ self.query_proj[i].to(latest.dtype).T
        gain = self.key_gains[i] if self.cfg.key_norm == "rmsnorm" else None
        result = attend(
            blocks, partial, query, gain,
            score=self.cfg.score, heads=self.cfg.heads, eps=self.eps, return_weights=self.record,
        )
        if self.record:
            out, weights = result
            self._record(weights.reshape(weights.shape[0], -1))
            return out
        return result

    def _record(self, weights: Tensor) -> None:
        self.recorded_alpha.append(weights.detach().float().mean(1).tolist())

    def layer_input(self, i: int, state: _AttnResState) -> Tensor:
        return self._mix(i, state)

    def update(self, i: int, state: _AttnResState, f: Tensor) -> None:
        state.partial = f if state.partial is None else state.partial + f
        if (i + 1) % self.block_size == 0:
            state.blocks.append(state.partial)
            state.partial = None

    def final(self, state: _AttnResState) -> Tensor:
        return self._mix(self.n_layers, state)


# --------------------------------------------------------------------------- DenseFormer
class DenseFormerRule(ResidualRule):
    """Depth-weighted average after every sublayer: h_{i+1} = sum_j a_{i,j} y_j over the
    embedding y_0 and all residual outputs y_j = h_j + f_j so far. a_i starts one-hot on the
    newest output, so the model starts exactly as the baseline."""

    def __init__(self, n_layers: int, d_model: int) -> None:
        super().__init__(n_layers, d_model)
        self.weights = nn.ParameterList()
        for i in range(n_layers):
            w = torch.zeros(i + 2)
            w[-1] = 1.0
            self.weights.append(nn.Parameter(w))

    def begin(self, v0: Tensor) -> dict[str, Any]:
        return {"h": v0, "ys": [v0]}

    def layer_input(self, i: int, state: dict[str, Any]) -> Tensor:
        return state["h"]

    def update(self, i: int, state: dict[str, Any], f: Tensor) -> None:
        ys = state["ys"]
        ys.append(state["h"] + f)
        w = self.weights[i].to(f.dtype)
        state["h"] = torch.einsum("n,n...->...", w, torch.stack(ys))

    def final(self, state: dict[str, Any]) -> Tensor:
        return state["h"]

    def source_labels(self, i: int) -> list[str]:
        return ["y0"] + [f"y{j}" for j in range(1, i + 1)]


# --------------------------------------------------------------------------- mHC
def sinkhorn(logits: Tensor, iters: int) -> Tensor:
    """Project exp(logits[..., m, m]) towards the doubly stochastic matrices (Sinkhorn-Knopp),
    in log space for stability; ends on a row normalisation so rows are exact."""
    log_m = logits.float()
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
    """Manifold-constrained hyper-connections with m residual streams X[m, ..., d]:
    X' = H_res X + H_post^T f,  h = H_pre X, with H_pre = sigmoid(.), H_post = 2 sigmoid(.)
    and H_res doubly stochastic: Sinkhorn-projected (``mhc``) or a convex combination of
    the m! permutation matrices (``mhc_lite``, exactly doubly stochastic). Each map is a
    static bias plus a dynamic projection of the normalised streams; the projections start
    at zero and the biases make H_pre = 1/m, H_post = 1, so with every stream initialised to
    v_0 the streams stay equal and the model starts as the baseline."""

    def __init__(self, cfg: ResidualConfig, n_layers: int, d_model: int) -> None:
        super().__init__(n_layers, d_model)
        m = cfg.streams
        self.m = m
        self.lite = cfg.kind == "mhc_lite"
        self.sinkhorn_iters = cfg.sinkhorn_iters
        n_res = math.factorial(m) if self.lite else m * m
        self.phi = nn.Parameter(torch.zeros(n_layers, m * d_model, 2 * m + n_res))
        bias = torch.zeros(n_layers, 2 * m + n_res)
        bias[:, :m] = math.log(1 / (m - 1))  # sigmoid(b) = 1/m
        # b_post stays 0: 2 sigmoid(0) = 1. H_res leans towards the identity, but only
        # mildly: near-identity matrices are where Sinkhorn converges slowest, and 20
        # iterations must still give columns summing to 1 within 1e-5.
        if self.lite:
            bias[:, 2 * m] = 2.0  # the identity permutation comes first
            self.register_buffer("perms", permutation_matrices(m), persistent=False)
        else:
            bias[:, 2 * m :] = torch.eye(m).flatten()
        self.bias = nn.Parameter(bias)

    def maps(self, i: int, streams: Tensor) -> tuple[Tensor, Tensor, Tensor]:
        """(H_pre [..., m], H_post [..., m], H_res [..., m, m]) for sublayer i, per token."""
        m = self.m
        x = rms_normalize(streams.movedim(0, -2).flatten(-2), 1e-6)  # [..., m*d]
        coeff = x.float() @ self.phi[i].float() + self.bias[i].float()
        pre = torch.sigmoid(coeff[..., :m])
        post = 2 * torch.sigmoid(coeff[..., m : 2 * m])
        res_logits = coeff[..., 2 * m :]
        if self.lite:
            res = torch.einsum("...p,pij->...ij", torch.softmax(res_logits, -1), self.perms)
        else:
            res = sinkhorn(res_logits.unflatten(-1, (m, m)), self.sinkhorn_iters)
        return pre, post, res

    def begin(self, v0: Tensor) -> dict[str, Any]:
        return {"X": v0.unsqueeze(0).expand(self.m, *v0.shape)}

    def layer_input(self, i: int, state: dict[str, Any]) -> Tensor:
        pre, post, res = self.maps(i, state["X"])
        state["post"], state["res"] = post, res
        dt = state["X"].dtype
        return torch.einsum("...k,k...d->...d", pre.to(dt), state["X"])

    def update(self, i: int, state: dict[str, Any], f: Tensor) -> None:
        dt = f.dtype
        mixed = torch.einsum("...kj,j...d->k...d", state["res"].to(dt), state["X"])
        state["X"] = mixed + state["post"].to(dt).movedim(-1, 0).unsqueeze(-1) * f

    def final(self, state: dict[str, Any]) -> Tensor:
        return state["X"].mean(0)

    def source_labels(self, i: int) -> list[str]:
        return [f"X{k}" for k in range(self.m)]


def build_rule(cfg: ResidualConfig, n_layers: int, d_model: int) -> ResidualRule:
    if cfg.kind == "prenorm":
        return PreNormRule(n_layers, d_model)
    if cfg.is_attnres:
        return AttnResRule(cfg, n_layers, d_model)
    if cfg.kind == "denseformer":
        return DenseFormerRule(n_layers, d_model)
    if cfg.kind in ("mhc", "mhc_lite"):
        return MHCRule(cfg, n_layers, d_model)
    raise ValueError(f"unknown residual kind {cfg.kind!r}")
