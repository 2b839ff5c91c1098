"""Fused depth-attention (Full and Block AttnRes) in Triton, forward and hand-written backward.

Per token ``t`` and head ``h`` (channel group of width ``dh = d / heads``), over the sources
``V_0..V_{n-1}`` (the stacked completed blocks, then the running partial sum when present)::

    r_j = rsqrt(mean(V_j^2) + eps)            (fp32; r_j = 1 without key norm)
    s_j = r_j * (w * g) . V_j                 (= w . RMSNorm_g(V_j), no 1/sqrt(d))
    out = sum_j softmax(s)_j V_j   or   sum_j sigmoid(s_j) V_j

The op is memory-bound, so both passes read every source exactly once. The forward keeps an
online softmax (running max, normaliser and accumulator in registers) and saves only the
log-sum-exp per token and head (besides its inputs and output, which the model keeps alive
anyway); the backward recomputes ``r_j`` and ``s_j`` from the source it is reading anyway,
which costs no memory traffic, instead of storing them. With ``u = w * g`` and ``G = dL/dout``::

    alpha_j = exp(s_j - lse)                              (softmax)
    ds_j    = alpha_j (G . V_j - G . out)                 (softmax: sum_k alpha_k G.V_k = G.out)
            = (G . V_j) alpha_j (1 - alpha_j)             (sigmoid)
    dV_j    = alpha_j G + ds_j r_j (u - s_j r_j V_j / dh)
    P       = sum_{t,j} ds_j r_j V_j ;  dw = g * P ;  dg = w * P

``G . out`` reads the saved output once per token, which is cheaper than a second pass over
the sources. ``P`` is accumulated per program by a persistent backward grid and the per-program
partial sums are added in a fixed order afterwards: no atomics, so gradients are bitwise
reproducible on a given device.

Eager calls go through a plain :class:`torch.autograd.Function` (:class:`FusedDepthAttention`),
which costs one Python call per pass. Under ``torch.compile`` the same two passes are the
``torch.library.custom_op`` s ``attnres::depth_attention_fwd/bwd`` with fake implementations
and a registered autograd formula, so Dynamo traces a model that uses them without graph
breaks; the dispatcher wrapper they add per call (tens of microseconds) is paid only while
tracing, never by the eager hot path. (``triton_op`` would let Inductor see inside, but it
cannot wrap kernels defined for the CPU interpreter, which is how the test-suite runs them;
there is nothing here for Inductor to fuse with anyway.)
"""

from __future__ import annotations

import math

import torch
import triton
import triton.language as tl
from torch import Tensor

from . import runtime
from .reference import DEFAULT_EPS, Score
from .triton_base import block_rows as _block_rows
from .triton_base import logit as _logit
from .triton_base import num_warps as _num_warps


@triton.jit
def _fwd_source(v, u, m, l, acc, inv_dh, eps, HAS_GAIN: tl.constexpr, SIGMOID: tl.constexpr):
    """Fold one source tile into the running (max, normaliser, accumulator) state."""
    s, _ = _logit(v, u, inv_dh, eps, HAS_GAIN)
    if SIGMOID:
        acc += tl.sigmoid(s)[:, None] * v
    else:
        m_new = tl.maximum(m, s)
        rescale = tl.exp(m - m_new)
        p = tl.exp(s - m_new)
        l = l * rescale + p
        acc = acc * rescale[:, None] + p[:, None] * v
        m = m_new
    return s, m, l, acc


