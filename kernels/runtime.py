"""Whether a Triton kernel can take a call, decided in one place and explained in words.

Every kernel entry point asks here: :func:`unavailable_reason` (can the kernels run on this
device at all), :func:`fused_unsupported_reason` (the fused one-shot kernel) and
:func:`two_phase_unsupported_reason` (the two-phase training/inference kernels). Which
backend a call then takes is decided by :mod:`.backend` from the answer.

Triton decides at *definition* time whether a ``@triton.jit`` function is compiled for the GPU
or run by its CPU interpreter (``TRITON_INTERPRET=1`` read when the first kernel module is
imported), so the answer depends on how the kernels were imported, not on the environment at
call time. This module never imports Triton at import time: importing it is cheap and safe on
machines without Triton; only :func:`kernels_interpreted` imports :mod:`.triton_base`.
"""

from __future__ import annotations

import functools
import importlib.util

import torch
from torch import Tensor

KERNEL_DTYPES = (torch.float32, torch.bfloat16, torch.float16)
"""Storage dtypes the kernels read (math is float32 whatever the storage)."""

MAX_HEAD_WIDTH = 16384
"""Widest channel group one kernel program holds in registers; wider calls use the reference."""

MAX_TWO_PHASE_ELEMS = 32768
"""Largest ``S x head width`` the two-phase backward holds in one program (all the block's
queries at once, so each source gradient is summed over the queries in registers)."""

TRITON_INSTALLED: bool = importlib.util.find_spec("triton") is not None
"""Whether the ``triton`` package is importable (looked up once; it cannot change mid-run)."""


def kernels_interpreted() -> bool:
    """True when the kernels were defined for Triton's CPU interpreter (imports Triton)."""
    from . import triton_base

    return triton_base.INTERPRETED


def unavailable_reason(device: torch.device) -> str | None:
    """Why the Triton kernels cannot run on ``device``, or ``None`` when they can."""
    if not TRITON_INSTALLED:
        return "triton is not installed (pip install triton; Linux only)"
    if device.type == "cuda":
        return None
    if device.type == "cpu":
        if kernels_interpreted():
            return None
        return (
            "the tensors are on the CPU and the kernels were compiled for the GPU: set "
            "TRITON_INTERPRET=1 before attnres_search.kernels is first imported to run them "
            "in Triton's (slow) interpreter"
        )
    return f"the Triton kernels run on CUDA devices only, not {device.type}"


def _common_reason(
    sources: tuple[Tensor | None, ...], params: tuple[Tensor | None, ...], d: int, heads: int
) -> str | None:
    """Checks shared by every kernel: source dtypes, head split, one device, the device."""
    for t in sources:
        if t is not None and t.dtype not in KERNEL_DTYPES:
            return f"the kernel takes float32, bfloat16 or float16 sources, not {t.dtype}"
    present = [t for t in (*sources, *params) if t is not None]
    if heads < 1 or d % heads:
        return f"heads={heads} does not divide d={d}"
    if d // heads > MAX_HEAD_WIDTH:
        return f"channel groups wider than {MAX_HEAD_WIDTH} do not fit one program's registers"
    if len({t.device for t in present}) != 1:
        return "all tensors must be on one device"
    return unavailable_reason(present[0].device)


def fused_unsupported_reason(
    blocks: Tensor, partial: Tensor | None, query: Tensor, gain: Tensor | None, *, heads: int = 1
) -> str | None:
    """Why the fused one-shot kernel cannot take this call, or ``None`` when it can."""
    if query.dim() != 1:
        return "the kernel takes a learned query vector [d]; input-dependent queries use the reference"
    if partial is not None and partial.shape != blocks.shape[1:]:
        return "partial must have one block's shape"
    return _common_reason((blocks, partial), (query, gain), blocks.shape[-1], heads)


def two_phase_unsupported_reason(
    blocks: Tensor, queries: Tensor, gains: Tensor | None, *, heads: int = 1
) -> str | None:
    """Why the two-phase Triton kernels cannot take this block, or ``None`` when they can."""
    d = blocks.shape[-1]
    if queries.shape[0] * (d // max(heads, 1)) > MAX_TWO_PHASE_ELEMS:
        return f"S x head width above {MAX_TWO_PHASE_ELEMS} does not fit one backward program"
    return _common_reason((blocks,), (queries, gains), d, heads)


@functools.cache
def multiprocessors(device_index: int) -> int:
    """Streaming multiprocessors of a GPU: sizes the persistent backward grids, whose
    per-program partial sums are then reduced in a fixed order (deterministic per device)."""
    return torch.cuda.get_device_properties(device_index).multi_processor_count


def backward_programs(device: torch.device, n_tiles: int, heads: int, warps: int) -> int:
    """Programs of a persistent backward grid: enough to keep ~16 warps resident per
    multiprocessor (2 in the interpreter, so CPU tests still reduce over several programs)."""
    slots = 2 if device.type != "cuda" else multiprocessors(device.index or 0) * max(1, 16 // warps)
    return max(1, min(n_tiles, -(-slots // heads)))


def empty(shape: tuple[int, ...], *, device: torch.device, dtype: torch.dtype) -> torch.Tensor:
    """Allocate a kernel output. Every kernel allocates through this one function so the
    tests can poison outputs with NaN and catch any element a kernel fails to write."""
    return torch.empty(shape, device=device, dtype=dtype)
