"""Completed blocks in one growing buffer, and the two-phase schedule over it with
hand-written backwards: the PyTorch eager path of Block and Full AttnRes training.

Why a buffer: stacking ``[b_0..b_{n-1}]`` again at every block boundary (at every layer for
Full AttnRes) copies O(N^2) blocks per forward. :class:`BlockCache` keeps them block-major
in one preallocated tensor ``[capacity, M * heads, d / heads]`` (``M`` tokens); appending
writes a completed block once and nothing already there moves. A phase 1 reads the blocks
as one strided operand of a batched matrix product (block-major ran those products about
25% faster than token-major on CPU).

Why each block's logits are computed when it is appended: pseudo-queries are parameters,
known before the forward runs, so block ``k``'s logits under every point that will read it
are one matrix product ``[M, d] x [d, P_k]`` (and its key RMS one pass), done once while the
block is still in cache. A phase 1 then gathers its ``[M, S, n]`` logits, takes the softmax
and reads the blocks once for the mixtures.

Why gradients go into buffers: written with autograd, each block would receive one
gradient tensor per phase 1 that read it, and autograd would sum them (a pass per pair).
Here each backward writes what it knows once: phase 2 and phase 1 put the gradient of every
point's mixture into a point-major ``[P, M * heads, dh]``, phase 1 its logit gradients into
``[M * heads, P, capacity]``, and block ``k``'s whole gradient (mixtures: one batched
product over the points that read it; logits; key norm; its queries' share) is formed once,
by the node that appended it. Autograd's edges order the nodes: that node's output (a
``[P]`` tensor) is an input of every phase 1 that read the block, and every phase 2 takes
its phase-1 mixture as an input, so autograd runs each writer before its reader. The
gradient each phase 1 returns for that edge marks its points, so the appending node knows
which points' rows were written in the current backward pass (a backward from only some
outputs, or a second pass through a retained graph, leaves the others from an earlier pass
or unwritten: they count as zero).

The autograd nodes keep the buffers, never the cache: the cache holds the block tensors and
the edges, whose graphs lead back to those nodes, and a reference cycle through autograd
nodes is never collected.

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
from torch.autograd.function import once_differentiable

from .reference import DEFAULT_EPS, Score, compute_dtype, folded_query, inv_rms_no_grad, without_autocast


class _Buffers:
    """One forward's buffers, shared by its nodes (``R = M * heads`` rows). Forward:
    ``values[capacity, R, dh]``, ``logits[R, P, capacity]`` (point ``p``'s logit of block
    ``k``) and, when gradients are needed, ``weights`` (same shape: the mixing weight phase 1
    gave block ``k`` at point ``p``); backward, allocated empty by the first node that writes:
    ``d_out[P, R, dh]`` (the gradient of each point's mixture) and ``d_logits`` (shaped as
    ``logits``). Every row a backward node reads was written earlier in the same pass, or is
    masked as stale (see :class:`_Append`)."""

    def __init__(self, rows: int, capacity: int, points: int, head_dim: int, dtype: torch.dtype,
                 device: torch.device, heads: int) -> None:
        self.heads = heads
        self.values = torch.empty(capacity, rows, head_dim, dtype=dtype, device=device)
        self.logits = torch.empty(rows, points, capacity, dtype=dtype, device=device)
        self.weights: Tensor | None = None
        self.d_out: Tensor | None = None
        self.d_logits: Tensor | None = None

    def out_grads(self) -> Tensor:
        if self.d_out is None:
            _, rows, dh = self.values.shape
            self.d_out = self.values.new_empty(self.logits.shape[1], rows, dh)
        return self.d_out

    def logit_grads(self) -> Tensor:
        if self.d_logits is None:
            self.d_logits = torch.empty_like(self.logits)
        return self.d_logits


def _per_head(v: Tensor, u: Tensor) -> Tensor:
    """``out[M, H, P] = v[M, H, :] . u[P, H, :]``: one matrix product (batched over heads)."""
    m, h, dh = v.shape
    if h == 1:
        return (v.view(m, dh) @ u.view(-1, dh).T).view(m, 1, -1)
    return torch.matmul(v.transpose(0, 1), u.permute(1, 2, 0)).transpose(0, 1)


class _Append(torch.autograd.Function):
    """Write block ``k`` into its slot, with its logits under points ``first..P-1``; return an
    edge ``[P]`` that every phase 1 reading the block takes as an input. The backward forms
    the block's whole gradient and its queries' share; the edge's gradient (the sum of the
    phase 1s' point masks) says which points' rows this backward pass wrote."""

    @staticmethod
    @without_autocast
    def forward(ctx: Any, buf: _Buffers, k: int, first: int, eps: float, key_norm: bool, block: Tensor,
                points: Tensor) -> Tensor:
        cap, rows, dh = buf.values.shape
        h = buf.heads
        m, n_points = rows // h, buf.logits.shape[1]
        v = block.reshape(m, h, dh).to(buf.values.dtype)
        buf.values[k].view(m, h, dh).copy_(v)
        z = _per_head(v, points[first:].view(n_points - first, h, dh))  # [M, H, P_k]
        r = inv_rms_no_grad(v, eps) if key_norm else None
        if r is not None:
            z *= r.unsqueeze(-1)
        buf.logits.view(m, h, n_points, cap)[:, :, first:, k] = z
        ctx.buf, ctx.k, ctx.first = buf, k, first
        ctx.block_shape, ctx.block_dtype = block.shape, block.dtype
        ctx.save_for_backward(points, r)
        return points.new_zeros(n_points)

    @staticmethod
    @once_differentiable
    @without_autocast
    def backward(ctx: Any, fresh: Tensor) -> tuple[Tensor | None, ...]:
        points, r = ctx.saved_tensors
        buf: _Buffers = ctx.buf
        k, first, h = ctx.k, ctx.first, buf.heads
        cap, rows, dh = buf.values.shape
        m, n_points = rows // h, buf.logits.shape[1]
        none = (None,) * 5
        if buf.d_logits is None or buf.weights is None or buf.d_out is None:
            return (*none, None, None)  # no phase 1 that read this block reached the loss
        v = buf.values[k].view(m, h, dh)
        # Mixtures: sum over the points p that read the block of weight[p] * d_out[p], one
        # product per (token, head) row over the P_k points.
        w = buf.weights[:, first:, k]  # [R, P_k]
        dz = buf.d_logits[:, first:, k]
        # ``fresh[p]`` is 1 where the phase 1 of point p ran in this backward pass (the sum of
        # the masks they returned for this edge). Where it did not (a backward from only some
        # outputs), the buffers hold nothing of this pass: those points contribute nothing.
        stale = fresh[first:] == 0
        if bool(stale.any()):
            w, dz = w.masked_fill(stale, 0), dz.masked_fill(stale, 0)
            buf.d_out[first:][stale] = 0
        # A contiguous one-row operand: CPU bmm runs one GEMM per row for some strides of it.
        mixed = torch.bmm(w.contiguous().unsqueeze(1), buf.d_out[first:].transpose(0, 1)).view(m, h, dh)
        dz = dz.view(m, h, -1)  # [M, H, P_k]
        u = points[first:].view(-1, h, dh)
        draw = dz if r is None else dz * r.unsqueeze(-1)
        # Logits: draw . u; key norm: r = (mean(v^2) + eps)^(-1/2), dr/dv = -r^3 v / dh, and
        # sum_p dz raw = sum_p dz z / r.
        if h == 1:
            dv = torch.addmm(mixed.view(m, dh), draw.view(m, -1), u.view(-1, dh)).view(m, 1, dh)
        else:
            dv = mixed.add_(torch.matmul(draw.transpose(0, 1), u.transpose(0, 1)).transpose(0, 1))
        if r is not None:
            z = buf.logits.view(m, h, n_points, cap)[:, :, first:, k]
            dv.addcmul_(v, (torch.linalg.vecdot(dz, z) * r.square()).unsqueeze(-1), value=-1.0 / dh)
        if h == 1:
            du = draw.view(m, -1).T @ v.view(m, dh)
        else:
            du = torch.matmul(draw.permute(1, 2, 0), v.transpose(0, 1)).transpose(0, 1)  # [P_k, H, dh]
        d_points = torch.zeros_like(points)
        d_points[first:] = du.reshape(-1, h * dh)
        return (*none, dv.reshape(ctx.block_shape).to(ctx.block_dtype), d_points)


class _Phase1(torch.autograd.Function):
    """Points ``first..first+S-1`` against cached blocks ``0..n-1``: per point the mixture
    ``[M, H, dh]`` and its log-sum-exp ``[M, H]`` (sigmoid: the gated sum, no lse)."""

    @staticmethod
    @without_autocast
    def forward(ctx: Any, buf: _Buffers, n: int, first: int, n_q: int, softmax: bool,
                *edges: Tensor) -> tuple[Tensor, ...]:
        _, rows, dh = buf.values.shape
        m, h = rows // buf.heads, buf.heads
        z = buf.logits[:, first : first + n_q, :n]  # [R, S, n]
        if softmax:
            lse = torch.logsumexp(z, -1)  # [R, S]
            a = torch.exp(z - lse.unsqueeze(-1))
        else:
            lse, a = None, torch.sigmoid(z)
        if buf.weights is not None:
            buf.weights[:, first : first + n_q, :n] = a
        out = torch.bmm(a, buf.values[:n].transpose(0, 1)).view(m, h, n_q, dh)
        ctx.buf, ctx.n, ctx.first, ctx.softmax = buf, n, first, softmax
        ctx.save_for_backward(a)
        ctx.set_materialize_grads(False)
        outs = tuple(out[:, :, j] for j in range(n_q))
        return outs if lse is None else outs + lse.view(m, h, n_q).unbind(2)

    @staticmethod
    @once_differentiable
    @without_autocast
    def backward(ctx: Any, *grad_outputs: Tensor | None) -> tuple[Tensor | None, ...]:
        (a,) = ctx.saved_tensors  # [R, S, n]
        buf: _Buffers = ctx.buf
        n, first = ctx.n, ctx.first
        rows, n_q, _ = a.shape
        d_out = buf.out_grads()
        # A layer that merged a partial sum wrote its mixture's gradient already (phase 2); a
        # layer that read the mixture as it is (the first of a block) left it to autograd.
        for j, g in enumerate(grad_outputs[:n_q]):
            row = d_out[first + j]
            if g is None:
                row.zero_()
            elif not (g.data_ptr() == row.data_ptr() and g.reshape(rows, -1).stride() == row.stride()):
                row.copy_(g.reshape(rows, -1))
        da = torch.bmm(d_out[first : first + n_q].transpose(0, 1), buf.values[:n].permute(1, 2, 0))  # [R, S, n]
        if ctx.softmax:
            inner = torch.linalg.vecdot(a, da).unsqueeze(-1)
            d_lse = grad_outputs[n_q:]
            if any(g is not None for g in d_lse):
                inner -= torch.stack([a.new_zeros(rows) if g is None else g.to(a.dtype).reshape(rows)
                                      for g in d_lse], dim=1).unsqueeze(-1)
            dz = a * (da - inner)
        else:
            dz = a * (1 - a) * da
        buf.logit_grads()[:, first : first + n_q, :n] = dz
        mask = a.new_zeros(buf.logits.shape[1])
        mask[first : first + n_q] = 1
        return (None,) * 5 + tuple(mask.clone() for _ in range(n))


class _Phase2(torch.autograd.Function):
    """Merge a partial sum into a phase-1 mixture (see :mod:`.two_phase`). The mixture's
    gradient is written into the point's row of the cache's buffer, and that row is what
    autograd hands to phase 1 (which then has nothing to copy). Written with in-place
    chains on the ``[M, H]`` statistics: at these sizes each extra op costs more than its
    arithmetic."""

    @staticmethod
    @without_autocast
    def forward(ctx: Any, o: Tensor, lse: Tensor | None, partial: Tensor, u: Tensor, key_norm: bool, eps: float,
                buf: _Buffers, point: int) -> Tensor:
        m, h, dh = o.shape
        p = partial.view(m, h, dh) if partial.is_contiguous() else partial.reshape(m, h, dh)
        if p.dtype != o.dtype:
            p = p.to(o.dtype)
        if h == 1:
            z = torch.mv(p.view(m, dh), u).view(m, 1)
        else:
            z = torch.linalg.vecdot(p, u.view(h, dh))  # [M, H]
        r = inv_rms_no_grad(p, eps) if key_norm else None
        if r is not None:
            z.mul_(r)
        if lse is not None:  # softmax: a = weight of the completed blocks together
            a = torch.sub(lse, z).sigmoid_()
            out = torch.lerp(p, o, a.unsqueeze(-1))
        else:  # sigmoid gate of the partial sum
            a = z.sigmoid()
            out = torch.addcmul(o, p, a.unsqueeze(-1))
        ctx.softmax, ctx.partial_dtype, ctx.partial_shape = lse is not None, partial.dtype, partial.shape
        ctx.buf, ctx.point = buf, point
        ctx.save_for_backward(o, p, u, a, z, r)
        return out

    @staticmethod
    @once_differentiable
    @without_autocast
    def backward(ctx: Any, d_h: Tensor) -> tuple[Tensor | None, ...]:
        o, p, u, a, z, r = ctx.saved_tensors
        m, h, dh = o.shape
        d_h = d_h.reshape(m, h, dh)
        if d_h.dtype != o.dtype:
            d_h = d_h.to(o.dtype)
        a_ = a.unsqueeze(-1)
        d_o = ctx.buf.out_grads()[ctx.point].view(m, h, dh)
        # g = -dL/dz (softmax: a = sigmoid(lse - z), so dL/dlse = g) or dL/dz (sigmoid gate).
        sig_grad = torch.addcmul(a, a, a, value=-1)  # a (1 - a)
        if ctx.softmax:
            torch.mul(d_h, a_, out=d_o)
            d_p = d_h - d_o
            g = torch.linalg.vecdot(d_h, o - p).mul_(sig_grad)
            d_lse, sign = g, -1.0
        else:
            d_o.copy_(d_h)
            d_p = d_h * a_
            g = torch.linalg.vecdot(d_h, p).mul_(sig_grad)
            d_lse, sign = None, 1.0
        # dL/draw = sign * g * r (raw = p . u, z = raw * r); the key norm adds
        # dL/dz * raw * dr/dp = -(sign * g) z r^2 p / dh.
        draw = g * r if r is not None else g.clone()
        if sign < 0:
            draw.neg_()
        if r is not None:
            d_p.addcmul_(p, (draw * z).mul_(r).unsqueeze(-1), value=-1.0 / dh)
        if h == 1:
            d_p.view(m, dh).addr_(draw.view(m), u)
            du = torch.mv(p.view(m, dh).T, draw.view(m))
        else:
            d_p.addcmul_(draw.unsqueeze(-1), u.view(h, dh))
            du = (draw.unsqueeze(-1) * p).sum(0).view(h * dh)
        d_p = d_p.view(ctx.partial_shape) if d_p.is_contiguous() else d_p.reshape(ctx.partial_shape)
        return (d_o, d_lse, d_p if d_p.dtype == ctx.partial_dtype else d_p.to(ctx.partial_dtype), du,
                None, None, None, None)


class BlockCache:
    """``b_0..b_{n-1}`` of one forward pass in one buffer, with their logits under every point,
    and the open block's phase-1 result.

    ``queries`` / ``gains``: ``[P, d]`` for every point that will read the cache (``gains``
    ``None``: no key norm). ``values[k]``: block ``k`` as ``[M * heads, d / heads]`` in the
    compute dtype (float32; float64 for float64 blocks); ``logits[:, p, k]``: its normalised
    logit under point ``p`` (written for the points from the block's first reader on).
    """

    def __init__(self, first: Tensor, capacity: int, queries: Tensor, gains: Tensor | None, *,
                 score: Score = "softmax", heads: int = 1, eps: float = DEFAULT_EPS) -> None:
        d = first.shape[-1]
        if heads < 1 or d % heads:
            raise ValueError(f"heads={heads} does not divide d={d}")
        if queries.dim() != 2 or queries.shape[1] != d or (gains is not None and gains.shape != queries.shape):
            raise ValueError(f"queries (and gains) must be [points, {d}], got {tuple(queries.shape)}")
        if score not in ("softmax", "sigmoid"):
            raise ValueError(f"score must be 'softmax' or 'sigmoid', got {score!r}")
        self.shape, self.eps, self.score = first.shape, eps, score
        self.key_norm = gains is not None
        ct = compute_dtype(first.dtype)
        self._buf = _Buffers(first.numel() // d * heads, capacity, queries.shape[0], d // heads, ct, first.device,
                             heads)
        self.points = folded_query(queries, gains, ct)  # w * g per point, in the compute dtype
        if torch.is_grad_enabled():  # a later block may need gradients even if the first does not
            self._buf.weights = torch.empty_like(self._buf.logits)
        self.first_reader: list[int] = []
        self._edges: list[Tensor] = []
        self._open: tuple[int, list[Tensor], list[Tensor] | None] | None = None
        self.append(first, 0)

    @property
    def values(self) -> Tensor:
        return self._buf.values

    @property
    def logits(self) -> Tensor:
        return self._buf.logits

    def __len__(self) -> int:
        return len(self._edges)

    def append(self, block: Tensor, first_reader: int = 0) -> None:
        """Write a completed block into the next slot, with its key RMS and its logits under
        points ``first_reader..P-1`` (the points that will read it)."""
        if block.shape != self.shape:
            raise ValueError(f"block shape {tuple(block.shape)} differs from the first block's {tuple(self.shape)}")
        k = len(self._edges)
        if k == self.values.shape[0]:
            raise ValueError(f"the cache holds {k} blocks, its capacity")
        if not 0 <= first_reader < self.logits.shape[1]:
            raise ValueError(f"first_reader={first_reader} is not a point (0..{self.logits.shape[1] - 1})")
        self._edges.append(_Append.apply(self._buf, k, first_reader, self.eps, self.key_norm, block, self.points))
        self.first_reader.append(first_reader)

    def open_block(self, first: int, n_queries: int) -> None:
        """Phase 1: points ``first..first + n_queries - 1`` against every cached block."""
        if n_queries < 1 or first < 0 or first + n_queries > self.logits.shape[1]:
            raise ValueError(f"points {first}..{first + n_queries - 1} are not all among the cache's "
                             f"{self.logits.shape[1]} points")
        late = [k for k, p in enumerate(self.first_reader) if p > first]
        if late:
            raise ValueError(f"block {late[0]} has no logits for point {first} (first read by point "
                             f"{self.first_reader[late[0]]})")
        res = _Phase1.apply(self._buf, len(self), first, n_queries, self.score == "softmax", *self._edges)
        self._open = (first, list(res[:n_queries]), list(res[n_queries:]) if self.score == "softmax" else None)

    def layer_input(self, point: int, partial: Tensor | None) -> Tensor:
        """Point ``point``'s input ``[*tokens, d]``: its phase-1 mixture, merged with its
        block's partial sum by phase 2 when there is one. Its block must be open."""
        if self._open is None or not 0 <= point - self._open[0] < len(self._open[1]):
            raise ValueError(f"point {point} is not in the open block (open_block first)")
        first, outs, lses = self._open
        o = outs[point - first]
        if partial is None:
            return o.reshape(self.shape)
        if partial.shape != self.shape:
            raise ValueError(f"partial sum shape {tuple(partial.shape)} differs from the blocks' {tuple(self.shape)}")
        h = _Phase2.apply(o, None if lses is None else lses[point - first], partial, self.points[point],
                          self.key_norm, self.eps, self._buf, point)
        return h.reshape(self.shape)
