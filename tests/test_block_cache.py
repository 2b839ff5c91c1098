"""The block cache (kernels/block_cache.py): completed blocks in one buffer and the two-phase
schedule over it with hand-written backwards, the PyTorch eager path of AttnRes training.

Outputs and every gradient (each block, partial sums, queries, gains) equal the one-shot
reference in float64; autograd's numerical gradcheck agrees; models built from every
learned-query preset give the same logits and parameter gradients as the one-shot path;
nothing is stacked again while blocks complete.
"""

from __future__ import annotations

import pytest
import torch

from attnres_search.kernels.backend import use_backend
from attnres_search.kernels.block_cache import BlockCache
from attnres_search.kernels.reference import depth_attention
from attnres_search.model.config import ModelConfig, preset
from attnres_search.model.decoder import AttnResLM
from attnres_search.residual.attnres import AttnResConfig
from test_kernel_two_phase_training import check, make_case


def cached_layers(blocks, queries, gains, partials, *, score: str, heads: int):  # type: ignore[no-untyped-def]
    """Every layer input of one block by the cached schedule."""
    cache = BlockCache(blocks[0], len(blocks) + 1, queries, gains, score=score, heads=heads)  # type: ignore[arg-type]
    for b in blocks[1:]:
        cache.append(b)
    cache.open_block(0, queries.shape[0])
    return [cache.layer_input(j, None if j == 0 else partials[j - 1]) for j in range(queries.shape[0])]


def run_both(case, *, score: str, heads: int):  # type: ignore[no-untyped-def]
    blocks, queries, gains, partials, upstream = case

    def leaves() -> list[torch.Tensor]:
        ts = list(blocks.unbind(0)) + [queries] + ([gains] if gains is not None else []) + partials
        return [t.detach().clone().requires_grad_() for t in ts]

    n = blocks.shape[0]

    def split(ls):  # type: ignore[no-untyped-def]
        q = ls[n]
        gn = ls[n + 1] if gains is not None else None
        return ls[:n], q, gn, ls[n + 1 + (gains is not None):]

    got_leaves = leaves()
    b, q, gn, ps = split(got_leaves)
    got = cached_layers(b, q, gn, ps, score=score, heads=heads)
    got_grads = torch.autograd.grad(sum((h * u).sum() for h, u in zip(got, upstream)), got_leaves)

    ref_leaves = leaves()
    b, q, gn, ps = split(ref_leaves)
    stacked = torch.stack(b)
    want = [depth_attention(stacked, q[j], None if gn is None else gn[j], partial=None if j == 0 else ps[j - 1],
                            score=score, heads=heads) for j in range(q.shape[0])]  # type: ignore[arg-type]
    want_grads = torch.autograd.grad(sum((h * u).sum() for h, u in zip(want, upstream)), ref_leaves)
    return got, got_grads, want, want_grads


@pytest.mark.parametrize("key_norm", [True, False], ids=["rmsnorm", "no-norm"])
@pytest.mark.parametrize("score", ["softmax", "sigmoid"])
@pytest.mark.parametrize("n", [1, 2, 5, 9])
@pytest.mark.parametrize("s", [1, 2, 3, 4, 8])
def test_cached_schedule_is_exact_in_float64(s: int, n: int, score: str, key_norm: bool) -> None:
    case = make_case(n, s, 24, (2, 3), key_norm=key_norm, seed=1000 * s + 10 * n + key_norm)
    got, gg, want, wg = run_both(case, score=score, heads=1)
    assert all(h.dtype == torch.float64 for h in got)
    check(got, gg, want, wg, case[4], tol=1e-12)


@pytest.mark.parametrize("score", ["softmax", "sigmoid"])
@pytest.mark.parametrize(("n", "s"), [(3, 4), (9, 2), (4, 1)])
def test_cached_schedule_multihead_is_exact(n: int, s: int, score: str) -> None:
    case = make_case(n, s, 24, (2, 3), key_norm=True, seed=7 * n + s)
    got, gg, want, wg = run_both(case, score=score, heads=4)
    check(got, gg, want, wg, case[4], tol=1e-12)


@pytest.mark.parametrize("score", ["softmax", "sigmoid"])
@pytest.mark.parametrize("heads", [1, 2])
def test_hand_written_backwards_pass_gradcheck(score: str, heads: int) -> None:
    blocks, queries, gains, partials, _ = make_case(3, 3, 4, (2,), key_norm=True, seed=11 + heads)
    inputs = [t.detach().clone().requires_grad_() for t in [*blocks.unbind(0), queries, gains, *partials]]

    def f(*ts: torch.Tensor) -> tuple[torch.Tensor, ...]:
        b, q, g, ps = ts[:3], ts[3], ts[4], ts[5:]
        return tuple(cached_layers(b, q, g, list(ps), score=score, heads=heads))

    assert torch.autograd.gradcheck(f, inputs, eps=1e-6, atol=1e-8)


