"""Two-phase inference for Block AttnRes (paper Algorithm 1), in PyTorch and in Triton.

Within block ``n`` every one of its ``S`` layers attends over the same cached completed
blocks ``[b_0..b_{n-1}]`` plus its own intra-block partial sum ``b_n^{i-1}``. The blocks do
not change while the block runs, so:

* **phase 1** scores all ``S`` pseudo-queries against the cached blocks in one pass (each
  block is read once for all ``S`` queries) and keeps, per query and token, the normalised
  mixture ``o_i`` and its log-sum-exp ``lse_i`` (or, for sigmoid gates, the gated sum);
* **phase 2** runs as the block's layers run: layer ``i`` merges its one extra source, the
  partial sum, into ``(o_i, lse_i)`` by an online-softmax step (or adds its gated term).

The merge is exact: ``softmax`` over ``[blocks, partial]`` equals the log-sum-exp-weighted
combination of the softmax over ``blocks`` and the lone partial term. Phase-1 mixtures are
kept in float32 so the split adds no rounding step that the one-shot computation lacks.
These are inference paths (no autograd through the Triton kernels).
"""

from __future__ import annotations

from collections.abc import Callable, Sequence

import torch
from torch import Tensor

from attnres_search.kernels.reference import DEFAULT_EPS, Score, depth_logits
from attnres_search.kernels.runtime import KERNEL_DTYPES, unavailable_reason


def _use_triton(use_triton: bool | None, *tensors: Tensor | None) -> bool:
    """Resolve the backend: ``None`` picks Triton for CUDA tensors it supports; ``True``
    insists and explains why it cannot; ``False`` forces PyTorch."""
    present = [t for t in tensors if t is not None]
    device = present[0].device
    if use_triton is False:
        return False
    reason = unavailable_reason(device)
    if reason is None and any(t.dtype not in KERNEL_DTYPES for t in present):
        reason = "the kernels take float32, bfloat16 or float16 tensors"
    if reason is None and torch.is_grad_enabled() and any(t.requires_grad for t in present):
        reason = "the two-phase kernels are for inference: run under torch.no_grad()"
    if use_triton is None:
        return device.type == "cuda" and reason is None
    if reason is not None:
        raise RuntimeError(f"cannot run the two-phase Triton kernels: {reason}")
    return True


def _compute_dtype(dtype: torch.dtype) -> torch.dtype:
    return torch.float64 if dtype == torch.float64 else torch.float32


def _check_layout(blocks: Tensor, queries: Tensor, gains: Tensor | None, heads: int) -> None:
    d = blocks.shape[-1]
    if blocks.shape[0] < 1:
        raise ValueError("phase 1 needs at least one cached block")
    if queries.dim() != 2 or queries.shape[1] != d:
        raise ValueError(f"queries must be [S, {d}] (one learned query per layer), got {tuple(queries.shape)}")
    if gains is not None and gains.shape != queries.shape:
        raise ValueError(f"gains must match queries {tuple(queries.shape)}, got {tuple(gains.shape)}")
    if d % heads:
        raise ValueError(f"heads={heads} does not divide d={d}")


def phase1(
    blocks: Tensor,
    queries: Tensor,
    gains: Tensor | None,
    *,
    score: Score = "softmax",
    heads: int = 1,
    eps: float = DEFAULT_EPS,
    use_triton: bool | None = None,
) -> tuple[Tensor, Tensor | None]:
    """Score a block's ``S`` queries against the cached blocks in one pass.

    ``blocks``: ``[n, *tokens, d]``; ``queries``/``gains``: ``[S, d]`` (each layer's own
    pseudo-query and key-norm gain; ``gains=None`` for no key norm). Returns the mixtures
    ``[S, *tokens, d]`` (float32; float64 for float64 blocks) and, for softmax, their
    log-sum-exp ``[S, *tokens, heads]`` (``None`` for sigmoid gates).
    """
    _check_layout(blocks, queries, gains, heads)
    if _use_triton(use_triton, blocks, queries, gains):
        from attnres_search.kernels.two_phase_triton import phase1_triton

        return phase1_triton(blocks, queries, gains, score=score, heads=heads, eps=eps)
    ct = _compute_dtype(blocks.dtype)
    n_q, d = queries.shape
    dh = d // heads
    v = blocks.to(ct).unflatten(-1, (heads, dh))  # [n, *tok, H, dh]
    keys = v * torch.rsqrt(v.pow(2).mean(-1, keepdim=True) + eps) if gains is not None else v
    u = queries.to(ct) * gains.to(ct) if gains is not None else queries.to(ct)
    logits = torch.einsum("n...hc,shc->sn...h", keys, u.view(n_q, heads, dh))
    if score == "softmax":
        lse = torch.logsumexp(logits, dim=1)
        weights = torch.exp(logits - lse.unsqueeze(1))
    elif score == "sigmoid":
        lse, weights = None, torch.sigmoid(logits)
    else:
        raise ValueError(f"score must be 'softmax' or 'sigmoid', got {score!r}")
    out = torch.einsum("sn...h,n...hc->s...hc", weights, v).flatten(-2)
    return out, lse