@triton.jit
def _fwd_kernel(
    blocks_ptr, partial_ptr, query_ptr, gain_ptr, out_ptr, lse_ptr, logits_ptr,
    n_tokens, n_blocks, head_width,
    stride_bn, stride_bt, stride_pt, stride_ot,
    inv_dh, eps,
    HAS_PARTIAL: tl.constexpr, HAS_GAIN: tl.constexpr, SIGMOID: tl.constexpr,
    WRITE_LOGITS: tl.constexpr, BLOCK_T: tl.constexpr, BLOCK_D: tl.constexpr,
):  # fmt: skip
    pid = tl.program_id(0)
    head = tl.program_id(1)
    n_heads = tl.num_programs(1)
    rows = pid * BLOCK_T + tl.arange(0, BLOCK_T)
    cols = tl.arange(0, BLOCK_D)
    row_ok = rows < n_tokens
    col_ok = cols < head_width
    mask = row_ok[:, None] & col_ok[None, :]
    rows64 = rows.to(tl.int64)
    ch = head * head_width + cols

    u = tl.load(query_ptr + ch, mask=col_ok, other=0.0).to(tl.float32)
    if HAS_GAIN:
        u = u * tl.load(gain_ptr + ch, mask=col_ok, other=0.0).to(tl.float32)

    m = tl.full([BLOCK_T], float("-inf"), tl.float32)
    l = tl.zeros([BLOCK_T], tl.float32)
    acc = tl.zeros([BLOCK_T, BLOCK_D], tl.float32)
    tile = rows64[:, None] * stride_bt + ch[None, :]
    # Pointers advance by one source per step (64-bit pointer arithmetic, no index overflow).
    src_ptr = blocks_ptr
    logit_ptr = logits_ptr + rows64 * n_heads + head
    for _ in range(n_blocks):
        v = tl.load(src_ptr + tile, mask=mask, other=0.0)
        s, m, l, acc = _fwd_source(v.to(tl.float32), u, m, l, acc, inv_dh, eps, HAS_GAIN, SIGMOID)
        if WRITE_LOGITS:
            tl.store(logit_ptr, s, mask=row_ok)
        src_ptr += stride_bn
        logit_ptr += n_tokens * n_heads
    if HAS_PARTIAL:
        v = tl.load(partial_ptr + rows64[:, None] * stride_pt + ch[None, :], mask=mask, other=0.0)
        s, m, l, acc = _fwd_source(v.to(tl.float32), u, m, l, acc, inv_dh, eps, HAS_GAIN, SIGMOID)
        if WRITE_LOGITS:
            tl.store(logit_ptr, s, mask=row_ok)

    if not SIGMOID:
        acc = acc / l[:, None]
        tl.store(lse_ptr + rows64 * n_heads + head, m + tl.log(l), mask=row_ok)
    out_tile = rows64[:, None] * stride_ot + ch[None, :]
    tl.store(out_ptr + out_tile, acc.to(out_ptr.dtype.element_ty), mask=mask)


@triton.jit
def _bwd_source(v, go, u, delta, lse, inv_dh, eps, HAS_GAIN: tl.constexpr, SIGMOID: tl.constexpr):
    """Gradient of one source tile, and its ``ds_j r_j V_j`` contribution to ``P``."""
    s, r = _logit(v, u, inv_dh, eps, HAS_GAIN)
    g_dot_v = tl.sum(go * v, axis=1)
    if SIGMOID:
        a = tl.sigmoid(s)
        ds = g_dot_v * a * (1.0 - a)
    else:
        a = tl.exp(s - lse)
        ds = a * (g_dot_v - delta)
    dsr = ds * r
    if HAS_GAIN:
        dv = a[:, None] * go + dsr[:, None] * (u[None, :] - (s * r * inv_dh)[:, None] * v)
    else:
        dv = a[:, None] * go + dsr[:, None] * u[None, :]
    return dv, dsr[:, None] * v


