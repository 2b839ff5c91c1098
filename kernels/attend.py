"""The depth-attention a model calls: :func:`attend` picks the fused Triton kernel or the
PyTorch reference by the one backend rule of :mod:`.backend` (re-exported here).

Sources are passed as the stacked completed blocks plus the optional running partial sum,
so neither the model nor the kernel has to concatenate them on every layer.
"""

from __future__ import annotations

from torch import Tensor

from .backend import BACKENDS, ENV_VAR, Backend, get_backend, kernel_chosen, set_backend, use_backend
from .reference import DEFAULT_EPS, Score, depth_attention
from .runtime import fused_unsupported_reason

__all__ = [
    "BACKENDS", "ENV_VAR", "Backend", "attend", "get_backend", "kernel_unsupported_reason",
    "set_backend", "use_backend",
]  # fmt: skip

kernel_unsupported_reason = fused_unsupported_reason
"""Why the fused kernel cannot take a call (see :func:`.runtime.fused_unsupported_reason`)."""


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
    """Depth-attention over ``[*blocks, partial]``; see :func:`.reference.depth_attention`.

    ``blocks``: ``[n, *tokens, d]``; ``partial``: ``[*tokens, d]`` or ``None``; ``query``:
    ``[d]`` (learned) or ``[*tokens, d]`` (input-dependent: reference only). On the kernel
    path the weights returned with ``return_weights`` are detached (they are diagnostics).
    """
    if kernel_chosen(
        blocks.device,
        lambda: fused_unsupported_reason(blocks, partial, query, gain, heads=heads),
        "the fused kernel",
    ):
        from . import fused

        return fused.fused_depth_attention(
            blocks, partial, query, gain, score=score, heads=heads, eps=eps, return_weights=return_weights
        )
    return depth_attention(
        blocks, query, gain, partial=partial, score=score, heads=heads, eps=eps, return_weights=return_weights
    )
