"""Triton kernels for the two phases of :mod:`.two_phase`, forward and backward, wrapped as
``autograd.Function`` s (the forwards are the inference kernels; no second copy).

Forward. Phase 1 gives each program one token, one head and a group of ``QG`` queries: it
streams the completed blocks once, computing each block's inverse RMS once and its logit
under all ``QG`` queries, and keeps ``QG`` online-softmax states in registers. ``QG`` is capped
so that the ``QG x width`` accumulator fits in registers; a block with more queries than that
reads the blocks once per group (one read for ``S <= QG``, the usual case up to width 1024).
Phase 2 is a single streaming pass: read the mixture and the partial sum, write the input.

Backward. Per token and head, with ``r_j`` the inverse RMS of block ``j``, ``u_s = w_s * g_s``,
``z_sj = r_j u_s . V_j``, ``alpha_sj = exp(z_sj - lse_s)`` (sigmoid: ``sigmoid(z_sj)``) and
upstream gradients ``dO_s`` (of ``o_s``) and ``dlse_s``::

    dz_sj = alpha_sj (dO_s . V_j - dO_s . o_s + dlse_s)        (sigmoid: (dO_s . V_j) a (1 - a))
    dV_j  = sum_s alpha_sj dO_s + r_j sum_s dz_sj u_s - r_j^2 V_j / dh sum_s dz_sj z_sj
    du_s  = sum_{t,j} dz_sj r_j V_j ;  dw_s = g_s du_s ;  dg_s = w_s du_s

The phase-1 backward holds all ``S`` queries of the block in one program (so ``dV_j`` is
summed over them in registers and each block is read once), loops over tokens in a persistent
grid and reduces the per-program ``du`` partial sums in a fixed order: deterministic. Phase 2
(``h = a o + (1 - a) P`` with ``a = sigmoid(lse - z_P)``; sigmoid: ``h = o + sigmoid(z_P) P``)
has the one-source form of the fused backward plus the gradients of ``o`` and ``lse``.
"""

from __future__ import annotations

import math

import torch
import triton
import triton.language as tl
from torch import Tensor

from . import runtime
from .triton_base import INTERPRETED
from .triton_base import block_rows as _block_rows
from .triton_base import logit as _logit
from .triton_base import num_warps as _num_warps

ACC_ELEMS = 8192
"""Largest ``QG x BLOCK_D`` fp32 accumulator a phase-1 program keeps in registers."""


@triton.jit
def _phase1_kernel(
    blocks_ptr, u_ptr, out_ptr, lse_ptr,
    n_tokens, n_blocks, n_queries, head_width, width,
    stride_bn, stride_bt, stride_oq, stride_ot,
    inv_dh, eps,
    HAS_GAIN: tl.constexpr, SIGMOID: tl.constexpr, QG: tl.constexpr, BLOCK_D: tl.constexpr,
):  # fmt: skip
    tok = tl.program_id(0).to(tl.int64)
    group = tl.program_id(1)
    head = tl.program_id(2)
    n_heads = tl.num_programs(2)
    qs = group * QG + tl.arange(0, QG)
    q_ok = qs < n_queries
    cols = tl.arange(0, BLOCK_D)
    col_ok = cols < head_width
    ch = head * head_width + cols
    qmask = q_ok[:, None] & col_ok[None, :]
    u = tl.load(u_ptr + qs[:, None] * width + ch[None, :], mask=qmask, other=0.0)

    m = tl.full([QG], float("-inf"), tl.float32)
    l = tl.zeros([QG], tl.float32)
    acc = tl.zeros([QG, BLOCK_D], tl.float32)
    src_ptr = blocks_ptr + tok * stride_bt + ch
    for _ in range(n_blocks):
        v = tl.load(src_ptr, mask=col_ok, other=0.0).to(tl.float32)
        s = tl.sum(u * v[None, :], axis=1)  # this source's logit under every query
        if HAS_GAIN:
            s = s * tl.rsqrt(tl.sum(v * v, axis=0) * inv_dh + eps)  # one RMS for all queries
        if SIGMOID:
            acc += tl.sigmoid(s)[:, None] * v[None, :]
        else:
            m_new = tl.maximum(m, s)
            rescale = tl.exp(m - m_new)
            p = tl.exp(s - m_new)
            l = l * rescale + p
            acc = acc * rescale[:, None] + p[:, None] * v[None, :]
            m = m_new
        src_ptr += stride_bn
    if not SIGMOID:
        acc = acc / l[:, None]
        tl.store(lse_ptr + (qs.to(tl.int64) * n_tokens + tok) * n_heads + head, m + tl.log(l), mask=q_ok)
    out = out_ptr + qs.to(tl.int64)[:, None] * stride_oq + tok * stride_ot + ch[None, :]
    tl.store(out, acc, mask=qmask)