@triton.jit
def _bwd_kernel(
    blocks_ptr, partial_ptr, query_ptr, gain_ptr, grad_out_ptr, out_ptr, lse_ptr,
    grad_blocks_ptr, grad_partial_ptr, psum_ptr,
    n_tokens, n_blocks, head_width, n_tiles,
    stride_bn, stride_bt, stride_pt, stride_gt, stride_ot,
    stride_dbn, stride_dbt, stride_dpt,
    inv_dh, eps,
    HAS_PARTIAL: tl.constexpr, HAS_GAIN: tl.constexpr, SIGMOID: tl.constexpr,
    BLOCK_T: tl.constexpr, BLOCK_D: tl.constexpr,
):  # fmt: skip
    pid = tl.program_id(0)
    n_progs = tl.num_programs(0)
    head = tl.program_id(1)
    n_heads = tl.num_programs(1)
    cols = tl.arange(0, BLOCK_D)
    col_ok = cols < head_width
    ch = head * head_width + cols

    u = tl.load(query_ptr + ch, mask=col_ok, other=0.0).to(tl.float32)
    if HAS_GAIN:
        u = u * tl.load(gain_ptr + ch, mask=col_ok, other=0.0).to(tl.float32)

    p_acc = tl.zeros([BLOCK_T, BLOCK_D], tl.float32)
    for tile_id in range(pid, n_tiles, n_progs):
        rows = tile_id * BLOCK_T + tl.arange(0, BLOCK_T)
        row_ok = rows < n_tokens
        mask = row_ok[:, None] & col_ok[None, :]
        rows64 = rows.to(tl.int64)
        go = tl.load(grad_out_ptr + rows64[:, None] * stride_gt + ch[None, :], mask=mask, other=0.0)
        go = go.to(tl.float32)
        if SIGMOID:
            delta = tl.zeros([BLOCK_T], tl.float32)
            lse = tl.zeros([BLOCK_T], tl.float32)
        else:
            o = tl.load(out_ptr + rows64[:, None] * stride_ot + ch[None, :], mask=mask, other=0.0)
            delta = tl.sum(go * o.to(tl.float32), axis=1)
            lse = tl.load(lse_ptr + rows64 * n_heads + head, mask=row_ok, other=0.0)
        src_tile = rows64[:, None] * stride_bt + ch[None, :]
        dst_tile = rows64[:, None] * stride_dbt + ch[None, :]
        src_ptr = blocks_ptr
        dst_ptr = grad_blocks_ptr
        for _ in range(n_blocks):
            v = tl.load(src_ptr + src_tile, mask=mask, other=0.0)
            dv, contrib = _bwd_source(v.to(tl.float32), go, u, delta, lse, inv_dh, eps, HAS_GAIN, SIGMOID)
            p_acc += contrib
            tl.store(dst_ptr + dst_tile, dv.to(grad_blocks_ptr.dtype.element_ty), mask=mask)
            src_ptr += stride_bn
            dst_ptr += stride_dbn
        if HAS_PARTIAL:
            v = tl.load(partial_ptr + rows64[:, None] * stride_pt + ch[None, :], mask=mask, other=0.0)
            dv, contrib = _bwd_source(v.to(tl.float32), go, u, delta, lse, inv_dh, eps, HAS_GAIN, SIGMOID)
            p_acc += contrib
            dst = grad_partial_ptr + rows64[:, None] * stride_dpt + ch[None, :]
            tl.store(dst, dv.to(grad_partial_ptr.dtype.element_ty), mask=mask)
    psum_row = (pid * n_heads + head).to(tl.int64) * head_width
    tl.store(psum_ptr + psum_row + cols, tl.sum(p_acc, axis=0), mask=col_ok)


def _flat(blocks: Tensor, partial: Tensor | None) -> tuple[Tensor, Tensor | None]:
    """``blocks`` as ``[n, T, d]`` and ``partial`` as ``[T, d]``, unit stride on channels
    (a view whenever the token dims are contiguous, which is the usual case)."""
    n, d = blocks.shape[0], blocks.shape[-1]
    b = blocks.reshape(n, math.prod(blocks.shape[1:-1]), d)
    if b.stride(-1) != 1:
        b = b.contiguous()
    p = None
    if partial is not None:
        p = partial.reshape(-1, d)
        if p.stride(-1) != 1:
            p = p.contiguous()
    return b, p


def _out_dtype(blocks: Tensor, partial: Tensor | None) -> torch.dtype:
    """The reference concatenates the sources, so mixed dtypes (an fp32 embedding block beside
    bf16 sublayer outputs under autocast) promote; the kernel reads each in its own dtype."""
    return blocks.dtype if partial is None else torch.promote_types(blocks.dtype, partial.dtype)


