"""Triton kernels for the two phases of :mod:`attnres_search.kernels.two_phase`.

Phase 1 gives each program one token, one head and a group of ``QG`` queries: it streams the
cached blocks once, computing each block's inverse RMS once and its logit under all ``QG``
queries, and keeps ``QG`` online-softmax states in registers. ``QG`` is capped so that the
``QG x width`` accumulator fits in registers; a block with more queries than that reads the
cache once per group (one read for ``S <= QG``, the usual case for widths up to 1024).
Phase 2 is a single streaming pass: read the mixture and the partial sum, write the input.
"""

from __future__ import annotations

import math

import torch
import triton
import triton.language as tl
from torch import Tensor

from attnres_search.kernels import runtime
from attnres_search.kernels.depth_attention import INTERPRETED, _block_rows, _logit, _num_warps

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


def _premultiplied(query: Tensor, gain: Tensor | None) -> Tensor:
    """``w * g`` in float32: the only form of query and gain the logits need."""
    u = query.float() if gain is None else query.float() * gain.float()
    return u.contiguous()


def phase1_triton(
    blocks: Tensor, queries: Tensor, gains: Tensor | None, *, score: str, heads: int, eps: float
) -> tuple[Tensor, Tensor | None]:
    """Triton phase 1; same contract as :func:`attnres_search.kernels.two_phase.phase1`."""
    n_blocks, d = blocks.shape[0], blocks.shape[-1]
    tok_shape = blocks.shape[1:-1]
    b = blocks.reshape(n_blocks, math.prod(tok_shape), d)
    if b.stride(-1) != 1:
        b = b.contiguous()
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


def phase2_triton(
    mixture: Tensor,
    lse: Tensor | None,
    partial: Tensor,
    query: Tensor,
    gain: Tensor | None,
    *,
    score: str,
    heads: int,
    eps: float,
) -> Tensor:
    """Triton phase 2; same contract as :func:`attnres_search.kernels.two_phase.phase2`."""
    d = partial.shape[-1]
    dh = d // heads
    mix = mixture.reshape(-1, d).float()
    if mix.stride(-1) != 1:
        mix = mix.contiguous()
    p = partial.reshape(-1, d)
    if p.stride(-1) != 1:
        p = p.contiguous()
    n_tokens = p.shape[0]
    out = runtime.empty((n_tokens, d), device=p.device, dtype=p.dtype)
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