@triton.jit
def _phase2_kernel(
    mix_ptr, lse_ptr, partial_ptr, u_ptr, out_ptr,
    n_tokens, head_width,
    stride_mt, stride_pt, stride_ot,
    inv_dh, eps,
    HAS_GAIN: tl.constexpr, SIGMOID: tl.constexpr, BLOCK_T: tl.constexpr, BLOCK_D: tl.constexpr,
):  # fmt: skip
    pid = tl.program_id(0)
    head = tl.program_id(1)
    n_heads = tl.num_programs(1)
    rows = (pid * BLOCK_T + tl.arange(0, BLOCK_T)).to(tl.int64)
    cols = tl.arange(0, BLOCK_D)
    row_ok = rows < n_tokens
    col_ok = cols < head_width
    mask = row_ok[:, None] & col_ok[None, :]
    ch = head * head_width + cols
    u = tl.load(u_ptr + ch, mask=col_ok, other=0.0)
    o = tl.load(mix_ptr + rows[:, None] * stride_mt + ch[None, :], mask=mask, other=0.0)
    p = tl.load(partial_ptr + rows[:, None] * stride_pt + ch[None, :], mask=mask, other=0.0).to(tl.float32)
    s, _ = _logit(p, u, inv_dh, eps, HAS_GAIN)
    if SIGMOID:
        merged = o + tl.sigmoid(s)[:, None] * p
    else:
        lse = tl.load(lse_ptr + rows * n_heads + head, mask=row_ok, other=0.0)
        m = tl.maximum(lse, s)
        a = tl.exp(lse - m)
        b = tl.exp(s - m)
        merged = (a[:, None] * o + b[:, None] * p) / (a + b)[:, None]
    tl.store(out_ptr + rows[:, None] * stride_ot + ch[None, :], merged.to(out_ptr.dtype.element_ty), mask=mask)


@triton.jit
def _phase1_bwd_kernel(
    blocks_ptr, u_ptr, out_ptr, lse_ptr, dout_ptr, dlse_ptr, dblocks_ptr, psum_ptr,
    n_tokens, n_blocks, n_queries, head_width, width,
    stride_bn, stride_bt, stride_dbn, stride_dbt, stride_oq, stride_ot,
    inv_dh, eps,
    HAS_GAIN: tl.constexpr, SIGMOID: tl.constexpr, QG: tl.constexpr, BLOCK_D: tl.constexpr,
):  # fmt: skip
    pid = tl.program_id(0)
    n_progs = tl.num_programs(0)
    head = tl.program_id(1)
    n_heads = tl.num_programs(1)
    qs = tl.arange(0, QG)
    q_ok = qs < n_queries
    cols = tl.arange(0, BLOCK_D)
    col_ok = cols < head_width
    ch = head * head_width + cols
    qmask = q_ok[:, None] & col_ok[None, :]
    u = tl.load(u_ptr + qs[:, None] * width + ch[None, :], mask=qmask, other=0.0)
    q_tile = qs.to(tl.int64)[:, None] * stride_oq + ch[None, :]
    du = tl.zeros([QG, BLOCK_D], tl.float32)
    for tok in range(pid, n_tokens, n_progs):
        t64 = tl.full([], tok, tl.int64)
        d_o = tl.load(dout_ptr + q_tile + t64 * stride_ot, mask=qmask, other=0.0)
        if SIGMOID:
            delta = tl.zeros([QG], tl.float32)
            lse = tl.zeros([QG], tl.float32)
        else:
            o = tl.load(out_ptr + q_tile + t64 * stride_ot, mask=qmask, other=0.0)
            lse_at = (qs.to(tl.int64) * n_tokens + t64) * n_heads + head
            lse = tl.load(lse_ptr + lse_at, mask=q_ok, other=0.0)
            delta = tl.sum(d_o * o, axis=1) - tl.load(dlse_ptr + lse_at, mask=q_ok, other=0.0)
        src_ptr = blocks_ptr + t64 * stride_bt + ch
        dst_ptr = dblocks_ptr + t64 * stride_dbt + ch
        for _ in range(n_blocks):
            v = tl.load(src_ptr, mask=col_ok, other=0.0).to(tl.float32)
            z = tl.sum(u * v[None, :], axis=1)
            if HAS_GAIN:
                r = tl.rsqrt(tl.sum(v * v, axis=0) * inv_dh + eps)
                z = z * r
            g_dot_v = tl.sum(d_o * v[None, :], axis=1)
            if SIGMOID:
                a = tl.sigmoid(z)
                dz = g_dot_v * a * (1.0 - a)
            else:
                a = tl.where(q_ok, tl.exp(z - lse), 0.0)
                dz = a * (g_dot_v - delta)
            dv = tl.sum(a[:, None] * d_o, axis=0)
            if HAS_GAIN:
                dv += r * tl.sum(dz[:, None] * u, axis=0) - (r * r * inv_dh * tl.sum(dz * z, axis=0)) * v
                du += (dz * r)[:, None] * v[None, :]
            else:
                dv += tl.sum(dz[:, None] * u, axis=0)
                du += dz[:, None] * v[None, :]
            tl.store(dst_ptr, dv.to(dblocks_ptr.dtype.element_ty), mask=col_ok)
            src_ptr += stride_bn
            dst_ptr += stride_dbn
    tl.store(psum_ptr + pid.to(tl.int64) * n_queries * width + qs[:, None] * width + ch[None, :], du, mask=qmask)


