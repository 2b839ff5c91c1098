"""The fused depth-attention kernel against the float64 reference: forward, every gradient,
the op registration (fake impl, autograd, torch.compile), on CUDA or, without a GPU, in
Triton's CPU interpreter with a handful of tokens."""

from __future__ import annotations

import pytest
import torch

# Without a GPU the kernels run in Triton's interpreter: tests/conftest.py sets
# TRITON_INTERPRET=1 before anything imports Triton.
triton = pytest.importorskip("triton")
from attnres_search.kernels import fused as K  # noqa: E402
from attnres_search.kernels.triton_base import INTERPRETED  # noqa: E402
from attnres_search.kernels import runtime  # noqa: E402
from attnres_search.kernels.reference import depth_attention  # noqa: E402

DEVICE = "cuda" if torch.cuda.is_available() else "cpu"
if DEVICE == "cpu" and not INTERPRETED:
    pytest.skip("no GPU and TRITON_INTERPRET was not 1 when Triton was imported", allow_module_level=True)
TOKENS = (2, 5)  # 10 tokens: several programs and a masked tail in the interpreter's 4-token tiles
TOL = {torch.float32: 1e-5, torch.bfloat16: 1e-2, torch.float16: 1e-2}


@pytest.fixture(autouse=True)
def poison_outputs(monkeypatch: pytest.MonkeyPatch) -> None:
    """Every kernel output starts as NaN, so an element the kernel fails to write fails."""

    def nan_empty(shape: tuple[int, ...], *, device: torch.device, dtype: torch.dtype) -> torch.Tensor:
        return torch.full(shape, float("nan"), device=device, dtype=dtype)

    monkeypatch.setattr(runtime, "empty", nan_empty)


def make_inputs(
    n_sources: int, d: int, *, partial: bool, key_norm: bool, dtype: torch.dtype = torch.float32, seed: int
) -> tuple[torch.Tensor, torch.Tensor | None, torch.Tensor, torch.Tensor | None]:
    """Sources of unequal scale (so the key norm matters), a random non-zero query whose
    logits spread over a few units, and a gain away from 1."""
    g = torch.Generator().manual_seed(seed)
    scale = 0.5 + torch.rand(n_sources, 1, 1, 1, generator=g) * 2
    sources = torch.randn(n_sources, *TOKENS, d, generator=g) * scale
    query = torch.randn(d, generator=g) * 2 / d**0.5
    gain = 1 + 0.3 * torch.randn(d, generator=g) if key_norm else None
    sources = sources.to(DEVICE, dtype)
    blocks, part = (sources[:-1], sources[-1]) if partial else (sources, None)
    return blocks.contiguous(), part, query.to(DEVICE), None if gain is None else gain.to(DEVICE)


def rel_err(got: torch.Tensor, ref: torch.Tensor, floor: float = 1e-30) -> float:
    """``|got - ref| / |ref|`` in the Frobenius norm (``floor`` stands in for a zero ``|ref|``)."""
    assert not got.isnan().any(), "NaN in the kernel's result: an element was never written"
    assert got.shape == ref.shape
    return (got.double() - ref.double()).norm().item() / max(ref.double().norm().item(), floor)


