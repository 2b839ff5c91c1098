"""The two-phase schedule for training: outputs and every gradient (completed blocks, partial
sums, queries, key-norm gains) equal the one-shot reference over the concatenated sources.

PyTorch path in float64 to ~1e-12; Triton path (CPU interpreter without a GPU,
tests/conftest.py switches it on) in float32 against the float64 reference. Partial sums are
independent leaves here, one per layer, so the gradient of each is checked on its own.
"""

from __future__ import annotations

import pytest
import torch

from attnres_search.kernels import runtime
from attnres_search.kernels.backend import use_backend
from attnres_search.kernels.reference import depth_attention
from attnres_search.kernels.two_phase import phase1, phase2, two_phase_supported

DEVICE = "cuda" if torch.cuda.is_available() else "cpu"
TRITON_OK = runtime.unavailable_reason(torch.device(DEVICE)) is None
needs_triton = pytest.mark.skipif(not TRITON_OK, reason="Triton cannot run here (see runtime.unavailable_reason)")


@pytest.fixture(autouse=True)
def poison_outputs(monkeypatch: pytest.MonkeyPatch) -> None:
    """Kernel outputs start as NaN, so an element a kernel fails to write fails the test."""

    def nan_empty(shape: tuple[int, ...], *, device: torch.device, dtype: torch.dtype) -> torch.Tensor:
        return torch.full(shape, float("nan"), device=device, dtype=dtype)

    monkeypatch.setattr(runtime, "empty", nan_empty)


def make_case(n: int, s: int, d: int, tokens: tuple[int, ...], *, key_norm: bool, seed: int):  # type: ignore[no-untyped-def]
    """float64 leaves: blocks of unequal scale, S queries and gains, S - 1 partial sums, and
    an upstream gradient per layer."""
    g = torch.Generator().manual_seed(seed)
    blocks = torch.randn(n, *tokens, d, generator=g, dtype=torch.float64) * (
        0.5 + 2 * torch.rand(n, *(1,) * (len(tokens) + 1), generator=g, dtype=torch.float64)
    )
    queries = torch.randn(s, d, generator=g, dtype=torch.float64) * 2 / d**0.5
    gains = 1 + 0.3 * torch.randn(s, d, generator=g, dtype=torch.float64) if key_norm else None
    partials = [torch.randn(*tokens, d, generator=g, dtype=torch.float64) * 1.5 for _ in range(s - 1)]
    upstream = [torch.randn(*tokens, d, generator=g, dtype=torch.float64) for _ in range(s)]
    return blocks, queries, gains, partials, upstream


def run_both(blocks, queries, gains, partials, upstream, *, score: str, heads: int, dtype: torch.dtype):  # type: ignore[no-untyped-def]
    """(two-phase outputs, grads) in ``dtype`` and (one-shot outputs, grads) in float64."""

    def leaves(dt: torch.dtype) -> list[torch.Tensor]:
        """Sources in ``dt``; queries and gains (parameters) in float32 unless ``dt`` is float64."""
        param_dt = torch.float64 if dt == torch.float64 else torch.float32
        sources = [blocks.to(DEVICE, dt)] + [p.to(DEVICE, dt) for p in partials]
        params = [queries.to(DEVICE, param_dt)] + ([gains.to(DEVICE, param_dt)] if gains is not None else [])
        return [t.detach().requires_grad_() for t in (sources[:1] + params + sources[1:])]

    def split(ls: list[torch.Tensor]):  # type: ignore[no-untyped-def]
        b, q = ls[0], ls[1]
        gn = ls[2] if gains is not None else None
        ps = ls[3:] if gains is not None else ls[2:]
        return b, q, gn, ps

    got_leaves = leaves(dtype)
    b, q, gn, ps = split(got_leaves)
    p1 = phase1(b, q, gn, score=score, heads=heads)  # type: ignore[arg-type]
    got = [phase2(p1, j, None if j == 0 else ps[j - 1], q[j], None if gn is None else gn[j]) for j in range(q.shape[0])]
    loss = sum((h.double() * u.to(DEVICE)).sum() for h, u in zip(got, upstream))
    got_grads = torch.autograd.grad(loss, got_leaves)

    ref_leaves = leaves(torch.float64)
    b, q, gn, ps = split(ref_leaves)
    want = [
        depth_attention(b, q[j], None if gn is None else gn[j], partial=None if j == 0 else ps[j - 1], score=score, heads=heads)  # type: ignore[arg-type]
        for j in range(q.shape[0])
    ]
    loss = sum((h * u.to(DEVICE)).sum() for h, u in zip(want, upstream))
    want_grads = torch.autograd.grad(loss, ref_leaves)
    return p1, got, got_grads, want, want_grads


def rel_err(got: torch.Tensor, ref: torch.Tensor, floor: float) -> float:
    assert got.shape == ref.shape
    assert not got.isnan().any(), "NaN: an element was never written"
    return (got.double() - ref).norm().item() / max(ref.norm().item(), floor)


def check(got, got_grads, want, want_grads, upstream, *, tol: float) -> None:  # type: ignore[no-untyped-def]
    for j, (h, r) in enumerate(zip(got, want)):
        assert rel_err(h, r, 1e-30) < tol, f"output of layer {j}"
    # Under softmax with one source a layer's weight is constantly 1, so some gradients are
    # exactly zero: measure against |upstream| x |sources| instead of a zero norm.
    floor = max(u.norm().item() for u in upstream) * 1e-3
    assert len(got_grads) == len(want_grads)
    for k, (g, r) in enumerate(zip(got_grads, want_grads)):
        assert rel_err(g, r, floor) < tol, f"gradient of leaf {k} (blocks, queries, [gains,] partials)"