@triton.jit
def _phase2_bwd_kernel(
    grad_ptr, mix_ptr, lse_ptr, partial_ptr, u_ptr, dmix_ptr, dlse_ptr, dpartial_ptr, psum_ptr,
    n_tokens, head_width, n_tiles,
    stride_gt, stride_mt, stride_pt, stride_dmt, stride_dpt,
    inv_dh, eps,
    HAS_GAIN: tl.constexpr, SIGMOID: tl.constexpr, BLOCK_T: tl.constexpr, BLOCK_D: tl.constexpr,
):  # fmt: skip
    pid = tl.program_id(0)
    n_progs = tl.num_programs(0)
    head = tl.program_id(1)
    n_heads = tl.num_programs(1)
    cols = tl.arange(0, BLOCK_D)
    col_ok = cols < head_width
    ch = head * head_width + cols
    u = tl.load(u_ptr + ch, mask=col_ok, other=0.0)
    du = tl.zeros([BLOCK_T, BLOCK_D], tl.float32)
    for tile_id in range(pid, n_tiles, n_progs):
        rows = (tile_id * BLOCK_T + tl.arange(0, BLOCK_T)).to(tl.int64)
        row_ok = rows < n_tokens
        mask = row_ok[:, None] & col_ok[None, :]
        g = tl.load(grad_ptr + rows[:, None] * stride_gt + ch[None, :], mask=mask, other=0.0).to(tl.float32)
        p = tl.load(partial_ptr + rows[:, None] * stride_pt + ch[None, :], mask=mask, other=0.0).to(tl.float32)
        z, r = _logit(p, u, inv_dh, eps, HAS_GAIN)
        if SIGMOID:
            a = tl.sigmoid(z)
            dz = tl.sum(g * p, axis=1) * a * (1.0 - a)
            d_mix = g
            dp = a[:, None] * g
        else:
            o = tl.load(mix_ptr + rows[:, None] * stride_mt + ch[None, :], mask=mask, other=0.0)
            lse_at = rows * n_heads + head
            lse = tl.load(lse_ptr + lse_at, mask=row_ok, other=0.0)
            a = tl.sigmoid(lse - z)  # weight of the phase-1 mixture
            k = tl.sum(g * (o - p), axis=1) * a * (1.0 - a)
            tl.store(dlse_ptr + lse_at, k, mask=row_ok)
            dz = -k
            d_mix = a[:, None] * g
            dp = (1.0 - a)[:, None] * g
        dzr = dz * r
        if HAS_GAIN:
            dp += dzr[:, None] * (u[None, :] - (z * r * inv_dh)[:, None] * p)
        else:
            dp += dzr[:, None] * u[None, :]
        du += dzr[:, None] * p
        tl.store(dmix_ptr + rows[:, None] * stride_dmt + ch[None, :], d_mix, mask=mask)
        tl.store(dpartial_ptr + rows[:, None] * stride_dpt + ch[None, :], dp.to(dpartial_ptr.dtype.element_ty), mask=mask)
    psum_row = (pid * n_heads + head).to(tl.int64) * head_width
    tl.store(psum_ptr + psum_row + cols, tl.sum(du, axis=0), mask=col_ok)