def check_against_reference(
    blocks: torch.Tensor,
    partial: torch.Tensor | None,
    query: torch.Tensor,
    gain: torch.Tensor | None,
    *,
    score: str,
    heads: int = 1,
    tol: float,
) -> None:
    """Forward and the gradients of every input agree with the float64 reference."""
    leaves = [t.detach().requires_grad_() for t in (blocks, partial, query, gain) if t is not None]
    b, rest = leaves[0], leaves[1:]
    p = rest.pop(0) if partial is not None else None
    q = rest.pop(0)
    gn = rest.pop(0) if gain is not None else None
    out = K.fused_depth_attention(b, p, q, gn, score=score, heads=heads)
    grad_out = torch.randn_like(out)
    grads = torch.autograd.grad(out, leaves, grad_out)

    sources = blocks if partial is None else torch.cat([blocks, partial.unsqueeze(0)])
    ref_leaves = [t.detach().double().requires_grad_() for t in (sources, query, gain) if t is not None]
    ref = depth_attention(*ref_leaves[:2], ref_leaves[2] if gain is not None else None, score=score, heads=heads)
    ref_grads = torch.autograd.grad(ref, ref_leaves, grad_out.double())

    assert out.dtype == blocks.dtype and out.shape == blocks.shape[1:]
    assert rel_err(out, ref) < tol, "forward"
    got_sources = grads[0] if partial is None else torch.cat([grads[0], grads[1].unsqueeze(0)])
    assert rel_err(got_sources, ref_grads[0]) < tol, "d sources"
    k = 1 if partial is None else 2
    # With one source under softmax the weight is constantly 1 and the reference gradients of
    # query and gain are exactly zero: measure the kernel's against |dL/dout| max|V| instead.
    floor = (grad_out.double().norm() * sources.abs().max()).item()
    assert rel_err(grads[k], ref_grads[1], floor) < tol, "d query"
    if gain is not None:
        assert rel_err(grads[k + 1], ref_grads[2], floor) < tol, "d gain"


@pytest.mark.parametrize("partial", [True, False], ids=["partial", "blocks-only"])
@pytest.mark.parametrize("key_norm", [True, False], ids=["rmsnorm", "no-norm"])
@pytest.mark.parametrize("score", ["softmax", "sigmoid"])
@pytest.mark.parametrize("d", [64, 96, 200])
@pytest.mark.parametrize("n_sources", [1, 2, 3, 8, 17])
def test_fp32_matches_reference(n_sources: int, d: int, score: str, key_norm: bool, partial: bool) -> None:
    seed = hash((n_sources, d, score, key_norm, partial)) % 2**31
    blocks, part, query, gain = make_inputs(n_sources, d, partial=partial, key_norm=key_norm, seed=seed)
    check_against_reference(blocks, part, query, gain, score=score, tol=TOL[torch.float32])


@pytest.mark.parametrize("dtype", [torch.bfloat16, torch.float16], ids=["bf16", "fp16"])
@pytest.mark.parametrize("score", ["softmax", "sigmoid"])
@pytest.mark.parametrize(("n_sources", "d"), [(3, 96), (17, 200)])
def test_half_precision_matches_reference(n_sources: int, d: int, score: str, dtype: torch.dtype) -> None:
    blocks, part, query, gain = make_inputs(n_sources, d, partial=True, key_norm=True, dtype=dtype, seed=n_sources + d)
    check_against_reference(blocks, part, query, gain, score=score, tol=TOL[dtype])


@pytest.mark.parametrize("n_sources", [2, 33])
def test_many_sources_and_heads(n_sources: int) -> None:
    blocks, part, query, gain = make_inputs(n_sources, 128, partial=True, key_norm=True, seed=n_sources)
    check_against_reference(blocks, part, query, gain, score="softmax", heads=4, tol=1e-5)


def test_mixed_dtypes_promote_like_the_reference() -> None:
    """Under autocast the embedding block is fp32 while partial sums are bf16."""
    blocks, part, query, gain = make_inputs(4, 64, partial=True, key_norm=True, seed=7)
    out = K.fused_depth_attention(blocks, part.to(torch.bfloat16), query, gain)
    ref = depth_attention(torch.cat([blocks, part.to(torch.bfloat16).float().unsqueeze(0)]).double(), query.double(), gain.double())
    assert out.dtype == torch.float32
    assert rel_err(out, ref) < 1e-5


