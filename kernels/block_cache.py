"""Completed blocks in one growing buffer, and the two-phase schedule over it with
hand-written backwards: the PyTorch eager path of Block and Full AttnRes training.

Why a buffer: stacking ``[b_0..b_{n-1}]`` again at every block boundary (at every layer for
Full AttnRes) copies O(N^2) blocks per forward. :class:`BlockCache` keeps them block-major
in one preallocated tensor ``[capacity, *tokens, d]``; :meth:`BlockCache.append` writes a
completed block into the next slot once (nothing already there moves) and computes its key
RMS once, which every later layer reuses.

Why hand-written backwards: written with autograd, phase 1's contractions over the few
blocks run as batched matmuls of tiny matrices or broadcast temporaries ``[S, N, *tok, d]``,
and phase 2 is a dozen elementwise ops each saved for backward. Here phase 1 is one
matrix product for the logits of all ``S`` queries and one batched product for the
mixtures, forward and backward, and phase 2 a handful of passes over the layer's tensors.
The cache is written outside autograd; the functions take the original block tensors as
their inputs so that gradients reach them directly, and read the values from the buffer
(slots below ``n`` are never written again while the forward runs).

The equations are those of :mod:`.two_phase` (phase 1: every query of a block against the
completed blocks, keeping each mixture and its log-sum-exp; phase 2: one online-softmax
merge of the layer's partial sum; sigmoid gates: no renormalisation). Tests compare outputs
and every gradient with the one-shot :func:`.reference.depth_attention` in float64.

Used by the model on the PyTorch path (CPU, float64, or ``backend="reference"``) outside
``torch.compile``; the Triton path and compiled graphs keep :func:`.two_phase.phase1` on
stacked blocks (their autograd functions take one sources tensor).
"""

from __future__ import annotations

from typing import Any

import torch
from torch import Tensor

from .reference import DEFAULT_EPS, Score, compute_dtype, folded_query, inv_rms