@pytest.mark.parametrize("key_norm", [True, False], ids=["rmsnorm", "no-norm"])
@pytest.mark.parametrize("score", ["softmax", "sigmoid"])
@pytest.mark.parametrize("n", [1, 2, 5, 9])
@pytest.mark.parametrize("s", [1, 2, 3, 4, 8])
def test_reference_path_is_exact_in_float64(s: int, n: int, score: str, key_norm: bool) -> None:
    case = make_case(n, s, 24, (2, 3), key_norm=key_norm, seed=1000 * s + 10 * n + key_norm)
    with use_backend("reference"):
        p1, got, gg, want, wg = run_both(*case, score=score, heads=1, dtype=torch.float64)
    assert not p1.kernel and p1.out.dtype == torch.float64
    assert all(h.dtype == torch.float64 for h in got)
    check(got, gg, want, wg, case[4], tol=1e-12)


@pytest.mark.parametrize("score", ["softmax", "sigmoid"])
@pytest.mark.parametrize(("n", "s"), [(3, 4), (9, 2)])
def test_reference_path_multihead_is_exact(n: int, s: int, score: str) -> None:
    case = make_case(n, s, 24, (2, 3), key_norm=True, seed=7 * n + s)
    with use_backend("reference"):
        _, got, gg, want, wg = run_both(*case, score=score, heads=4, dtype=torch.float64)
    check(got, gg, want, wg, case[4], tol=1e-12)


# Interpreter shapes stay tiny (3 tokens, width 12: a masked channel tail) so these stay fast.
TRITON_CASES = [(1, 1), (2, 9), (3, 4), (4, 2), (8, 3)]  # (S, N)


@needs_triton
@pytest.mark.parametrize("key_norm", [True, False], ids=["rmsnorm", "no-norm"])
@pytest.mark.parametrize("score", ["softmax", "sigmoid"])
@pytest.mark.parametrize(("s", "n"), TRITON_CASES)
def test_triton_path_matches_float64_reference(s: int, n: int, score: str, key_norm: bool) -> None:
    case = make_case(n, s, 12, (3,), key_norm=key_norm, seed=100 * s + n + 7 * key_norm)
    with use_backend("triton"):
        p1, got, gg, want, wg = run_both(*case, score=score, heads=1, dtype=torch.float32)
    assert p1.kernel and p1.out.dtype == torch.float32
    check(got, gg, want, wg, case[4], tol=2e-5)


@needs_triton
@pytest.mark.parametrize("score", ["softmax", "sigmoid"])
def test_triton_path_multihead(score: str) -> None:
    case = make_case(3, 3, 16, (2, 3), key_norm=True, seed=5)
    with use_backend("triton"):
        p1, got, gg, want, wg = run_both(*case, score=score, heads=2, dtype=torch.float32)
    assert p1.kernel
    check(got, gg, want, wg, case[4], tol=2e-5)


@needs_triton
def test_triton_backward_is_deterministic() -> None:
    blocks, queries, gains, partials, _ = make_case(4, 3, 12, (5,), key_norm=True, seed=3)
    leaves = [t.float().to(DEVICE).requires_grad_() for t in (blocks, queries, gains, *partials)]

    def grads() -> tuple[torch.Tensor, ...]:
        b, q, gn, *ps = leaves
        with use_backend("triton"):
            p1 = phase1(b, q, gn)
            hs = [phase2(p1, j, None if j == 0 else ps[j - 1], q[j], gn[j]) for j in range(3)]
        return torch.autograd.grad(sum(h.square().sum() for h in hs), leaves)

    for a, b in zip(grads(), grads()):
        assert torch.equal(a, b)


def test_first_layer_takes_phase1_output_in_the_blocks_dtype() -> None:
    blocks, queries, gains, _, _ = make_case(3, 2, 8, (4,), key_norm=True, seed=2)
    with use_backend("reference"):
        p1 = phase1(blocks.float(), queries.float(), gains.float())
    h0 = phase2(p1, 0, None, queries[0].float(), gains[0].float())
    assert h0.dtype == torch.float32 and torch.equal(h0, p1.out[0])
    with pytest.raises(ValueError, match="not one of phase 1's 2 layers"):
        phase2(p1, 2, None, queries[0].float(), gains[0].float())


def test_two_phase_supported() -> None:
    assert two_phase_supported(1, None) and two_phase_supported(16, None)
    assert not two_phase_supported(1, 8)


def test_phase1_reads_the_blocks_once(monkeypatch: pytest.MonkeyPatch) -> None:
    """On the PyTorch path phase 1 computes one key RMS per block for all S queries: the
    inverse-RMS op runs once, on ``[N, *tokens, heads]``, not once per query."""
    blocks, queries, gains, _, _ = make_case(5, 4, 8, (2, 3), key_norm=True, seed=9)
    calls: list[tuple[int, ...]] = []
    real = torch.rsqrt

    def spy(x: torch.Tensor) -> torch.Tensor:
        calls.append(tuple(x.shape))
        return real(x)

    monkeypatch.setattr(torch, "rsqrt", spy)
    with use_backend("reference"):
        phase1(blocks, queries, gains)
    assert calls == [(5, 2, 3, 1)]
