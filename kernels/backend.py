"""The one rule that picks the Triton kernels or the PyTorch reference for a call.

Backends: ``auto`` (default) runs a kernel for CUDA tensors whenever it can take the call
(:mod:`.runtime` says why not) and the reference otherwise (or, with :data:`AUTO_ON_CUDA`
set to ``"reference"``, the PyTorch path on CUDA too); ``triton`` insists on the kernel
and raises with the reason when it cannot run (CPU tensors need ``TRITON_INTERPRET=1`` set
before the kernels are imported); ``reference`` always takes the PyTorch path. Choose with
the environment variable ``ATTNRES_KERNEL`` or, taking precedence, :func:`set_backend` /
:func:`use_backend`. Every entry point (one-shot :func:`.attend.attend`, two-phase
:func:`.two_phase.phase1` / :func:`.two_phase.phase2`) asks :func:`kernel_chosen`.
"""

from __future__ import annotations

import os
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from typing import Literal, get_args

import torch

Backend = Literal["auto", "triton", "reference"]
BACKENDS: tuple[str, ...] = get_args(Backend)
ENV_VAR = "ATTNRES_KERNEL"

_override: Backend | None = None

AUTO_ON_CUDA: Literal["triton", "reference"] = "triton"
"""What ``auto`` trains CUDA tensors with: ``"triton"``, the fused one-shot kernel for each
layer's depth-attention; ``"reference"``, the PyTorch path, where learned-query AttnRes
runs the block cache (two-phase schedule over one buffer, :mod:`.block_cache`) and the
other variants the reference. ``bench step --path fused --path block-cache`` measures
both side by side (``make gpu-check``); the faster exact one belongs here. Compiled
training (``compile: reduce-overhead``) traces whichever this picks outside the block cache."""


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


def reference_only(device: torch.device, backend: Backend | None = None) -> bool:
    """Whether every call on ``device`` takes the PyTorch path under ``backend`` (default: the
    one in force): ``reference``, or ``auto`` off CUDA (on CUDA too when :data:`AUTO_ON_CUDA`
    says so). Callers may then pick PyTorch-only schedules such as :mod:`.block_cache`
    without asking each kernel."""
    backend = get_backend() if backend is None else backend
    return backend == "reference" or (backend == "auto" and (device.type != "cuda" or AUTO_ON_CUDA == "reference"))


def kernel_chosen(device: torch.device, unsupported_reason: Callable[[], str | None], what: str) -> bool:
    """Whether a call on ``device`` takes the Triton kernel.

    ``unsupported_reason`` (a :mod:`.runtime` check, evaluated only when the backend could
    pick the kernel) says why the kernel cannot take the call, or ``None``. Under ``triton``
    a reason is an error naming ``what`` and the reason; under ``auto`` it means the reference.
    """
    backend = get_backend()
    if reference_only(device, backend):
        return False
    reason = unsupported_reason()
    if reason is None:
        return True
    if backend == "triton":
        raise RuntimeError(f"{ENV_VAR}/backend is 'triton' but {what} cannot run this call: {reason}")
    return False
