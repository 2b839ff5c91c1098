"""Two-phase inference (paper Algorithm 1) equals the one-shot depth-attention, layer by
layer, for several block layouts, in PyTorch and in Triton (the CPU interpreter without a GPU;
tests/conftest.py switches it on). Training (gradients) is in test_kernel_two_phase_training.py."""

from __future__ import annotations

import pytest
import torch

import dataclasses

from attnres_search.kernels import runtime
from attnres_search.kernels.backend import use_backend
from attnres_search.kernels.reference import depth_attention
from attnres_search.kernels.two_phase import phase1, phase2, two_phase_block

DEVICE = "cuda" if torch.cuda.is_available() else "cpu"
TOKENS = (2, 3)
TRITON_OK = runtime.unavailable_reason(torch.device(DEVICE)) is None
needs_triton = pytest.mark.skipif(not TRITON_OK, reason="Triton cannot run here (see runtime.unavailable_reason)")
BACKENDS = [pytest.param("reference", id="torch"), pytest.param("triton", id="triton", marks=needs_triton)]


@pytest.fixture(autouse=True)
def poison_outputs(monkeypatch: pytest.MonkeyPatch) -> None:
    """Kernel outputs start as NaN, so an element a kernel fails to write fails the test."""

    def nan_empty(shape: tuple[int, ...], *, device: torch.device, dtype: torch.dtype) -> torch.Tensor:
        return torch.full(shape, float("nan"), device=device, dtype=dtype)

    monkeypatch.setattr(runtime, "empty", nan_empty)


def make_block(n: int, s: int, d: int, *, key_norm: bool, dtype: torch.dtype, seed: int):  # type: ignore[no-untyped-def]
    """Cached blocks, S layers' queries/gains, and S small nonlinear layers."""
    g = torch.Generator().manual_seed(seed)
    blocks = (torch.randn(n, *TOKENS, d, generator=g) * (0.5 + torch.rand(n, 1, 1, 1, generator=g))).to(DEVICE, dtype)
    queries = (torch.randn(s, d, generator=g) * 2 / d**0.5).to(DEVICE)
    gains = (1 + 0.3 * torch.randn(s, d, generator=g)).to(DEVICE) if key_norm else None
    weights = [(torch.randn(d, d, generator=g) / d**0.5).to(DEVICE) for _ in range(s)]
    layers = [lambda h, w=w: torch.tanh(h.float() @ w).to(h.dtype) for w in weights]
    return blocks, queries, gains, layers


@pytest.mark.parametrize("backend", BACKENDS)
@pytest.mark.parametrize("score", ["softmax", "sigmoid"])
@pytest.mark.parametrize(
    ("n", "s", "d", "heads", "key_norm"),
    [(1, 1, 64, 1, True), (1, 4, 96, 1, True), (3, 2, 200, 1, False), (4, 3, 64, 2, True), (8, 5, 96, 1, True)],
)
def test_two_phase_equals_one_shot(
    n: int, s: int, d: int, heads: int, key_norm: bool, score: str, backend: str
) -> None:
    blocks, queries, gains, layers = make_block(n, s, d, key_norm=key_norm, dtype=torch.float32, seed=n * 100 + s)
    outputs: list[torch.Tensor] = []

    def recording(i: int):  # type: ignore[no-untyped-def]
        def run(h: torch.Tensor) -> torch.Tensor:
            outputs.append(layers[i](h))
            return outputs[-1]

        return run

    with torch.no_grad(), use_backend(backend):  # type: ignore[arg-type]
        inputs, block_sum = two_phase_block(
            blocks, queries, gains, [recording(i) for i in range(s)], score=score, heads=heads
        )
    # One shot, layer by layer, over the same partial sums the two-phase walk produced.
    partial = None
    for i in range(s):
        sources = blocks if partial is None else torch.cat([blocks, partial.unsqueeze(0)])
        gain = None if gains is None else gains[i].double()
        want = depth_attention(sources.double(), queries[i].double(), gain, score=score, heads=heads)
        got = inputs[i]
        assert got.dtype == blocks.dtype and not got.isnan().any()
        assert (got.double() - want).norm() / want.norm() < 1e-5, f"layer {i}"
        partial = outputs[i] if partial is None else partial + outputs[i]
    assert partial is not None and torch.equal(block_sum, partial)


@needs_triton
@pytest.mark.parametrize("score", ["softmax", "sigmoid"])
def test_triton_phases_match_torch_phases_bf16(score: str) -> None:
    blocks, queries, gains, _ = make_block(5, 3, 96, key_norm=True, dtype=torch.bfloat16, seed=4)
    with torch.no_grad():
        with use_backend("triton"):
            p1_t = phase1(blocks, queries, gains, score=score)
        with use_backend("reference"):
            p1_r = phase1(blocks, queries, gains, score=score)
        assert p1_t.kernel and not p1_r.kernel
        mix_t, lse_t, mix_r, lse_r = p1_t.out, p1_t.lse, p1_r.out, p1_r.lse
        assert (mix_t - mix_r).norm() / mix_r.norm() < 1e-5
        assert (lse_t is None) == (lse_r is None) == (score == "sigmoid")
        if lse_t is not None:
            assert torch.allclose(lse_t, lse_r, rtol=1e-5, atol=1e-5)
        partial = blocks[0] * 0.5
        # Phase 2 alone, both paths from the same phase-1 result.
        with use_backend("triton"):
            got = phase2(dataclasses.replace(p1_r, kernel=True), 1, partial, queries[1], gains[1])
        with use_backend("reference"):
            want = phase2(p1_r, 1, partial, queries[1], gains[1])
    assert got.dtype == torch.bfloat16
    assert (got.float() - want.float()).norm() / want.float().norm() < 1e-2


def test_phase1_reads_each_block_once_for_all_queries() -> None:
    """Phase 1 returns one mixture and one log-sum-exp per query: shapes and the lse value."""
    blocks, queries, gains, _ = make_block(3, 4, 64, key_norm=True, dtype=torch.float32, seed=2)
    with use_backend("reference"):
        p1 = phase1(blocks, queries, gains, heads=2)
    mix, lse = p1.out, p1.lse
    assert mix.shape == (4, *TOKENS, 64) and lse is not None and lse.shape == (4, *TOKENS, 2)
    from attnres_search.kernels.reference import depth_logits

    logits = depth_logits(blocks, queries[2], gains[2], heads=2)
    assert torch.allclose(lse[2], torch.logsumexp(logits, 0), atol=1e-6)


def test_forced_triton_explains_what_the_kernels_cannot_take() -> None:
    """The two-phase kernels answer to the same backend rule as the fused one: forced, a call
    they cannot take is an error with the reason (float64 here), never a silent fallback."""
    blocks, queries, gains, _ = make_block(2, 2, 64, key_norm=True, dtype=torch.float32, seed=1)
    with use_backend("triton"), pytest.raises(RuntimeError, match="two-phase kernels cannot run"):
        phase1(blocks.double(), queries, gains)


def test_bad_layouts_are_rejected() -> None:
    blocks, queries, gains, layers = make_block(2, 2, 64, key_norm=True, dtype=torch.float32, seed=1)
    with pytest.raises(ValueError, match="queries"):
        phase1(blocks, queries[0], gains)
    with pytest.raises(ValueError, match="at least one cached block"):
        phase1(blocks[:0], queries, gains)
    with pytest.raises(ValueError, match="layers"):
        two_phase_block(blocks, queries, gains, layers[:1])