def _premultiplied(query: Tensor, gain: Tensor | None) -> Tensor:
    """``w * g`` in float32: the only form of query and gain the logits need."""
    u = query.float() if gain is None else query.float() * gain.float()
    return u.contiguous()


def _param_grads(du: Tensor, query: Tensor, gain: Tensor | None) -> tuple[Tensor, Tensor | None]:
    """``dL/du`` to the gradients of the query and the gain (``u = w * g``)."""
    if gain is None:
        return du.to(query.dtype), None
    return (du * gain.float()).to(query.dtype), (du * query.float()).to(gain.dtype)


def _flat_blocks(blocks: Tensor) -> Tensor:
    """``[N, T, d]`` with unit channel stride (a view for the usual layouts, including a
    leading-dim slice of a larger buffer)."""
    b = blocks.reshape(blocks.shape[0], math.prod(blocks.shape[1:-1]), blocks.shape[-1])
    return b if b.stride(-1) == 1 else b.contiguous()


def _flat_rows(x: Tensor) -> Tensor:
    x = x.reshape(-1, x.shape[-1])
    return x if x.stride(-1) == 1 else x.contiguous()


def phase1_forward(
    blocks: Tensor, queries: Tensor, gains: Tensor | None, *, score: str, heads: int, eps: float
) -> tuple[Tensor, Tensor | None]:
    """Phase-1 kernel: ``(out [S, *tok, d] fp32, lse [S, *tok, heads] fp32 | None)``."""
    n_blocks, d = blocks.shape[0], blocks.shape[-1]
    tok_shape = blocks.shape[1:-1]
    b = _flat_blocks(blocks)
    n_tokens = b.shape[1]
    n_q = queries.shape[0]
    dh = d // heads
    sigmoid = score == "sigmoid"
    out = runtime.empty((n_q, n_tokens, d), device=b.device, dtype=torch.float32)
    lse = None if sigmoid else runtime.empty((n_q, n_tokens, heads), device=b.device, dtype=torch.float32)
    if n_tokens:
        block_d = triton.next_power_of_2(dh)
        qg = min(triton.next_power_of_2(n_q), max(1, ACC_ELEMS // block_d))
        if INTERPRETED:
            qg = min(qg, 2)  # several query groups even in the small CPU tests
        grid = (n_tokens, triton.cdiv(n_q, qg), heads)
        _phase1_kernel[grid](
            b, _premultiplied(queries, gains), out, out if lse is None else lse,  # sigmoid: lse unused
            n_tokens, n_blocks, n_q, dh, d,
            b.stride(0), b.stride(1), out.stride(0), out.stride(1),
            1.0 / dh, eps,
            HAS_GAIN=gains is not None, SIGMOID=sigmoid, QG=qg, BLOCK_D=block_d,
            num_warps=_num_warps(qg, block_d, elems_per_warp=1024),
        )  # fmt: skip
    out = out.view(n_q, *tok_shape, d)
    return out, None if lse is None else lse.view(n_q, *tok_shape, heads)


def phase1_backward(
    d_out: Tensor, d_lse: Tensor | None, blocks: Tensor, queries: Tensor, gains: Tensor | None,
    out: Tensor, lse: Tensor | None, *, score: str, heads: int, eps: float,
) -> tuple[Tensor, Tensor, Tensor | None]:  # fmt: skip
    """Phase-1 backward kernel: ``(d blocks, d queries, d gains | None)``."""
    n_blocks, d = blocks.shape[0], blocks.shape[-1]
    b = _flat_blocks(blocks)
    n_tokens = b.shape[1]
    n_q = queries.shape[0]
    dh = d // heads
    sigmoid = score == "sigmoid"
    d_o = d_out.reshape(n_q, n_tokens, d).float().contiguous()
    o = out.reshape(n_q, n_tokens, d)
    grad_blocks = runtime.empty(b.shape, device=b.device, dtype=blocks.dtype)
    if sigmoid:
        lse_flat = dlse_flat = d_o  # unused
    else:
        assert lse is not None
        lse_flat = lse.reshape(-1).contiguous()
        dlse_flat = torch.zeros_like(lse_flat) if d_lse is None else d_lse.reshape(-1).float().contiguous()
    block_d = triton.next_power_of_2(dh)
    qg = triton.next_power_of_2(n_q)
    warps = _num_warps(qg, block_d, elems_per_warp=512)
    n_progs = runtime.backward_programs(b.device, max(n_tokens, 1), heads, warps)
    psum = runtime.empty((n_progs, n_q, d), device=b.device, dtype=torch.float32)
    _phase1_bwd_kernel[(n_progs, heads)](
        b, _premultiplied(queries, gains), o, lse_flat, d_o, dlse_flat, grad_blocks, psum,
        n_tokens, n_blocks, n_q, dh, d,
        b.stride(0), b.stride(1), grad_blocks.stride(0), grad_blocks.stride(1), o.stride(0), o.stride(1),
        1.0 / dh, eps,
        HAS_GAIN=gains is not None, SIGMOID=sigmoid, QG=qg, BLOCK_D=block_d, num_warps=warps,
    )  # fmt: skip
    grad_q, grad_g = _param_grads(psum.sum(0), queries, gains)  # fixed-order reduction: deterministic
    return grad_blocks.view(blocks.shape), grad_q, grad_g


def phase2_forward(
    mixture: Tensor, lse: Tensor | None, partial: Tensor, query: Tensor, gain: Tensor | None,
    *, score: str, heads: int, eps: float, out_dtype: torch.dtype | None = None,
) -> Tensor:  # fmt: skip
    """Phase-2 kernel: the layer input ``[*tok, d]`` in ``out_dtype`` (default: the partial's)."""
    d = partial.shape[-1]
    dh = d // heads
    mix = _flat_rows(mixture.float())
    p = _flat_rows(partial)
    n_tokens = p.shape[0]
    out = runtime.empty((n_tokens, d), device=p.device, dtype=out_dtype or p.dtype)
    lse_flat = mix if lse is None else lse.reshape(-1).float().contiguous()  # sigmoid: unused
    if n_tokens:
        block_d = triton.next_power_of_2(dh)
        block_t = _block_rows(block_d, n_tokens)
        _phase2_kernel[(triton.cdiv(n_tokens, block_t), heads)](
            mix, lse_flat, p, _premultiplied(query, gain), out,
            n_tokens, dh,
            mix.stride(0), p.stride(0), out.stride(0),
            1.0 / dh, eps,
            HAS_GAIN=gain is not None, SIGMOID=score == "sigmoid", BLOCK_T=block_t, BLOCK_D=block_d,
            num_warps=_num_warps(block_t, block_d, elems_per_warp=1024),
        )  # fmt: skip
    return out.view(partial.shape)


def phase2_backward(
    grad: Tensor, mixture: Tensor, lse: Tensor | None, partial: Tensor, query: Tensor, gain: Tensor | None,
    *, score: str, heads: int, eps: float,
) -> tuple[Tensor, Tensor | None, Tensor, Tensor, Tensor | None]:  # fmt: skip
    """Phase-2 backward kernel: ``(d mixture, d lse | None, d partial, d query, d gain | None)``."""
    d = partial.shape[-1]
    dh = d // heads
    g = _flat_rows(grad)
    mix = _flat_rows(mixture.float())
    p = _flat_rows(partial)
    n_tokens = p.shape[0]
    sigmoid = score == "sigmoid"
    d_mix = runtime.empty((n_tokens, d), device=p.device, dtype=torch.float32)
    d_p = runtime.empty((n_tokens, d), device=p.device, dtype=partial.dtype)
    d_lse = None if sigmoid else runtime.empty((n_tokens, heads), device=p.device, dtype=torch.float32)
    lse_flat = mix if lse is None else lse.reshape(-1).float().contiguous()
    block_d = triton.next_power_of_2(dh)
    block_t = _block_rows(block_d, n_tokens)
    n_tiles = triton.cdiv(n_tokens, block_t)
    warps = _num_warps(block_t, block_d, elems_per_warp=512)
    n_progs = runtime.backward_programs(p.device, max(n_tiles, 1), heads, warps)
    psum = runtime.empty((n_progs, heads, dh), device=p.device, dtype=torch.float32)
    _phase2_bwd_kernel[(n_progs, heads)](
        g, mix, lse_flat, p, _premultiplied(query, gain), d_mix, mix if d_lse is None else d_lse, d_p, psum,
        n_tokens, dh, n_tiles,
        g.stride(0), mix.stride(0), p.stride(0), d_mix.stride(0), d_p.stride(0),
        1.0 / dh, eps,
        HAS_GAIN=gain is not None, SIGMOID=sigmoid, BLOCK_T=block_t, BLOCK_D=block_d, num_warps=warps,
    )  # fmt: skip
    grad_q, grad_g = _param_grads(psum.sum(0).reshape(d), query, gain)
    return (
        d_mix.view(mixture.shape),
        None if d_lse is None else d_lse.view(lse.shape),  # type: ignore[union-attr]
        d_p.view(partial.shape),
        grad_q,
        grad_g,
    )


class Phase1Function(torch.autograd.Function):
    """Phase 1 with its hand-written backward (outputs: mixtures, log-sum-exp or empty)."""

    @staticmethod
    def forward(ctx, blocks, queries, gains, score, heads, eps):  # type: ignore[no-untyped-def, override]
        out, lse = phase1_forward(blocks, queries, gains, score=score, heads=heads, eps=eps)
        ctx.save_for_backward(blocks, queries, gains, out, lse)
        ctx.score, ctx.heads, ctx.eps = score, heads, eps
        if lse is None:
            lse = out.new_empty(0)
            ctx.mark_non_differentiable(lse)
        return out, lse

    @staticmethod
    def backward(ctx, d_out, d_lse):  # type: ignore[no-untyped-def, override]
        blocks, queries, gains, out, lse = ctx.saved_tensors
        grads = phase1_backward(
            d_out, d_lse if lse is not None else None, blocks, queries, gains, out, lse,
            score=ctx.score, heads=ctx.heads, eps=ctx.eps,
        )  # fmt: skip
        return (*grads, None, None, None)


class Phase2Function(torch.autograd.Function):
    """Phase 2 of one layer with its hand-written backward."""

    @staticmethod
    def forward(ctx, mixture, lse, partial, query, gain, score, heads, eps, out_dtype):  # type: ignore[no-untyped-def, override]
        ctx.save_for_backward(mixture, lse, partial, query, gain)
        ctx.score, ctx.heads, ctx.eps = score, heads, eps
        return phase2_forward(
            mixture, lse, partial, query, gain, score=score, heads=heads, eps=eps, out_dtype=out_dtype
        )

    @staticmethod
    def backward(ctx, grad):  # type: ignore[no-untyped-def, override]
        mixture, lse, partial, query, gain = ctx.saved_tensors
        d_mix, d_lse, d_p, d_q, d_g = phase2_backward(
            grad, mixture, lse, partial, query, gain, score=ctx.score, heads=ctx.heads, eps=ctx.eps
        )
        return d_mix, d_lse, d_p, d_q, d_g, None, None, None, None


def phase1(
    blocks: Tensor, queries: Tensor, gains: Tensor | None, *, score: str, heads: int, eps: float
) -> tuple[Tensor, Tensor | None]:
    """Differentiable Triton phase 1; contract of :func:`.two_phase.phase1` (its fields)."""
    out, lse = Phase1Function.apply(blocks, queries, gains, score, heads, eps)
    return out, None if score == "sigmoid" else lse


def phase2(
    mixture: Tensor, lse: Tensor | None, partial: Tensor, query: Tensor, gain: Tensor | None,
    *, score: str, heads: int, eps: float, out_dtype: torch.dtype | None = None,
) -> Tensor:  # fmt: skip
    """Differentiable Triton phase 2 for one layer; contract of :func:`.two_phase.phase2`."""
    return Phase2Function.apply(mixture, lse, partial, query, gain, score, heads, eps, out_dtype)
