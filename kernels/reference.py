"""Pure-PyTorch depth-attention: the ground truth that the Triton kernels are checked
against, and the path every CPU run takes.

Layout convention shared with ``attnres_search.kernels``: the ``n`` sources a layer attends
over are stacked on dim 0, ``sources[n, *tokens, d]``. Statistics and logits are computed in
float32 (float64 if the sources are float64) whatever the storage dtype, because the key
RMSNorm and the softmax over a handful of sources are where low precision hurts; the
output is cast back to the sources' dtype.
"""

from __future__ import annotations

import contextlib
import functools
from collections.abc import Callable
from typing import Any, Literal, TypeVar

import torch
from torch import Tensor

Score = Literal["softmax", "sigmoid"]

DEFAULT_EPS = 1e-6


def compute_dtype(dtype: torch.dtype) -> torch.dtype:
    """Statistics and mixing weights in fp32 (fp64 for a fp64 model): bf16 logits and
    norms lose the small differences between sources that the weights depend on."""
    return torch.float64 if dtype == torch.float64 else torch.float32


F = TypeVar("F", bound=Callable[..., Any])


def without_autocast(fn: F) -> F:
    """Run an ``autograd.Function``'s forward or backward with autocast off. Their bodies
    choose their dtypes themselves (statistics and mixtures in :func:`compute_dtype`);
    autocast would recast their matrix products to bf16 mid-way and mix dtypes in the
    products that follow (``train --precision bf16-mixed`` on CPU failed that way)."""

    @functools.wraps(fn)
    def wrapper(*args: Any) -> Any:
        active = [d for d in ("cpu", "cuda") if torch.is_autocast_enabled(d)]
        if not active:
            return fn(*args)
        with contextlib.ExitStack() as stack:
            for device in active:
                stack.enter_context(torch.autocast(device, enabled=False))
            return fn(*args)

    return wrapper  # type: ignore[return-value]


def folded_query(query: Tensor, gain: Tensor | None, dtype: torch.dtype) -> Tensor:
    """``query * gain`` in ``dtype``: w . (g * V / rms(V)) = ((w * g) . V) / rms(V), so the key
    norm's gain folds into the query and the keys need not be materialised."""
    return query.to(dtype) if gain is None else query.to(dtype) * gain.to(dtype)


def inv_rms(x: Tensor, eps: float) -> Tensor:
    """``1 / sqrt(mean(x^2) + eps)`` over the last dim, differentiable everywhere (a zero row
    included). ``vecdot`` writes the product ``x * x`` before summing it; outside autograd
    :func:`inv_rms_no_grad` avoids that copy."""
    return torch.rsqrt(torch.linalg.vecdot(x, x) / x.shape[-1] + eps)


def inv_rms_no_grad(x: Tensor, eps: float) -> Tensor:
    """:func:`inv_rms` for hand-written functions (outside autograd): one ``vector_norm``
    (reads ``x`` once, no squared copy) and an in-place chain on its small result. Not for
    autograd code: ``vector_norm``'s gradient at a zero row is NaN."""
    return torch.linalg.vector_norm(x, dim=-1).square_().mul_(1.0 / x.shape[-1]).add_(eps).rsqrt_()


