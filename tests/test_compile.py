"""``torch.compile(model, fullgraph=True)`` traces a forward + backward of every preset, with
static and dynamic shapes, on the reference path and on the kernel path (the Triton kernels
in the CPU interpreter without a GPU), and gives the eager loss and gradients.

This is the check for ``train --compile``: Dynamo once failed on GPU with "BooleanAtom not
allowed in this context" (a bool added to a symbolic source count in the kernel's fake impl).
Every preset is traced by Dynamo with ``fullgraph=True`` (the ``eager`` backend: Dynamo's
graph capture, fake-tensor propagation through the kernel's fake impl and the dynamic-shape
guards, a few seconds a preset), with dynamic shapes by default and static shapes in the slow
set; the ``aot_eager`` backend, which also traces the backward through the registered
autograd formula (AOTAutograd), takes ~10x longer and runs on two representatives (slow).
Inductor's code generation is left out: slow on CPU, and the interpreter's kernels are opaque
custom ops to it anyway.
"""

from __future__ import annotations

import os

import pytest
import torch

from attnres_search.kernels import runtime
from attnres_search.kernels.backend import use_backend
from attnres_search.model.config import ModelConfig
from attnres_search.model.decoder import AttnResLM
from attnres_search.residual import PRESETS, preset

DEVICE = "cuda" if torch.cuda.is_available() else "cpu"
KERNEL_OK = runtime.unavailable_reason(torch.device(DEVICE)) is None


def tiny_model(name: str) -> AttnResLM:
    """The smallest model the preset accepts: 2 transformer blocks unless its block size
    needs more sublayers."""
    for n_layers in (2, 4, 8, 16):
        try:
            cfg = ModelConfig(vocab_size=32, n_layers=n_layers, d_model=16, n_heads=2, seq_len=8, residual=preset(name))
        except ValueError:
            continue
        torch.manual_seed(0)
        model = AttnResLM(cfg).to(DEVICE)
        with torch.no_grad():  # non-trivial mixing weights (zero-init queries are uniform)
            for pname, p in model.named_parameters():
                if pname.startswith("residual."):
                    p.add_(0.1 * torch.randn_like(p))
        return model
    raise AssertionError(f"no small model accepts preset {name}")


def takes_kernel(name: str) -> bool:
    """Whether the preset's depth-attention calls the fused kernel (learned query, mixing
    by the query): the others never reach a kernel, so their kernel path is their reference path."""
    cfg = preset(name)
    return (
        cfg.kind in ("full", "block")
        and getattr(cfg, "mixing", "input_dependent") == "input_dependent"
        and getattr(cfg, "query", "learned") == "learned"
    )


def loss_and_grads(model: torch.nn.Module, idx: torch.Tensor) -> tuple[torch.Tensor, list[torch.Tensor]]:
    logits = model(idx)
    loss = torch.nn.functional.cross_entropy(logits.flatten(0, 1).float(), idx.roll(-1, 1).flatten())
    params = [p for p in model.parameters() if p.requires_grad]
    return loss.detach(), list(torch.autograd.grad(loss, params, allow_unused=True))


def check_compiles(name: str, backend: str, dynamic: bool, compiler: str = "eager") -> None:
    model = tiny_model(name)
    idx = torch.randint(0, 32, (2, 8), device=DEVICE, generator=torch.Generator(DEVICE).manual_seed(1))
    torch._dynamo.reset()
    compiled = torch.compile(model, backend=compiler, fullgraph=True, dynamic=dynamic)
    with use_backend(backend):  # type: ignore[arg-type]
        want_loss, want_grads = loss_and_grads(model, idx)
        got_loss, got_grads = loss_and_grads(compiled, idx)
        if dynamic:  # a second batch size runs the same dynamic graph
            loss_and_grads(compiled, idx[:1])
    torch.testing.assert_close(got_loss, want_loss, rtol=1e-5, atol=1e-6)
    for got, want in zip(got_grads, want_grads):
        if want is None:
            assert got is None
        else:
            torch.testing.assert_close(got, want, rtol=1e-4, atol=1e-6)


ALL_TRACES = os.environ.get("ATTNRES_TEST_ALL_COMPILES") == "1"
"""The full matrix (static shapes, large block layouts, AOTAutograd) takes ~15 minutes on a
busy 2-core machine, so ``make test`` runs the default set and the rest runs with
``ATTNRES_TEST_ALL_COMPILES=1`` (they are also marked slow)."""
slow_trace = [
    pytest.mark.slow,
    pytest.mark.skipif(not ALL_TRACES, reason="full compile matrix: set ATTNRES_TEST_ALL_COMPILES=1"),
]

KERNEL_FAST = {"block-s2", "full-sigmoid"}
"""Kernel-path presets traced in the default run (one block and one full layout, both score
functions); the other kernel-path traces go through the same op and are in the slow set."""


def _needs_big_model(name: str) -> bool:
    """Presets whose block layout needs more than 2 transformer blocks (slower to trace, same
    code path as block-s2/block-s4)."""
    cfg = preset(name)
    return (getattr(cfg, "block_size", None) or 0) > 4 or getattr(cfg, "num_blocks", None) is not None


def _params(backend: str) -> list:  # type: ignore[type-arg]
    """Every preset (that reaches the kernel, for the kernel path) with static and dynamic
    shapes. The default run traces the dynamic shapes (the stricter trace: symbolic sizes
    reach the fake impl) of the 2-block presets on the reference path and of KERNEL_FAST on
    the kernel path; the rest are marked slow (5 to 50 s each on a busy 2-core machine)."""
    out = []
    for name in PRESETS:
        if backend == "triton" and not takes_kernel(name):
            continue
        for dynamic in (True, False):
            fast = dynamic and (name in KERNEL_FAST if backend == "triton" else not _needs_big_model(name))
            marks = [] if fast else slow_trace
            out.append(pytest.param(name, dynamic, id=f"{name}-{'dynamic' if dynamic else 'static'}", marks=marks))
    return out


needs_kernel = pytest.mark.skipif(
    not KERNEL_OK, reason=f"the kernels cannot run here: {runtime.unavailable_reason(torch.device(DEVICE))}"
)


@pytest.mark.parametrize(("name", "dynamic"), _params("reference"))
def test_reference_path_compiles(name: str, dynamic: bool) -> None:
    check_compiles(name, "reference", dynamic)


@needs_kernel
@pytest.mark.parametrize(("name", "dynamic"), _params("triton"))
def test_kernel_path_compiles(name: str, dynamic: bool) -> None:
    check_compiles(name, "triton", dynamic)


@pytest.mark.parametrize(
    ("backend", "name", "dynamic"),
    [
        pytest.param("reference", "full", False, id="reference-full-static", marks=slow_trace),
        pytest.param("triton", "block-s2", True, id="kernel-block-s2-dynamic", marks=[needs_kernel, *slow_trace]),
    ],
)
def test_forward_and_backward_trace_with_aot_autograd(backend: str, name: str, dynamic: bool) -> None:
    check_compiles(name, backend, dynamic, compiler="aot_eager")