def test_blocks_are_written_once_and_never_moved() -> None:
    """Each block lands in its own slot of one buffer (nothing moves when later blocks come),
    with its normalised logits under every point from its first reader on."""
    first = torch.randn(2, 3, 8, dtype=torch.float64)
    queries, gains = torch.randn(5, 8, dtype=torch.float64), 1 + torch.rand(5, 8, dtype=torch.float64)
    cache = BlockCache(first, 4, queries, gains, heads=2)
    buffer = cache.values.data_ptr()
    later = [torch.randn(2, 3, 8, dtype=torch.float64) for _ in range(3)]
    for k, b in enumerate(later, start=1):
        cache.append(b, first_reader=k)
        assert cache.values.data_ptr() == buffer
        for j, want in enumerate([first, *later[:k]]):
            assert torch.equal(cache.values[j].reshape(want.shape), want)
            heads = want.unflatten(-1, (2, 4)).reshape(6, 2, 4)
            z = torch.einsum("mhe,phe->mhp", heads, (queries * gains).view(5, 2, 4))
            z = z * heads.square().mean(-1).add(1e-6).rsqrt().unsqueeze(-1)
            torch.testing.assert_close(cache.logits.view(6, 2, 5, 4)[:, :, j:, j], z[:, :, j:], rtol=1e-14, atol=0)
    with pytest.raises(ValueError, match="capacity"):
        cache.append(first)
    with pytest.raises(ValueError, match="block 3 has no logits for point 2"):
        cache.open_block(2, 1)
    with pytest.raises(ValueError, match="point 0 is not in the open block"):
        cache.layer_input(0, None)
    with pytest.raises(ValueError, match="shape"):
        BlockCache(first, 2, queries, gains).append(torch.zeros(2, 8))
    with pytest.raises(ValueError, match="heads=3"):
        BlockCache(first, 2, queries, gains, heads=3)
    with pytest.raises(ValueError, match="points 3..5"):
        BlockCache(first, 2, queries, gains).open_block(3, 3)


def test_a_retained_graph_gives_the_same_gradients_twice() -> None:
    """Phase-1 backwards add mixture gradients into a shared buffer that each block's
    appending node consumes (and clears): a second backward through the same graph must
    not see the first one's sums."""
    blocks, queries, gains, partials, upstream = make_case(4, 2, 8, (3,), key_norm=True, seed=5)
    leaves = [t.detach().clone().requires_grad_() for t in [*blocks.unbind(0), queries, gains]]
    layers = cached_layers(leaves[:4], leaves[4], leaves[5], partials, score="softmax", heads=1)
    loss = sum((h * u).sum() for h, u in zip(layers, upstream))
    first = torch.autograd.grad(loss, leaves, retain_graph=True)
    second = torch.autograd.grad(loss, leaves)
    for a, b in zip(first, second):
        assert torch.equal(a, b)


def test_a_backward_from_some_layers_then_from_all_is_exact() -> None:
    """Two blocks of S = 2 over one cache. A backward from the first block's layers only
    leaves the second phase 1 unrun and its rows of the gradient buffers unwritten; block 0's
    gradient must count nothing from them, in that pass and in later passes through the
    same graph (from the second block only, then from every layer)."""
    g = torch.Generator().manual_seed(21)
    b0, b1, p1, p3 = (torch.randn(2, 3, 8, generator=g, dtype=torch.float64) for _ in range(4))
    queries = torch.randn(4, 8, generator=g, dtype=torch.float64)
    gains = 1 + 0.3 * torch.randn(4, 8, generator=g, dtype=torch.float64)
    upstream = [torch.randn(2, 3, 8, generator=g, dtype=torch.float64) for _ in range(4)]
    leaves = [t.clone().requires_grad_() for t in (b0, b1, queries, gains)]
    b0_, b1_, q, gn = leaves
    cache = BlockCache(b0_, 2, q, gn)
    cache.open_block(0, 2)
    layers = [cache.layer_input(0, None), cache.layer_input(1, p1)]
    cache.append(b1_, first_reader=2)
    cache.open_block(2, 2)
    layers += [cache.layer_input(2, None), cache.layer_input(3, p3)]
    ref = [depth_attention(b0_.unsqueeze(0), q[0], gn[0]), depth_attention(b0_.unsqueeze(0), q[1], gn[1], partial=p1),
           depth_attention(torch.stack([b0_, b1_]), q[2], gn[2]),
           depth_attention(torch.stack([b0_, b1_]), q[3], gn[3], partial=p3)]
    for chosen in ([0, 1], [2, 3], [1], [0, 1, 2, 3]):
        def loss(hs):  # type: ignore[no-untyped-def]
            return sum((hs[j] * upstream[j]).sum() for j in chosen)

        got = torch.autograd.grad(loss(layers), leaves, retain_graph=True, allow_unused=True)
        want = torch.autograd.grad(loss(ref), leaves, retain_graph=True, allow_unused=True)
        for k, (a, b) in enumerate(zip(got, want)):
            a = torch.zeros_like(leaves[k]) if a is None else a
            b = torch.zeros_like(leaves[k]) if b is None else b
            torch.testing.assert_close(a, b, rtol=1e-12, atol=1e-12, msg=f"layers {chosen}, leaf {k}")