@pytest.mark.parametrize("score", ["softmax", "sigmoid"])
def test_weights_match_reference(score: str) -> None:
    blocks, part, query, gain = make_inputs(5, 96, partial=True, key_norm=True, seed=3)
    out, weights = K.fused_depth_attention(blocks, part, query, gain, score=score, heads=2, return_weights=True)
    sources = torch.cat([blocks, part.unsqueeze(0)]).double()
    ref_out, ref_w = depth_attention(sources, query.double(), gain.double(), score=score, heads=2, return_weights=True)
    assert weights.shape == ref_w.shape
    assert rel_err(weights, ref_w) < 1e-5
    assert rel_err(out, ref_out) < 1e-5


def test_backward_is_deterministic() -> None:
    blocks, part, query, gain = make_inputs(6, 200, partial=True, key_norm=True, seed=11)
    leaves = [t.requires_grad_() for t in (blocks, part, query, gain)]
    grad_out = torch.randn(*TOKENS, 200, device=DEVICE)
    first, second = (
        torch.autograd.grad(K.fused_depth_attention(*leaves), leaves, grad_out) for _ in range(2)
    )
    for a, b in zip(first, second):
        assert torch.equal(a, b)


def test_rejects_per_token_query() -> None:
    blocks, part, _, gain = make_inputs(3, 64, partial=True, key_norm=True, seed=1)
    with pytest.raises(ValueError, match="learned query"):
        K.fused_depth_attention(blocks, part, torch.randn(*TOKENS, 64, device=DEVICE), gain)


def test_opcheck_registration() -> None:
    """Schema, fake impl and autograd registration agree with the real kernel."""
    blocks, part, query, gain = make_inputs(3, 64, partial=True, key_norm=True, seed=5)
    args = (blocks.requires_grad_(), part.requires_grad_(), query.requires_grad_(), gain.requires_grad_())
    torch.library.opcheck(
        K.depth_attention_fwd,
        (*args, "softmax", 1, 1e-6, False),
        test_utils=("test_schema", "test_faketensor", "test_autograd_registration"),
    )


def test_torch_compile_traces_the_op() -> None:
    """A compiled function that uses the op, forward and backward, in one graph. On the CPU
    the interpreter's kernels cannot be code-generated by Inductor, so the graph is run by the
    ``aot_eager`` backend, which still traces through the fake impl and autograd formula."""
    blocks, part, query, gain = make_inputs(4, 96, partial=True, key_norm=True, seed=9)
    leaves = [t.requires_grad_() for t in (blocks, part, query, gain)]

    def loss_fn(b: torch.Tensor, p: torch.Tensor, q: torch.Tensor, g: torch.Tensor) -> torch.Tensor:
        return (K.fused_depth_attention(b, p, q, g) * torch.linspace(-1, 1, 96, device=b.device)).sum()

    backend = "inductor" if DEVICE == "cuda" else "aot_eager"
    compiled = torch.compile(loss_fn, backend=backend, fullgraph=True)
    got = torch.autograd.grad(compiled(*leaves), leaves)
    want = torch.autograd.grad(loss_fn(*leaves), leaves)
    for a, b in zip(got, want):
        assert torch.allclose(a, b, rtol=1e-5, atol=1e-6)


def test_eager_calls_skip_the_custom_op(monkeypatch: pytest.MonkeyPatch) -> None:
    """Eager forward and backward run the kernels through the plain autograd.Function: the
    dispatcher-wrapped custom ops (their per-call host cost) are for torch.compile only."""

    def refuse(*args: object, **kwargs: object) -> None:
        raise AssertionError("the custom op was called on the eager path")

    blocks, part, query, gain = make_inputs(3, 64, partial=True, key_norm=True, seed=13)
    want = K.fused_depth_attention(blocks, part, query, gain)
    monkeypatch.setattr(K, "depth_attention_fwd", refuse)
    monkeypatch.setattr(K, "depth_attention_bwd", refuse)
    leaves = [t.requires_grad_() for t in (blocks, part, query, gain)]
    out = K.fused_depth_attention(*leaves)
    torch.autograd.grad(out.sum(), leaves)
    assert torch.equal(out, want)