def _check(blocks: Tensor, partial: Tensor | None, query: Tensor, gain: Tensor | None, heads: int) -> None:
    d = blocks.shape[-1]
    for t in (blocks, partial):
        if t is not None and t.dtype not in runtime.KERNEL_DTYPES:
            raise ValueError(f"the kernel takes float32, bfloat16 or float16 sources, got {t.dtype}")
    if query.shape != (d,):
        raise ValueError(f"the kernel takes one learned query of shape [{d}], got {tuple(query.shape)}")
    if gain is not None and gain.shape != (d,):
        raise ValueError(f"gain must have shape [{d}], got {tuple(gain.shape)}")
    if partial is not None and partial.shape != blocks.shape[1:]:
        raise ValueError(f"partial must have one block's shape {tuple(blocks.shape[1:])}, got {tuple(partial.shape)}")
    if d % heads:
        raise ValueError(f"heads={heads} does not divide d={d}")
    if blocks.shape[0] + int(partial is not None) < 1:
        raise ValueError("depth-attention needs at least one source")


def forward_impl(
    blocks: Tensor,
    partial: Tensor | None,
    query: Tensor,
    gain: Tensor | None,
    score: str,
    heads: int,
    eps: float,
    with_logits: bool,
) -> tuple[Tensor, Tensor, Tensor]:
    """Forward pass: ``(out [*tok, d], lse [T, heads] fp32, logits [n, T, heads] fp32)``.

    ``lse`` is empty for sigmoid gates (backward does not need it) and ``logits`` is empty
    unless ``with_logits`` (diagnostics ask for the weights).
    """
    _check(blocks, partial, query, gain, heads)
    b, p = _flat(blocks, partial)
    query = query.contiguous()
    gain = None if gain is None else gain.contiguous()
    n_blocks, n_tokens, d = b.shape
    dh = d // heads
    sigmoid = score == "sigmoid"
    out = runtime.empty((n_tokens, d), device=b.device, dtype=_out_dtype(blocks, partial))
    lse = runtime.empty((0 if sigmoid else n_tokens, heads), device=b.device, dtype=torch.float32)
    n_src = n_blocks + (1 if p is not None else 0)
    logits = runtime.empty((n_src if with_logits else 0, n_tokens, heads), device=b.device, dtype=torch.float32)
    if n_tokens:
        block_d = triton.next_power_of_2(dh)
        block_t = _block_rows(block_d, n_tokens)
        grid = (triton.cdiv(n_tokens, block_t), heads)
        _fwd_kernel[grid](
            b, b if p is None else p, query, query if gain is None else gain, out, lse, logits,
            n_tokens, n_blocks, dh,
            b.stride(0), b.stride(1), 0 if p is None else p.stride(0), out.stride(0),
            1.0 / dh, eps,
            HAS_PARTIAL=p is not None, HAS_GAIN=gain is not None, SIGMOID=sigmoid,
            WRITE_LOGITS=with_logits, BLOCK_T=block_t, BLOCK_D=block_d,
            num_warps=_num_warps(block_t, block_d, elems_per_warp=1024),
        )  # fmt: skip
    return out.view(blocks.shape[1:]), lse, logits