LEARNED_QUERY_RULES = ["full", "block-s2", "block-s4", "block-s8", "full-sigmoid", "full-nokeynorm", "block-nokeynorm"]


def _model(residual, dtype: torch.dtype = torch.float64) -> AttnResLM:  # type: ignore[no-untyped-def]
    torch.manual_seed(0)
    model = AttnResLM(ModelConfig(vocab_size=64, n_layers=4, d_model=16, n_heads=2, seq_len=8, residual=residual))
    with torch.no_grad():  # away from the zero-query init, so mixing weights differ per source
        for p in model.residual.parameters():
            p.add_(0.3 * torch.randn_like(p))
    return model.to(dtype)


@pytest.mark.parametrize("name", [*LEARNED_QUERY_RULES, "heads2"])
def test_model_on_the_cache_equals_the_one_shot_path(name: str) -> None:
    residual = AttnResConfig(kind="block", block_size=2, heads=2) if name == "heads2" else preset(name)
    model = _model(residual)
    idx = torch.randint(0, 64, (2, 8))
    with use_backend("reference"):
        state = model.residual.begin(model.embed(idx))
        assert state.cache is not None  # the eager reference path takes the cache
        out = model(idx)
        grads = torch.autograd.grad(out.square().mean(), list(model.parameters()))
        ref = model(idx, record=True)  # diagnostics record the weights: the one-shot path
        ref_grads = torch.autograd.grad(ref.square().mean(), list(model.parameters()))
    torch.testing.assert_close(out, ref, rtol=1e-12, atol=1e-12)
    for g, r in zip(grads, ref_grads):
        torch.testing.assert_close(g, r, rtol=1e-10, atol=1e-12)


def test_frozen_embedding_and_residual_still_train_the_sublayers() -> None:
    """Only the later blocks need gradients (embedding and pseudo-queries frozen): the cache
    must still give the sublayers the one-shot path's gradients."""
    model = _model(preset("block-s2"))
    model.embed.requires_grad_(False)
    model.residual.requires_grad_(False)
    idx = torch.randint(0, 64, (2, 8))
    trainable = [p for p in model.parameters() if p.requires_grad]
    with use_backend("reference"):
        grads = torch.autograd.grad(model(idx).square().mean(), trainable)
        ref_grads = torch.autograd.grad(model(idx, record=True).square().mean(), trainable)
    for g, r in zip(grads, ref_grads):
        torch.testing.assert_close(g, r, rtol=1e-10, atol=1e-12)


def test_a_forward_stacks_no_blocks(monkeypatch: pytest.MonkeyPatch) -> None:
    """Issue 11 item 2: completed blocks go into the buffer; nothing is stacked again, for
    Full AttnRes (which stacked at every layer) and Block AttnRes alike."""
    calls: list[int] = []
    real_stack = torch.stack
    monkeypatch.setattr(torch, "stack", lambda *a, **k: calls.append(1) or real_stack(*a, **k))
    for name in ("full", "block-s2"):
        model = _model(preset(name), torch.float32)
        calls.clear()
        with use_backend("reference"):
            out = model(torch.randint(0, 64, (2, 8)))
        assert calls == [], name
        out.sum().backward()
    calls.clear()
    with use_backend("reference"), torch.no_grad():
        model(torch.randint(0, 64, (2, 8)), record=True)  # the one-shot path stacks: the counter sees it
    assert calls


def test_bf16_model_keeps_its_dtype() -> None:
    model = _model(preset("block-s2"), torch.bfloat16)
    with use_backend("reference"):
        out = model(torch.randint(0, 64, (2, 8)))
        out.float().square().mean().backward()
    assert out.dtype == torch.bfloat16 and out.isfinite().all()
    assert all(p.grad is not None and p.grad.isfinite().all() for p in model.residual.parameters())


def test_a_training_step_leaves_nothing_alive(monkeypatch: pytest.MonkeyPatch) -> None:
    """The autograd functions keep the buffer, not the cache: the cache holds the block
    tensors, whose graphs lead back to the functions' nodes, and such a cycle through
    autograd nodes is never collected (every step's activations would stay alive)."""
    import gc
    import weakref

    import attnres_search.residual.attnres as attnres_module

    caches: list[weakref.ref] = []

    class Tracked(BlockCache):
        def __init__(self, *args, **kwargs) -> None:  # type: ignore[no-untyped-def]
            super().__init__(*args, **kwargs)
            caches.append(weakref.ref(self))

    monkeypatch.setattr(attnres_module, "BlockCache", Tracked)
    for name in ("full", "block-s2"):
        model = _model(preset(name), torch.float32)
        for _ in range(3):
            with use_backend("reference"):
                model(torch.randint(0, 64, (2, 8))).square().mean().backward()
    gc.collect()
    assert len(caches) == 6 and all(ref() is None for ref in caches)