def depth_logits(
    sources: Tensor,
    query: Tensor,
    gain: Tensor | None,
    *,
    heads: int = 1,
    eps: float = DEFAULT_EPS,
) -> Tensor:
    """Logits ``s[n, *tokens, heads]`` of each source under the pseudo-query.

    ``query`` is either one vector ``[d]`` (learned pseudo-query, shared by every token) or
    one per token ``[*tokens, d]`` (input-dependent query). With ``heads > 1`` the channels
    are split into ``heads`` equal groups that each normalise their keys and attend
    separately, i.e. each group is an independent AttnRes of width ``d / heads``.
    ``gain is None`` means no key norm: the keys are the raw sources.
    """
    d = sources.shape[-1]
    if d % heads:
        raise ValueError(f"heads={heads} does not divide the width d={d}")
    dh = d // heads
    ct = compute_dtype(sources.dtype)
    v = sources.to(ct)
    # w . (g * V / rms(V)) = ((w * g) . V) / rms(V): folding the gain into the query turns the
    # logits into one matrix-vector product, and the statistics into one norm, so the sources
    # are read twice instead of materialising normalised keys (this path is memory-bound).
    u = folded_query(query, gain, ct)
    if heads == 1 and query.dim() == 1:
        logits = (v @ u).unsqueeze(-1)  # [n, *tok, 1]
    else:
        logits = (v.unflatten(-1, (heads, dh)) * u.unflatten(-1, (heads, dh))).sum(-1)
    if gain is not None:
        sq_norm = torch.linalg.vector_norm(v.unflatten(-1, (heads, dh)), dim=-1).square()
        logits = logits * torch.rsqrt(sq_norm / dh + eps)
    return logits


def depth_weights(logits: Tensor, score: Score = "softmax") -> Tensor:
    """Mixing weights over sources (dim 0). Sigmoid gates are independent, not renormalised."""
    if score == "softmax":
        return torch.softmax(logits, dim=0)
    if score == "sigmoid":
        return torch.sigmoid(logits)
    raise ValueError(f"score must be 'softmax' or 'sigmoid', got {score!r}")


def _weighted_sum(sources: Tensor, weights: Tensor) -> Tensor:
    """``sum_j weights[j] * sources[j]`` in the weights' (compute) dtype."""
    d, heads = sources.shape[-1], weights.shape[-1]
    v = sources.to(weights.dtype).unflatten(-1, (heads, d // heads))
    return (weights.unsqueeze(-1) * v).sum(0).flatten(-2)


def mix_sources(sources: Tensor, weights: Tensor, partial: Tensor | None = None) -> Tensor:
    """``sum_j weights[j] * V_j`` over ``[*sources, partial]`` with per-head weights
    ``[n (+1), *tok, H]``, in the sources' dtype (promoted with the partial's, as
    ``torch.cat`` would). The partial is kept apart so callers never concatenate it onto
    the stacked blocks, a full copy per layer."""
    n = sources.shape[0]
    out = _weighted_sum(sources, weights[:n])
    dtype = sources.dtype
    if partial is not None:
        out = out + _weighted_sum(partial.unsqueeze(0), weights[n:])
        dtype = torch.promote_types(dtype, partial.dtype)
    return out.to(dtype)


def depth_attention(
    sources: Tensor,
    query: Tensor,
    gain: Tensor | None,
    *,
    partial: Tensor | None = None,
    score: Score = "softmax",
    heads: int = 1,
    eps: float = DEFAULT_EPS,
    return_weights: bool = False,
) -> Tensor | tuple[Tensor, Tensor]:
    """AttnRes layer input ``h = sum_j alpha_j V_j`` with ``alpha = score(w . RMSNorm(V_j))``.

    ``sources``: ``[n, *tokens, d]``; ``partial``: an optional last source ``[*tokens, d]``
    (see :func:`mix_sources`); ``query``: ``[d]`` or ``[*tokens, d]``; ``gain``: ``[d]`` or ``None`` (no key
    norm). Returns ``[*tokens, d]`` in the sources' dtype (promoted with the partial's, as
    ``torch.cat`` would), and with ``return_weights`` also ``alpha[n, *tokens, heads]``
    (float32) for diagnostics.
    """
    logits = depth_logits(sources, query, gain, heads=heads, eps=eps)
    if partial is not None:
        partial_logits = depth_logits(partial.unsqueeze(0), query, gain, heads=heads, eps=eps)
        logits = torch.cat([logits, partial_logits])
    weights = depth_weights(logits, score)
    out = mix_sources(sources, weights, partial)
    return (out, weights) if return_weights else out
