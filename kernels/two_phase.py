"""The two-phase schedule of Block AttnRes (paper Algorithm 1), for training and inference,
exact, on the PyTorch path and on the Triton path.

Within block ``n`` every one of its ``S`` layers attends over the same completed blocks
``[b_0..b_{n-1}]`` plus its own intra-block partial sum ``b_n^{j-1}`` (layer 0 of the block
has none). Pseudo-queries are parameters, not functions of the input, and the completed
blocks do not change while the block runs, so:

* **phase 1** (:func:`phase1`, once when the block opens) scores all ``S`` queries against
  the completed blocks in one pass: each block is read once for all ``S`` queries and its
  key RMS is computed once and shared by them. It keeps, per layer and token, the normalised
  mixture ``o_j`` and its log-sum-exp ``lse_j`` (sigmoid: the gated sum, no normaliser);
* **phase 2** (:func:`phase2`, once per layer) merges the layer's one extra source, the
  partial sum ``P``, by one online-softmax step: with ``z_P = w_j . RMSNorm_g(P)`` and
  ``a = sigmoid(lse_j - z_P)`` (the softmax weight of everything phase 1 saw),
  ``h_j = a o_j + (1 - a) P``; sigmoid gates are independent, so ``h_j = o_j + sigmoid(z_P) P``.

The merge is exact (the softmax over ``[blocks, P]`` equals this log-sum-exp-weighted
combination), and both phases are differentiable: gradients reach the blocks, the partial
sums, the queries and the gains, equal to those of the one-shot
:func:`.reference.depth_attention` over the concatenated sources. Phase-1 results are kept
in float32 (float64 for float64 blocks), so the split adds no rounding step that the
one-shot computation lacks.

Paths, chosen by the one backend rule of :mod:`.backend` (``ATTNRES_KERNEL`` /
:func:`.backend.set_backend`, and :func:`.runtime.two_phase_unsupported_reason`):

* PyTorch (CPU, float64, and every call the kernels cannot take): phase 1 is one batched
  einsum over ``[S queries] x [N blocks]`` with one RMS per block, phase 2 a few elementwise
  ops; plain autograd differentiates both exactly.
* Triton (CUDA, or the CPU interpreter under ``backend="triton"``): :mod:`.two_phase_triton`,
  ``autograd.Function`` s whose forwards are the phase-1/phase-2 kernels and whose backwards
  are hand-written kernels. While ``torch.compile`` traces, the PyTorch formulation is used
  (Inductor generates its own kernels for it).

Scope: learned queries only (``[S, d]``; input-dependent queries are not known before the
layer runs). Multihead (``heads > 1``) is supported on both paths. Sliding windows are not:
with a window the set of completed blocks a layer reads depends on whether it has a partial
sum, so those models keep the one-shot path (:func:`two_phase_supported`).
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass

import torch
from torch import Tensor

from .backend import kernel_chosen
from .reference import DEFAULT_EPS, Score, compute_dtype, depth_logits, folded_query
from .runtime import KERNEL_DTYPES, two_phase_unsupported_reason, unavailable_reason


def two_phase_supported(heads: int = 1, window: int | None = None) -> bool:
    """Whether a Block AttnRes layout can run by :func:`phase1` / :func:`phase2`.

    Any head count can; a sliding window cannot (its block set differs between a block's
    first layer and the others), so windowed models keep the one-shot :func:`.attend.attend`.
    """
    return heads >= 1 and window is None


@dataclass(frozen=True)
class Phase1:
    """Phase 1 of one block: what each of its ``S`` layers needs to merge its partial sum.

    ``out``: ``[S, *batch, d]`` mixtures over the completed blocks (float32; float64 for
    float64 blocks), differentiable; ``lse``: ``[S, *batch, heads]`` their log-sum-exp
    (softmax), ``None`` for sigmoid gates; ``dtype``: the blocks' dtype (the dtype of a layer
    input that has no partial sum); ``kernel``: whether the Triton path produced it.
    """

    out: Tensor
    lse: Tensor | None
    score: Score
    heads: int
    eps: float
    dtype: torch.dtype
    kernel: bool

    @property
    def n_layers(self) -> int:
        return self.out.shape[0]


def _check_layout(blocks: Tensor, queries: Tensor, gains: Tensor | None, score: str, heads: int) -> None:
    d = blocks.shape[-1]
    if blocks.shape[0] < 1:
        raise ValueError("phase 1 needs at least one cached block")
    if queries.dim() != 2 or queries.shape[1] != d:
        raise ValueError(f"queries must be [S, {d}] (one learned query per layer), got {tuple(queries.shape)}")
    if gains is not None and gains.shape != queries.shape:
        raise ValueError(f"gains must match queries {tuple(queries.shape)}, got {tuple(gains.shape)}")
    if heads < 1 or d % heads:
        raise ValueError(f"heads={heads} does not divide d={d}")
    if score not in ("softmax", "sigmoid"):
        raise ValueError(f"score must be 'softmax' or 'sigmoid', got {score!r}")


def _phase1_torch(
    blocks: Tensor, queries: Tensor, gains: Tensor | None, score: str, heads: int, eps: float
) -> tuple[Tensor, Tensor | None]:
    """Phase 1 as one batched contraction; plain autograd gives its exact backward."""
    ct = compute_dtype(blocks.dtype)
    n_q, d = queries.shape
    dh = d // heads
    v = blocks.to(ct).unflatten(-1, (heads, dh))  # [N, *tok, H, dh]
    u = folded_query(queries, gains, ct)
    logits = torch.einsum("n...hc,shc->sn...h", v, u.view(n_q, heads, dh))  # [S, N, *tok, H]
    if gains is not None:
        # w . (g * V / rms(V)) = ((w * g) . V) / rms(V): one RMS per block, shared by all S queries.
        logits = logits * torch.rsqrt(v.square().mean(-1) + eps)
    if score == "softmax":
        lse = torch.logsumexp(logits, dim=1)
        weights = torch.exp(logits - lse.unsqueeze(1))
    else:
        lse, weights = None, torch.sigmoid(logits)
    out = torch.einsum("sn...h,n...hc->s...hc", weights, v).flatten(-2)
    return out, lse


def _phase2_torch(
    o: Tensor, lse: Tensor | None, partial: Tensor, query: Tensor, gain: Tensor | None, score: str, heads: int, eps: float
) -> Tensor:
    """Merge one partial-sum source into a phase-1 mixture (elementwise; autograd-exact)."""
    ct = o.dtype
    d = partial.shape[-1]
    z = depth_logits(partial.unsqueeze(0), query, gain, heads=heads, eps=eps)[0].to(ct)  # [*tok, H]
    o_h = o.unflatten(-1, (heads, d // heads))
    p = partial.to(ct).unflatten(-1, (heads, d // heads))
    if score == "sigmoid":
        merged = o_h + torch.sigmoid(z).unsqueeze(-1) * p
    else:
        assert lse is not None
        a = torch.sigmoid(lse - z).unsqueeze(-1)  # softmax weight of the completed blocks together
        merged = p + a * (o_h - p)
    return merged.flatten(-2)


def phase1(
    blocks: Tensor,
    queries: Tensor,
    gains: Tensor | None,
    *,
    score: Score = "softmax",
    heads: int = 1,
    eps: float = DEFAULT_EPS,
) -> Phase1:
    """Score a block's ``S`` queries against its completed blocks in one pass (differentiable).

    ``blocks``: ``[N, *batch, d]``, the completed sources ``b_0..b_{N-1}`` (any strides on the
    leading dim, e.g. a view of a growing buffer); ``queries``: ``[S, d]``, the pseudo-queries
    of the block's ``S`` layers; ``gains``: ``[S, d]`` key-norm gains per layer, ``None`` for
    no key norm. Each block is read once for all ``S`` queries and its key RMS computed once.
    """
    _check_layout(blocks, queries, gains, score, heads)
    if not torch.compiler.is_compiling() and kernel_chosen(
        blocks.device,
        lambda: two_phase_unsupported_reason(blocks, queries, gains, heads=heads),
        "the two-phase kernels",
    ):
        from . import two_phase_triton

        out, lse = two_phase_triton.phase1(blocks, queries, gains, score=score, heads=heads, eps=eps)
        return Phase1(out, lse, score, heads, eps, blocks.dtype, kernel=True)
    out, lse = _phase1_torch(blocks, queries, gains, score, heads, eps)
    return Phase1(out, lse, score, heads, eps, blocks.dtype, kernel=False)


def _phase2_unsupported_reason(p1: Phase1, partial: Tensor, query: Tensor) -> str | None:
    if partial.dtype not in KERNEL_DTYPES:
        return f"the kernel takes float32, bfloat16 or float16 sources, not {partial.dtype}"
    if p1.out.dtype != torch.float32:
        return "phase 1 ran in float64 on the PyTorch path"
    if partial.shape != p1.out.shape[1:] or query.dim() != 1:
        return "partial must have one block's shape and the query must be a vector [d]"
    return unavailable_reason(partial.device)


def phase2(p1: Phase1, j: int, partial: Tensor | None, query_j: Tensor, gain_j: Tensor | None) -> Tensor:
    """Layer ``j``'s input (``[*batch, d]``): merge its partial sum into its phase-1 result.

    ``partial``: ``b_n^{j-1}``, the sum of the block's earlier layer outputs ``[*batch, d]``,
    or ``None`` for the block's first layer, which takes ``o[j]`` directly; ``query_j`` /
    ``gain_j``: layer ``j``'s pseudo-query ``[d]`` and key-norm gain (``None`` for no key
    norm): the same rows passed to :func:`phase1`, so their gradients from both phases add.
    Score, heads and eps are phase 1's. The result has the one-shot dtype: the blocks' dtype
    promoted with the partial's.
    """
    if not 0 <= j < p1.n_layers:
        raise ValueError(f"layer {j} is not one of phase 1's {p1.n_layers} layers")
    o = p1.out[j]
    if partial is None:
        return o.to(p1.dtype)
    lse = None if p1.lse is None else p1.lse[j]
    dtype = torch.promote_types(p1.dtype, partial.dtype)
    if (
        p1.kernel
        and not torch.compiler.is_compiling()
        and kernel_chosen(partial.device, lambda: _phase2_unsupported_reason(p1, partial, query_j), "phase 2")
    ):
        from . import two_phase_triton

        return two_phase_triton.phase2(
            o, lse, partial, query_j, gain_j, score=p1.score, heads=p1.heads, eps=p1.eps, out_dtype=dtype
        )
    return _phase2_torch(o, lse, partial, query_j, gain_j, p1.score, p1.heads, p1.eps).to(dtype)


def two_phase_block(
    blocks: Tensor,
    queries: Tensor,
    gains: Tensor | None,
    layers: Sequence[Callable[[Tensor], Tensor]],
    *,
    score: Score = "softmax",
    heads: int = 1,
    eps: float = DEFAULT_EPS,
) -> tuple[list[Tensor], Tensor]:
    """Run one block of ``S = len(layers)`` layers by Algorithm 1 (differentiable).

    ``layers[j]`` maps its input ``h_j`` to its output ``f_j``. Returns every layer's input
    ``[h_0..h_{S-1}]`` and the completed block representation ``b_n = f_0 + ... + f_{S-1}``,
    equal to calling the one-shot depth-attention over ``[*blocks, b_n^{j-1}]`` layer by layer.
    """
    if len(layers) != queries.shape[0]:
        raise ValueError(f"{len(layers)} layers but {queries.shape[0]} queries")
    p1 = phase1(blocks, queries, gains, score=score, heads=heads, eps=eps)
    inputs: list[Tensor] = []
    partial: Tensor | None = None
    for j, layer in enumerate(layers):
        h = phase2(p1, j, partial, queries[j], None if gains is None else gains[j])
        inputs.append(h)
        f = layer(h)
        partial = f if partial is None else partial + f
    assert partial is not None
    return inputs, partial