class BlockCache:
    """``b_0..b_{n-1}`` of one forward pass, block-major in one buffer, with their key RMS.

    ``values[k]``: block ``k`` in the compute dtype (float32; float64 for float64 blocks)
    as ``[M, heads, d / heads]`` (``M`` tokens); ``rms_inv[k]``: ``1 / rms`` of each head of
    it (``None`` without key norm); ``blocks``: the original tensors, autograd's inputs.
    """

    def __init__(self, first: Tensor, capacity: int, *, heads: int = 1, key_norm: bool = True,
                 eps: float = DEFAULT_EPS) -> None:
        d = first.shape[-1]
        if heads < 1 or d % heads:
            raise ValueError(f"heads={heads} does not divide d={d}")
        self.shape = first.shape
        self.heads, self.head_dim, self.eps = heads, d // heads, eps
        self.dtype = compute_dtype(first.dtype)
        n_tok = first.numel() // d
        self.values = torch.empty(capacity, n_tok, heads, d // heads, dtype=self.dtype, device=first.device)
        self.rms_inv = (torch.empty(capacity, n_tok, heads, dtype=self.dtype, device=first.device)
                        if key_norm else None)
        self.blocks: list[Tensor] = []
        self.append(first)

    def __len__(self) -> int:
        return len(self.blocks)

    def append(self, block: Tensor) -> None:
        """Write a completed block into the next slot (and its key RMS), outside autograd."""
        if block.shape != self.shape:
            raise ValueError(f"block shape {tuple(block.shape)} differs from the first block's {tuple(self.shape)}")
        k = len(self.blocks)
        if k == self.values.shape[0]:
            raise ValueError(f"the cache holds {k} blocks, its capacity")
        with torch.no_grad():
            slot = self.values[k]
            slot.copy_(block.detach().reshape(slot.shape))
            if self.rms_inv is not None:
                self.rms_inv[k].copy_(inv_rms(slot, self.eps))
        self.blocks.append(block)


def _logits(values: Tensor, u: Tensor) -> Tensor:
    """``raw[S, n, M, H] = u[S, H, :] . values[n, M, H, :]``: one matmul (batched over heads),
    the wide operand on the right, which BLAS runs several times faster than its transpose."""
    n, m, h, dh = values.shape
    s = u.shape[0]
    if h == 1:
        return (u.view(s, dh) @ values.view(n * m, dh).T).view(s, n, m, 1)
    per_head = torch.matmul(u.transpose(0, 1), values.view(n * m, h, dh).permute(1, 2, 0))  # [H, S, nM]
    return per_head.permute(1, 2, 0).reshape(s, n, m, h)


def _logits_grad_values(draw: Tensor, u: Tensor) -> Tensor:
    """``sum_s draw[s, n, M, H] * u[s, H, :]`` as ``[n, M, H, dh]``: the logits' gradient on the values."""
    s, n, m, h = draw.shape
    if h == 1:
        return (draw.reshape(s, n * m).T @ u.view(s, -1)).view(n, m, 1, -1)
    per_head = torch.matmul(draw.permute(3, 1, 2, 0).reshape(h, n * m, s), u.transpose(0, 1))  # [H, nM, dh]
    return per_head.transpose(0, 1).reshape(n, m, h, -1)


def _logits_grad_query(draw: Tensor, values: Tensor) -> Tensor:
    """``du[s, H, :] = sum_{n, M} draw[s, n, M, H] * values[n, M, H, :]``."""
    n, m, h, dh = values.shape
    s = draw.shape[0]
    if h == 1:
        return (draw.reshape(s, n * m) @ values.view(n * m, dh)).view(s, 1, dh)
    du = torch.matmul(draw.permute(3, 0, 1, 2).reshape(h, s, n * m), values.view(n * m, h, dh).transpose(0, 1))
    return du.transpose(0, 1)  # [S, H, dh]


def _token_major(a: Tensor) -> Tensor:
    """``a[S, n, M, H]`` as ``[M * H, S, n]`` matrices, contiguous: CPU ``bmm`` falls back to
    one GEMM per token for some strides of a one-query ``[1, n]`` matrix (and it is small)."""
    s, n, m, h = a.shape
    return a.permute(2, 3, 0, 1).contiguous().view(m * h, s, n)


class _Phase1(torch.autograd.Function):
    """Every query of a block against cached blocks ``0..n-1``: per query, the mixture
    ``[M, H, dh]`` and its log-sum-exp ``[M, H]`` (sigmoid: the gated sum, no lse)."""

    @staticmethod
    def forward(ctx: Any, cache: BlockCache, n: int, score: str, queries: Tensor, gains: Tensor | None,
                *blocks: Tensor) -> tuple[Tensor, ...]:
        ct, h, dh = cache.dtype, cache.heads, cache.head_dim
        values = cache.values[:n]  # [n, M, H, dh], contiguous
        m = values.shape[1]
        n_q = queries.shape[0]
        u = folded_query(queries, gains, ct).view(n_q, h, dh)
        raw = _logits(values, u)  # [S, n, M, H]
        z = raw if cache.rms_inv is None else raw * cache.rms_inv[:n]
        if score == "softmax":
            lse = torch.logsumexp(z, dim=1)  # [S, M, H]
            a = torch.exp(z - lse.unsqueeze(1))
        else:
            lse, a = None, torch.sigmoid(z)
        # Mixtures: for each (token, head), [S, n] @ [n, dh], batched; the values' view is strided, not copied.
        v_b = values.permute(1, 2, 0, 3).reshape(m * h, n, dh)
        out = torch.bmm(_token_major(a), v_b).view(m, h, n_q, dh)
        # The buffer, not the cache: the cache holds the block tensors, whose graphs lead back
        # to this node, and a reference cycle through autograd nodes is never collected.
        ctx.values, ctx.rms_inv, ctx.block_shape = values, None if cache.rms_inv is None else cache.rms_inv[:n], cache.shape
        ctx.n, ctx.score = n, score
        ctx.block_dtypes = [b.dtype for b in blocks]
        ctx.save_for_backward(queries, gains, a, raw)
        outs = tuple(out[:, :, j] for j in range(n_q))
        return outs if lse is None else outs + tuple(lse.unbind(0))

    @staticmethod
    def backward(ctx: Any, *grads: Tensor | None) -> tuple[Tensor | None, ...]:
        queries, gains, a, raw = ctx.saved_tensors
        values: Tensor = ctx.values  # [n, M, H, dh]
        n, m, h, dh = values.shape
        ct = values.dtype
        n_q = queries.shape[0]
        d_out, d_lse = grads[:n_q], grads[n_q:]

        def stacked(parts: tuple[Tensor | None, ...], shape: tuple[int, ...], dim: int) -> Tensor:
            return torch.stack([torch.zeros(shape, dtype=ct, device=values.device) if g is None else g.to(ct)
                                for g in parts], dim=dim)

        dout = stacked(d_out, (m, h, dh), 2).view(m * h, n_q, dh)
        v_b = values.permute(1, 2, 0, 3).reshape(m * h, n, dh)
        if n_q == 1:  # one query (Full AttnRes, the head): per-source dot products, no GEMM
            da = torch.linalg.vecdot(values, dout.view(1, m, h, dh)).unsqueeze(0)  # [1, n, M, H]
        else:
            da = torch.bmm(dout, v_b.transpose(1, 2)).view(m, h, n_q, n).permute(2, 3, 0, 1)  # [S, n, M, H]
        if ctx.score == "softmax":
            inner = (a * da).sum(1, keepdim=True)
            if any(g is not None for g in d_lse):
                inner -= stacked(d_lse, (m, h), 0).unsqueeze(1)
            dz = a * (da - inner)
        else:
            dz = a * (1 - a) * da
        u = folded_query(queries, gains, ct).view(n_q, h, dh)
        r: Tensor | None = ctx.rms_inv
        draw = dz if r is None else dz * r
        # d values = (mixture term) + (logit term) + (key-norm term, r = (mean(v^2) + eps)^(-1/2),
        # dr/dv = -r^3 v / dh); with one query every term is a broadcast product written
        # straight into the block-major layout, otherwise the first two are matrix products.
        if n_q == 1:
            d_values = a[0].unsqueeze(-1) * dout.view(1, m, h, dh)
            d_values.addcmul_(draw[0].unsqueeze(-1), u)
        else:
            d_values = _logits_grad_values(draw, u)
            d_values += torch.bmm(_token_major(a).transpose(1, 2), dout).view(m, h, n, dh).permute(2, 0, 1, 3)
        if r is not None:
            d_r = (dz * raw).sum(0)
            d_values.addcmul_(values, (d_r * r.pow(3)).unsqueeze(-1), value=-1.0 / dh)
        du = _logits_grad_query(draw, values).reshape(n_q, h * dh)
        d_queries = du if gains is None else du * gains.to(ct)
        d_gains = None if gains is None else du * queries.to(ct)
        d_blocks = tuple(d_values[k].reshape(ctx.block_shape).to(dt) for k, dt in enumerate(ctx.block_dtypes))
        return (None, None, None, d_queries.to(queries.dtype),
                None if d_gains is None else d_gains.to(gains.dtype), *d_blocks)


def phase1_cached(cache: BlockCache, queries: Tensor, gains: Tensor | None, *,
                  score: Score = "softmax") -> tuple[list[Tensor], list[Tensor] | None]:
    """Phase 1 over every block in ``cache``: per query ``j`` the mixture ``[M, H, dh]`` and,
    for softmax, its log-sum-exp ``[M, H]``. ``queries``/``gains``: ``[S, d]``."""
    n = len(cache)
    if queries.dim() != 2 or queries.shape[1] != cache.heads * cache.head_dim:
        raise ValueError(f"queries must be [S, {cache.heads * cache.head_dim}], got {tuple(queries.shape)}")
    if (gains is None) != (cache.rms_inv is None):
        raise ValueError("gains must be given exactly when the cache keeps key norms")
    if score not in ("softmax", "sigmoid"):
        raise ValueError(f"score must be 'softmax' or 'sigmoid', got {score!r}")
    res = _Phase1.apply(cache, n, score, queries, gains, *cache.blocks)
    n_q = queries.shape[0]
    outs = list(res[:n_q])
    return outs, (list(res[n_q:]) if score == "softmax" else None)


class _Phase2(torch.autograd.Function):
    """Merge a partial sum into a phase-1 mixture (see :mod:`.two_phase`)."""

    @staticmethod
    def forward(ctx: Any, o: Tensor, lse: Tensor | None, partial: Tensor, query: Tensor, gain: Tensor | None,
                heads: int, eps: float) -> Tensor:
        ct = o.dtype
        m, h, dh = o.shape
        p = partial.reshape(m, h, dh).to(ct)
        u = folded_query(query, gain, ct).view(h, dh)
        raw = (p.view(m, dh) @ u.view(dh)).view(m, 1) if h == 1 else (p * u).sum(-1)  # [M, H]
        r = None if gain is None else inv_rms(p, eps)
        z = raw if r is None else raw * r
        if lse is not None:  # softmax: weight of the completed blocks together
            a = torch.sigmoid(lse - z)
            out = torch.lerp(p, o, a.unsqueeze(-1))
        else:  # sigmoid gate of the partial sum
            a = torch.sigmoid(z)
            out = torch.addcmul(o, p, a.unsqueeze(-1))
        ctx.softmax, ctx.partial_dtype, ctx.partial_shape = lse is not None, partial.dtype, partial.shape
        ctx.save_for_backward(o, p, query, gain, a, raw, r)
        return out

    @staticmethod
    def backward(ctx: Any, d_h: Tensor) -> tuple[Tensor | None, ...]:
        o, p, query, gain, a, raw, r = ctx.saved_tensors
        ct = o.dtype
        m, h, dh = o.shape
        d_h = d_h.to(ct)
        u = folded_query(query, gain, ct).view(h, dh)
        a_ = a.unsqueeze(-1)
        if ctx.softmax:
            d_a = torch.linalg.vecdot(d_h, o - p)  # [M, H]
            d_o = d_h * a_
            d_p = d_h - d_o
            d_lse = d_a * a * (1 - a)
            d_z = -d_lse
        else:
            d_o, d_lse = d_h, None
            d_z = torch.linalg.vecdot(d_h, p) * a * (1 - a)
            d_p = d_h * a_
        draw = d_z if r is None else d_z * r
        if r is not None:
            d_p.addcmul_(p, (d_z * raw * r.pow(3)).unsqueeze(-1), value=-1.0 / dh)
        if h == 1:
            d_p.view(m, dh).addr_(draw.view(m), u.view(dh))
            du = (p.view(m, dh).T @ draw.view(m)).view(h * dh)
        else:
            d_p.addcmul_(draw.unsqueeze(-1), u)
            du = (draw.unsqueeze(-1) * p).sum(0).view(h * dh)
        d_query = du if gain is None else du * gain.to(ct)
        d_gain = None if gain is None else du * query.to(ct)
        return (d_o, d_lse, d_p.reshape(ctx.partial_shape).to(ctx.partial_dtype), d_query.to(query.dtype),
                None if d_gain is None else d_gain.to(gain.dtype), None, None)


def phase2_cached(o: Tensor, lse: Tensor | None, partial: Tensor, query: Tensor, gain: Tensor | None, *,
                  eps: float = DEFAULT_EPS) -> Tensor:
    """Layer input ``[M, H, dh]`` from its phase-1 mixture ``o`` (and ``lse`` for softmax;
    ``None`` for sigmoid gates) and its partial sum ``[*tokens, d]``."""
    return _Phase2.apply(o, lse, partial, query, gain, o.shape[1], eps)