def backward_impl(
    grad_out: Tensor,
    blocks: Tensor,
    partial: Tensor | None,
    query: Tensor,
    gain: Tensor | None,
    out: Tensor,
    lse: Tensor,
    score: str,
    heads: int,
    eps: float,
) -> tuple[Tensor, Tensor, Tensor, Tensor]:
    """Backward pass: ``(d blocks, d partial, d query, d gain)``; the gradients of absent
    inputs (``partial``/``gain`` is ``None``) are empty tensors."""
    b, p = _flat(blocks, partial)
    q = query.contiguous()
    gn = None if gain is None else gain.contiguous()
    n_blocks, n_tokens, d = b.shape
    dh = d // heads
    go = grad_out.reshape(n_tokens, d)
    if go.stride(-1) != 1:
        go = go.contiguous()
    o = out.reshape(n_tokens, d)
    grad_blocks = runtime.empty(b.shape, device=b.device, dtype=b.dtype)
    grad_partial = b.new_empty(0) if p is None else runtime.empty(p.shape, device=p.device, dtype=p.dtype)
    block_d = triton.next_power_of_2(dh)
    block_t = _block_rows(block_d, n_tokens)
    n_tiles = triton.cdiv(n_tokens, block_t)
    warps = _num_warps(block_t, block_d, elems_per_warp=512)
    n_progs = runtime.backward_programs(b.device, n_tiles, heads, warps)
    # Launched even for zero tokens: every program writes its (then zero) row of psum.
    psum = runtime.empty((n_progs, heads, dh), device=b.device, dtype=torch.float32)
    _bwd_kernel[(n_progs, heads)](
        b, b if p is None else p, q, q if gn is None else gn, go, o, lse,
        grad_blocks, grad_blocks if p is None else grad_partial, psum,
        n_tokens, n_blocks, dh, n_tiles,
        b.stride(0), b.stride(1), 0 if p is None else p.stride(0), go.stride(0), o.stride(0),
        grad_blocks.stride(0), grad_blocks.stride(1), 0 if p is None else grad_partial.stride(0),
        1.0 / dh, eps,
        HAS_PARTIAL=p is not None, HAS_GAIN=gain is not None, SIGMOID=score == "sigmoid",
        BLOCK_T=block_t, BLOCK_D=block_d, num_warps=warps,
    )  # fmt: skip
    total = psum.sum(0).reshape(d)  # fixed-order reduction over programs: deterministic
    if gain is None:
        grad_query, grad_gain = total.to(query.dtype), query.new_empty(0)
    else:
        grad_query = (total * gain.float()).to(query.dtype)
        grad_gain = (total * query.float()).to(gain.dtype)
    return (
        grad_blocks.view(blocks.shape),
        grad_partial.view(partial.shape) if partial is not None else grad_partial,
        grad_query,
        grad_gain,
    )


# --------------------------------------------------------------------- eager: autograd.Function
class FusedDepthAttention(torch.autograd.Function):
    """The eager path: the two passes called directly, without the dispatcher."""

    @staticmethod
    def forward(ctx, blocks, partial, query, gain, score, heads, eps, with_logits):  # type: ignore[no-untyped-def, override]
        out, lse, logits = forward_impl(blocks, partial, query, gain, score, heads, eps, with_logits)
        ctx.save_for_backward(blocks, partial, query, gain, out, lse)
        ctx.score, ctx.heads, ctx.eps = score, heads, eps
        ctx.mark_non_differentiable(lse, logits)
        return out, lse, logits

    @staticmethod
    def backward(ctx, grad_out, _grad_lse, _grad_logits):  # type: ignore[no-untyped-def, override]
        blocks, partial, query, gain, out, lse = ctx.saved_tensors
        grads = backward_impl(grad_out, blocks, partial, query, gain, out, lse, ctx.score, ctx.heads, ctx.eps)
        return _input_grads(grads, partial, gain)


def _input_grads(grads, partial, gain):  # type: ignore[no-untyped-def]
    grad_blocks, grad_partial, grad_query, grad_gain = grads
    return (
        grad_blocks,
        grad_partial if partial is not None else None,
        grad_query,
        grad_gain if gain is not None else None,
        None,
        None,
        None,
        None,
    )


# --------------------------------------------------------------------- torch.compile: custom ops
@torch.library.custom_op("attnres::depth_attention_fwd", mutates_args=())
def depth_attention_fwd(
    blocks: Tensor,
    partial: Tensor | None,
    query: Tensor,
    gain: Tensor | None,
    score: str,
    heads: int,
    eps: float,
    with_logits: bool,
) -> tuple[Tensor, Tensor, Tensor]:
    """:func:`forward_impl` as an op that ``torch.compile`` traces through its fake impl."""
    return forward_impl(blocks, partial, query, gain, score, heads, eps, with_logits)


