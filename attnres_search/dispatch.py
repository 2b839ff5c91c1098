"""Chooses, per call, between the Triton kernel and the PyTorch reference for the
depth-attention. The model always calls :func:`attend`; nothing else decides.

Sources are passed as the stacked completed blocks plus the optional running partial sum,
so neither the model nor the kernel has to concatenate them on every layer.
"""

from __future__ import annotations

import torch
from torch import Tensor

from attnres_search.depth_attention import DEFAULT_EPS, Score, depth_attention


def attend(
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
    """Depth-attention over ``[*blocks, partial]``; see :func:`depth_attention` for the math.

    ``blocks``: ``[n, *tokens, d]``; ``partial``: ``[*tokens, d]`` or ``None``.
    """
    sources = blocks if partial is None else torch.cat([blocks, partial.unsqueeze(0)], 0)
    return depth_attention(
        sources, query, gain, score=score, heads=heads, eps=eps, return_weights=return_weights
    )
