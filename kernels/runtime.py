"""Whether the Triton kernels can run on a given device, decided once and explained in words.

Triton decides at *definition* time whether a ``@triton.jit`` function is compiled for the GPU
or run by its CPU interpreter (``TRITON_INTERPRET=1`` read when the kernel module is first
imported), so the answer depends on how the kernel module was imported, not on the
environment at call time. This module never imports Triton itself: importing it is cheap and
safe on machines without Triton.
"""

from __future__ import annotations

import functools
import importlib.util

import torch

KERNEL_DTYPES = (torch.float32, torch.bfloat16, torch.float16)
"""Storage dtypes the kernels read (math is float32 whatever the storage)."""

MAX_HEAD_WIDTH = 16384
"""Widest channel group one kernel program holds in registers; wider calls use the reference."""


TRITON_INSTALLED: bool = importlib.util.find_spec("triton") is not None
"""Whether the ``triton`` package is importable (looked up once; it cannot change mid-run)."""


def kernels_interpreted() -> bool:
    """True when the kernels were defined for Triton's CPU interpreter (imports them)."""
    from attnres_search.kernels import depth_attention

    return depth_attention.INTERPRETED


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


@functools.cache
def multiprocessors(device_index: int) -> int:
    """Streaming multiprocessors of a GPU: sizes the persistent backward grid, whose
    per-program partial sums are then reduced in a fixed order (deterministic per device)."""
    return torch.cuda.get_device_properties(device_index).multi_processor_count


def empty(shape: tuple[int, ...], *, device: torch.device, dtype: torch.dtype) -> torch.Tensor:
    """Allocate a kernel output. Every kernel allocates through this one function so the
    tests can poison outputs with NaN and catch any element a kernel fails to write."""
    return torch.empty(shape, device=device, dtype=dtype)
