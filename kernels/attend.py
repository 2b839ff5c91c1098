"""Chooses, per call, between the Triton kernel and the PyTorch reference for the
depth-attention. The model always calls :func:`attend`; nothing else decides.

Sources are passed as the stacked completed blocks plus the optional running partial sum,
so neither the model nor the kernel has to concatenate them on every layer.

Backends: ``auto`` (default) runs the fused kernel for CUDA tensors whenever Triton is
installed and the call is one the kernel covers, and the reference otherwise; ``triton``
insists on the kernel and raises with the reason when it cannot run (CPU tensors need
``TRITON_INTERPRET=1`` set before the kernels are imported); ``reference`` always takes the
PyTorch path. Choose with the environment variable ``ATTNRES_KERNEL`` or, taking precedence,
:func:`set_backend` / :func:`use_backend`.
"""

from __future__ import annotations

import os
from collections.abc import Iterator
from contextlib import contextmanager
from typing import Literal, get_args

from torch import Tensor

from attnres_search.kernels.reference import DEFAULT_EPS, Score, depth_attention
from attnres_search.kernels.runtime import KERNEL_DTYPES, MAX_HEAD_WIDTH, unavailable_reason

Backend = Literal["auto", "triton", "reference"]
BACKENDS: tuple[str, ...] = get_args(Backend)
ENV_VAR = "ATTNRES_KERNEL"

_override: Backend | None = None


def _validate(backend: str, where: str) -> Backend:
    if backend not in BACKENDS:
        raise ValueError(f"{where} must be one of {', '.join(BACKENDS)}; got {backend!r}")
    return backend  # type: ignore[return-value]


def get_backend() -> Backend:
    """The backend in force: the :func:`set_backend` override, else ``$ATTNRES_KERNEL``,
    else ``auto``."""
    if _override is not None:
        return _override
    return _validate(os.environ.get(ENV_VAR, "auto").strip().lower() or "auto", ENV_VAR)


def set_backend(backend: Backend | None) -> None:
    """Force a backend for this process; ``None`` goes back to ``$ATTNRES_KERNEL``/auto."""
    global _override
    _override = None if backend is None else _validate(backend, "backend")


@contextmanager
def use_backend(backend: Backend) -> Iterator[None]:
    """Run a block of code under ``backend``, restoring the previous choice afterwards."""
    previous = _override
    set_backend(backend)
    try:
        yield
    finally:
        set_backend(previous)


def kernel_unsupported_reason(
    blocks: Tensor,
    partial: Tensor | None,
    query: Tensor,
    gain: Tensor | None,
    *,
    heads: int = 1,
) -> str | None:
    """Why the fused kernel cannot take this call, or ``None`` when it can."""
    d = blocks.shape[-1]
    if query.dim() != 1:
        return "the kernel takes a learned query vector [d]; input-dependent queries use the reference"
    for t in (blocks, partial):
        if t is not None and t.dtype not in KERNEL_DTYPES:
            return f"the kernel takes float32, bfloat16 or float16 sources, not {t.dtype}"
    if partial is not None and partial.shape != blocks.shape[1:]:
        return "partial must have one block's shape"
    if heads < 1 or d % heads:
        return f"heads={heads} does not divide d={d}"
    if d // heads > MAX_HEAD_WIDTH:
        return f"channel groups wider than {MAX_HEAD_WIDTH} do not fit one program's registers"
    devices = {t.device for t in (blocks, partial, query, gain) if t is not None}
    if len(devices) != 1:
        return "all tensors must be on one device"
    return unavailable_reason(blocks.device)


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

    ``blocks``: ``[n, *tokens, d]``; ``partial``: ``[*tokens, d]`` or ``None``. On the kernel
    path the weights returned with ``return_weights`` are detached (they are diagnostics).
    """
    backend = get_backend()
    if backend != "reference" and (backend == "triton" or blocks.is_cuda):
        reason = kernel_unsupported_reason(blocks, partial, query, gain, heads=heads)
        if reason is None:
            from attnres_search.kernels.depth_attention import fused_depth_attention

            return fused_depth_attention(
                blocks, partial, query, gain, score=score, heads=heads, eps=eps, return_weights=return_weights
            )
        if backend == "triton":
            raise RuntimeError(f"{ENV_VAR}/backend is 'triton' but the kernel cannot run this call: {reason}")
    return depth_attention(
        blocks, query, gain, partial=partial, score=score, heads=heads, eps=eps, return_weights=return_weights
    )