def phase2(
    mixture: Tensor,
    lse: Tensor | None,
    partial: Tensor | None,
    query: Tensor,
    gain: Tensor | None,
    *,
    score: Score = "softmax",
    heads: int = 1,
    eps: float = DEFAULT_EPS,
    dtype: torch.dtype | None = None,
    use_triton: bool | None = None,
) -> Tensor:
    """One layer's input: merge its partial-sum source into its phase-1 result.

    ``mixture``/``lse``: this layer's slice of :func:`phase1`'s outputs (``[*tokens, d]``,
    ``[*tokens, heads]``); ``partial``: ``[*tokens, d]`` or ``None`` (the block's first layer
    has none). The result has ``partial``'s dtype, or ``dtype`` when there is no partial.
    """
    if partial is None:
        return mixture.to(dtype or mixture.dtype)
    if score == "softmax" and lse is None:
        raise ValueError("softmax needs phase 1's log-sum-exp")
    if _use_triton(use_triton, mixture, partial, query, gain):
        from attnres_search.kernels.two_phase_triton import phase2_triton

        return phase2_triton(mixture, lse, partial, query, gain, score=score, heads=heads, eps=eps)
    ct = mixture.dtype
    d = partial.shape[-1]
    s_p = depth_logits(partial.unsqueeze(0), query, gain, heads=heads, eps=eps)[0].to(ct)
    o = mixture.unflatten(-1, (heads, d // heads))
    p = partial.to(ct).unflatten(-1, (heads, d // heads))
    if score == "sigmoid":
        merged = o + torch.sigmoid(s_p).unsqueeze(-1) * p
    else:
        assert lse is not None
        m = torch.maximum(lse, s_p)
        a, b = torch.exp(lse - m), torch.exp(s_p - m)
        merged = (a.unsqueeze(-1) * o + b.unsqueeze(-1) * p) / (a + b).unsqueeze(-1)
    return merged.flatten(-2).to(partial.dtype)


def two_phase_block(
    blocks: Tensor,
    queries: Tensor,
    gains: Tensor | None,
    layers: Sequence[Callable[[Tensor], Tensor]],
    *,
    score: Score = "softmax",
    heads: int = 1,
    eps: float = DEFAULT_EPS,
    use_triton: bool | None = None,
) -> tuple[list[Tensor], Tensor]:
    """Run one block of ``S = len(layers)`` layers by Algorithm 1.

    ``layers[i]`` maps its input ``h_i`` to its output ``f_i``. Returns every layer's input
    ``[h_1..h_S]`` and the completed block representation ``b_n = f_1 + ... + f_S``, equal to
    calling the one-shot depth-attention over ``[*blocks, b_n^{i-1}]`` layer by layer.
    """
    if len(layers) != queries.shape[0]:
        raise ValueError(f"{len(layers)} layers but {queries.shape[0]} queries")
    mixtures, lse = phase1(blocks, queries, gains, score=score, heads=heads, eps=eps, use_triton=use_triton)
    inputs: list[Tensor] = []
    partial: Tensor | None = None
    for i, layer in enumerate(layers):
        h = phase2(
            mixtures[i],
            None if lse is None else lse[i],
            partial,
            queries[i],
            None if gains is None else gains[i],
            score=score,
            heads=heads,
            eps=eps,
            dtype=blocks.dtype,
            use_triton=use_triton,
        )
        inputs.append(h)
        f = layer(h)
        partial = f if partial is None else partial + f
    assert partial is not None
    return inputs, partial
