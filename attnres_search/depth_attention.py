"""Pure-PyTorch depth-attention: the ground truth that the Triton kernels are checked
against, and the path every CPU run takes.

Layout convention shared with ``attnres_search.kernels``: the ``n`` sources a layer attends
over are stacked on dim 0, ``sources[n, *tokens, d]``. Statistics and logits are computed in
float32 (float64 if the sources are float64) whatever the storage dtype, because the key
RMSNorm and the softmax over a handful of sources are where low precision hurts; the
output is cast back to the sources' dtype.
"""

from __future__ import annotations

from typing import Literal

import torch
from torch import Tensor

Score = Literal["softmax", "sigmoid"]

DEFAULT_EPS = 1e-6


def _compute_dtype(dtype: torch.dtype) -> torch.dtype:
    return torch.float64 if dtype == torch.float64 else torch.float32


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
    n, d = sources.shape[0], sources.shape[-1]
    if d % heads:
        raise ValueError(f"heads={heads} does not divide the width d={d}")
    ct = _compute_dtype(sources.dtype)
    v = sources.to(ct).unflatten(-1, (heads, d // heads))  # [n, *tok, H, dh]
    if gain is not None:
        inv_rms = torch.rsqrt(v.pow(2).mean(-1, keepdim=True) + eps)
        k = v * inv_rms * gain.to(ct).view(heads, d // heads)
    else:
        k = v
    q = query.to(ct).unflatten(-1, (heads, d // heads))
    return (k * q).sum(-1)  # broadcast: q is [H, dh] or [*tok, H, dh]


def depth_weights(logits: Tensor, score: Score = "softmax") -> Tensor:
    """Mixing weights over sources (dim 0). Sigmoid gates are independent, not renormalised."""
    if score == "softmax":
        return torch.softmax(logits, dim=0)
    if score == "sigmoid":
        return torch.sigmoid(logits)
    raise ValueError(f"score must be 'softmax' or 'sigmoid', got {score!r}")


def mix_sources(sources: Tensor, weights: Tensor) -> Tensor:
    """``sum_j weights[j] * sources[j]`` with per-head weights ``[n, *tok, H]``."""
    n, d = sources.shape[0], sources.shape[-1]
    heads = weights.shape[-1]
    ct = weights.dtype
    v = sources.to(ct).unflatten(-1, (heads, d // heads))
    out = (weights.unsqueeze(-1) * v).sum(0).flatten(-2)
    return out.to(sources.dtype)


def depth_attention(
    sources: Tensor,
    query: Tensor,
    gain: Tensor | None,
    *,
    score: Score = "softmax",
    heads: int = 1,
    eps: float = DEFAULT_EPS,
    return_weights: bool = False,
) -> Tensor | tuple[Tensor, Tensor]:
    """AttnRes layer input ``h = sum_j alpha_j V_j`` with ``alpha = score(w . RMSNorm(V_j))``.

    ``sources``: ``[n, *tokens, d]``; ``query``: ``[d]`` or ``[*tokens, d]``; ``gain``: ``[d]``
    or ``None`` (no key norm). Returns ``[*tokens, d]`` in the sources' dtype, and with
    ``return_weights`` also ``alpha[n, *tokens, heads]`` (float32) for diagnostics.
    """
    logits = depth_logits(sources, query, gain, heads=heads, eps=eps)
    weights = depth_weights(logits, score)
    out = mix_sources(sources, weights)
    return (out, weights) if return_weights else out