@depth_attention_fwd.register_fake
def _fwd_fake(blocks, partial, query, gain, score, heads, eps, with_logits):  # type: ignore[no-untyped-def]
    _check(blocks, partial, query, gain, heads)
    n_tokens = math.prod(blocks.shape[1:-1])
    n_src = blocks.shape[0] + (1 if partial is not None else 0)
    out = blocks.new_empty(blocks.shape[1:], dtype=_out_dtype(blocks, partial))
    lse = blocks.new_empty((0 if score == "sigmoid" else n_tokens, heads), dtype=torch.float32)
    logits = blocks.new_empty((n_src if with_logits else 0, n_tokens, heads), dtype=torch.float32)
    return out, lse, logits


@torch.library.custom_op("attnres::depth_attention_bwd", mutates_args=())
def depth_attention_bwd(
    grad_out: Tensor,
    blocks: Tensor,
    partial: Tensor | None,
    query: Tensor,
    gain: Tensor | None,
    out: Tensor,
    lse: Tensor,
    score: str,
    heads: int,
    eps: float,
) -> tuple[Tensor, Tensor, Tensor, Tensor]:
    """:func:`backward_impl` as an op (empty tensors stand for absent gradients)."""
    return backward_impl(grad_out, blocks, partial, query, gain, out, lse, score, heads, eps)


@depth_attention_bwd.register_fake
def _bwd_fake(grad_out, blocks, partial, query, gain, out, lse, score, heads, eps):  # type: ignore[no-untyped-def]
    return (
        torch.empty_like(blocks),
        torch.empty_like(partial) if partial is not None else blocks.new_empty(0),
        torch.empty_like(query),
        torch.empty_like(gain) if gain is not None else query.new_empty(0),
    )


def _setup_context(ctx, inputs, output) -> None:  # type: ignore[no-untyped-def]
    blocks, partial, query, gain, score, heads, eps, _ = inputs
    out, lse, logits = output
    ctx.save_for_backward(blocks, partial, query, gain, out, lse)
    ctx.score, ctx.heads, ctx.eps = score, heads, eps
    ctx.mark_non_differentiable(lse, logits)


def _backward(ctx, grad_out, _grad_lse, _grad_logits):  # type: ignore[no-untyped-def]
    blocks, partial, query, gain, out, lse = ctx.saved_tensors
    grads = depth_attention_bwd(grad_out, blocks, partial, query, gain, out, lse, ctx.score, ctx.heads, ctx.eps)
    return _input_grads(grads, partial, gain)


depth_attention_fwd.register_autograd(_backward, setup_context=_setup_context)


def fused_depth_attention(
    blocks: Tensor,
    partial: Tensor | None,
    query: Tensor,
    gain: Tensor | None,
    *,
    score: Score = "softmax",
    heads: int = 1,
    eps: float = DEFAULT_EPS,
    return_weights: bool = False,
) -> Tensor | tuple[Tensor, Tensor]:
    """Depth-attention over ``[*blocks, partial]`` by the fused kernels (differentiable).

    Same contract as :func:`.reference.depth_attention` with the sources split into
    ``blocks [n, *tokens, d]`` and ``partial [*tokens, d] | None``, for a learned query
    ``[d]``. With ``return_weights`` the weights ``[n, *tokens, heads]`` come from logits the
    forward kernel writes beside its output; they are detached (diagnostics only). Eager
    calls take :class:`FusedDepthAttention`; calls being traced by ``torch.compile`` take
    the custom op.
    """
    if score not in ("softmax", "sigmoid"):
        raise ValueError(f"score must be 'softmax' or 'sigmoid', got {score!r}")
    if torch.compiler.is_compiling():
        out, lse, logits = depth_attention_fwd(blocks, partial, query, gain, score, heads, eps, return_weights)
    else:
        out, lse, logits = FusedDepthAttention.apply(blocks, partial, query, gain, score, heads, eps, return_weights)
    if not return_weights:
        return out
    weights = torch.sigmoid(logits) if score == "sigmoid" else torch.exp(logits - lse.unsqueeze(0))
    n_src = logits.shape[0]
    return out, weights.view(n_src, *out.shape[:-1], heads)
