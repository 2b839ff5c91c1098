"""Full and Block Attention Residuals (paper Section 3), with the Table 4 ablation knobs.

Sublayer i (0-based) in block n = i // S attends over [b_0..b_{n-1}] when it opens its
block and over [b_0..b_{n-1}, b_n^{i mod S}] otherwise; the head reads all completed
blocks plus any last partial sum. Partial sums start at zero at each block boundary and
are never seeded with the embedding. S = 1 is Full AttnRes.

:func:`source_indices` is the one source plan: the forward pass, the labels that
``model describe`` and the diagnostics print, and the FLOP count all read it.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import ClassVar

import torch
from torch import Tensor, nn

from attnres_search.kernels.attend import attend
from attnres_search.kernels.backend import reference_only
from attnres_search.kernels.block_cache import BlockCache
from attnres_search.kernels.reference import DEFAULT_EPS, compute_dtype, mix_sources
from attnres_search.kernels.two_phase import Phase1, phase1, phase2, two_phase_supported
from attnres_search.model.layers import rms_normalize
from attnres_search.residual.base import (ResidualConfig, ResidualRule, RuleSpec, SourcePlan, check_choice,
                                          check_positive)

SCORES = ("softmax", "sigmoid")
KEY_NORMS = ("rmsnorm", "none")
QUERIES = ("learned", "input_dependent")
MIXINGS = ("input_dependent", "input_independent")


@dataclass(frozen=True)
class AttnResConfig(ResidualConfig):
    """``block_size`` counts *sublayers* (attention and MLP are one layer each), as in the
    paper; ``num_blocks`` is the other way to say it, resolved against the depth."""

    kind: str = "full"
    block_size: int | None = None
    num_blocks: int | None = None
    score: str = "softmax"
    key_norm: str = "rmsnorm"
    query: str = "learned"
    mixing: str = "input_dependent"
    heads: int = 1
    window: int | None = None
    KINDS: ClassVar[tuple[str, ...]] = ("full", "block")

    def validate(self) -> None:
        check_choice("score", self.score, SCORES)
        check_choice("key_norm", self.key_norm, KEY_NORMS)
        check_choice("query", self.query, QUERIES)
        check_choice("mixing", self.mixing, MIXINGS)
        for name in ("block_size", "num_blocks", "window"):
            check_positive(name, getattr(self, name), optional=True)
        check_positive("heads", self.heads)
        if self.kind == "block" and self.block_size is None and self.num_blocks is None:
            raise ValueError("block AttnRes needs block_size (sublayers per block) or num_blocks")
        if self.kind == "full" and self.block_size not in (None, 1):
            raise ValueError(f"block_size must be 1 (or unset) for full AttnRes, got {self.block_size}")
        if self.kind == "full" and self.num_blocks is not None:
            raise ValueError("num_blocks has no effect on full AttnRes (every sublayer is its own block); remove it")
        if self.kind == "block" and self.block_size is not None and self.num_blocks is not None:
            raise ValueError("give block_size or num_blocks, not both")

    def ignored_fields(self) -> tuple[str, ...]:
        # Input-independent mixing is one learned logit per source: no query, no keys.
        if self.mixing == "input_independent":
            return ("score", "key_norm", "query", "heads")
        return ()

    def describe_setting(self) -> str:
        return f"{self.kind} AttnRes with mixing {self.mixing!r}" if self.mixing != "input_dependent" else super().describe_setting()

    @property
    def is_attnres(self) -> bool:
        return True

    def resolve_block_size(self, n_sublayers: int) -> int:
        """Sublayers per block for a model with ``n_sublayers`` sublayers (L = 2 * L_b)."""
        if self.kind == "full":
            return 1
        if self.num_blocks is not None:
            if n_sublayers % self.num_blocks:
                raise ValueError(f"num_blocks={self.num_blocks} does not divide the {n_sublayers} sublayers "
                                 f"(2 x n_layers); pick a divisor of {n_sublayers}")
            return n_sublayers // self.num_blocks
        assert self.block_size is not None
        if n_sublayers % self.block_size:
            raise ValueError(f"block_size={self.block_size} does not divide the {n_sublayers} sublayers "
                             f"(2 x n_layers); pick a divisor of {n_sublayers}")
        return self.block_size


@dataclass(frozen=True)
class Sources:
    """What mixing point ``i`` reads, as indices into [b_0, ..., b_{n_done-1}, partial]."""

    indices: tuple[int, ...]
    n_done: int  # b_0 plus the completed blocks
    partial_len: int  # sublayers summed into the partial sum (0: no partial)

    @property
    def has_partial(self) -> bool:
        return self.partial_len > 0


def source_indices(i: int, block_size: int, n_sublayers: int, window: int | None) -> Sources:
    s = block_size
    n_done = 1 + i // s
    partial_len = i % s if i < n_sublayers else n_sublayers % s
    total = n_done + int(partial_len > 0)
    idx = tuple(range(total))
    if window is not None and total - 1 > window:
        idx = (0,) + idx[-window:]
    return Sources(idx, n_done, partial_len)


def source_members(sources: Sources, block_size: int) -> list[tuple[int, ...]]:
    """Which v_i (v_0 the embedding, v_i = f_i) each source read at a point sums: b_0 is v_0,
    completed block k >= 1 is f_{(k-1)S+1} .. f_{kS}, the partial sum the open block's
    outputs so far. A source's weight applies to every member in the effective mixing
    matrix M."""
    s = block_size
    out = []
    for j in sources.indices:
        if j == 0:
            out.append((0,))
        elif j < sources.n_done:
            out.append(tuple(range((j - 1) * s + 1, j * s + 1)))
        else:
            start = (sources.n_done - 1) * s + 1
            out.append(tuple(range(start, start + sources.partial_len)))
    return out


def source_plan_of(cfg: AttnResConfig, n_sublayers: int) -> list[Sources]:
    """:func:`source_indices` of every point (each sublayer, then the head)."""
    s = cfg.resolve_block_size(n_sublayers)
    return [source_indices(i, s, n_sublayers, cfg.window) for i in range(n_sublayers + 1)]


@dataclass(frozen=True)
class SourceCounts:
    points: int  # mixing points: every sublayer plus the head
    sources: int  # sources read, summed over the points
    single_source_points: int  # points that read one source (their weight is 1)
    partial_adds: int  # sublayers that add into a running partial sum


def _sum_capped(first: int, count: int, cap: int | None) -> int:
    """sum_{k=0}^{count-1} min(first + k, cap) in closed form."""
    if cap is None:
        return count * first + count * (count - 1) // 2
    uncapped = max(0, min(count, cap - first + 1))
    return uncapped * first + uncapped * (uncapped - 1) // 2 + (count - uncapped) * cap


def source_counts(cfg: AttnResConfig, n_sublayers: int) -> SourceCounts:
    """Totals of :func:`source_indices` over every point, in closed form so that FLOPs and
    parameter counts of arbitrarily deep models cost nothing (a test checks them against
    the plan itself). Block k (0-based) opens with 1 + k sources and its later S - 1
    sublayers read one more, the partial sum; the head reads every block plus any partial;
    a window caps every count at 1 + W."""
    s = cfg.resolve_block_size(n_sublayers)
    n_blocks = n_sublayers // s
    cap = None if cfg.window is None else 1 + cfg.window
    head = 1 + n_blocks + int(n_sublayers % s != 0)
    total = _sum_capped(1, n_blocks, cap) + (s - 1) * _sum_capped(2, n_blocks, cap)
    total += head if cap is None else min(head, cap)
    return SourceCounts(points=n_sublayers + 1, sources=total, single_source_points=1 if n_sublayers else 0,
                        partial_adds=n_blocks * (s - 1))


@dataclass
class _State:
    blocks: list[Tensor]  # b_0 = v_0, then one completed block sum per block
    partial: Tensor | None = None  # running sum of the current block, None right after a boundary
    stacked: Tensor | None = None  # torch.stack(blocks), rebuilt only when a block completes
    phase1: Phase1 | None = None  # the open block's phase-1 result (two-phase schedule)
    cache: BlockCache | None = None  # the blocks in one buffer (PyTorch eager path)


class AttnResRule(ResidualRule):
    def __init__(self, cfg: AttnResConfig, n_sublayers: int, d_model: int, eps: float = DEFAULT_EPS) -> None:
        super().__init__(n_sublayers, d_model)
        self.cfg = cfg
        self.block_size = cfg.resolve_block_size(n_sublayers)
        self.eps = eps
        self.plan = source_plan_of(cfg, n_sublayers)
        n_points = n_sublayers + 1  # every sublayer plus the final aggregation
        if cfg.mixing == "input_independent":
            # One learned logit per source, zero-init: uniform mixing at step 0. A point with
            # a single source has weight 1 whatever its logit, so it gets no parameter.
            self.static_logits = nn.ParameterDict(
                {str(i): nn.Parameter(torch.zeros(len(p.indices))) for i, p in enumerate(self.plan) if len(p.indices) > 1}
            )
        elif cfg.query == "learned":
            self.queries = nn.Parameter(torch.zeros(n_points, d_model))  # zero: uniform at init
        else:
            # w_l = W_l . RMSNorm(latest source); W_l zero-init so step 0 is uniform too.
            self.query_proj = nn.Parameter(torch.zeros(n_points, d_model, d_model))
        if cfg.key_norm == "rmsnorm" and cfg.mixing == "input_dependent":
            self.key_gains = nn.Parameter(torch.ones(n_points, d_model))
        # Learned pseudo-queries are known before a block runs, so its S layers are scored
        # against the completed blocks in one pass (paper Algorithm 1) and each layer only
        # merges its own partial sum. Input-dependent queries and windows need the one-shot path.
        # On the stacked path, S = 1 (Full AttnRes) keeps the one-shot op: phase 1 would have one
        # query and nothing to share. The block cache (begin) takes every S.
        self.learned_queries = (cfg.mixing == "input_dependent" and cfg.query == "learned"
                                and two_phase_supported(cfg.heads, cfg.window))
        self.two_phase = self.learned_queries and self.block_size > 1

    def begin(self, v0: Tensor) -> _State:
        state = _State(blocks=[v0])
        # PyTorch eager path: completed blocks go into one buffer (no re-stacking) and the
        # two-phase schedule runs with hand-written backwards (kernels/block_cache.py), for
        # every block size, Full AttnRes included. Kernels and compiled graphs keep stacking.
        if (self.learned_queries and not self.record and reference_only(v0.device)
                and not torch.compiler.is_compiling()):
            state.cache = BlockCache(v0, 1 + self.n_sublayers // self.block_size, self.queries,
                                     self.key_gains if self.cfg.key_norm == "rmsnorm" else None,
                                     score=self.cfg.score, heads=self.cfg.heads, eps=self.eps)  # type: ignore[arg-type]
        return state

    def _schedule_position(self, i: int) -> tuple[int, int, Tensor | None]:
        """For the two-phase schedule: point i's layer index j within its block, how many
        queries its block's phase 1 scores (the head is a block of one query over every
        completed block), and the key-norm gains (``None`` without key norm)."""
        j, n_queries = (i % self.block_size, self.block_size) if i < self.n_sublayers else (0, 1)
        return j, n_queries, self.key_gains if self.cfg.key_norm == "rmsnorm" else None

    def _mix_cached(self, i: int, state: _State) -> Tensor:
        """Layer i's input from the block cache: phase 1 when its block opens, then phase 2."""
        assert state.cache is not None
        j, n_queries, _ = self._schedule_position(i)
        if j == 0:
            state.cache.open_block(i, n_queries)
        v0 = state.blocks[0]
        h = state.cache.layer_input(i, state.partial)
        return h.to(v0.dtype if state.partial is None else torch.promote_types(v0.dtype, state.partial.dtype))

    def _stacked(self, state: _State) -> Tensor:
        if state.stacked is None or state.stacked.shape[0] != len(state.blocks):
            state.stacked = torch.stack(state.blocks)
        return state.stacked

    def _mix_two_phase(self, i: int, state: _State) -> Tensor:
        """Layer i's input by the two-phase schedule: phase 1 when its block opens (the head
        is a block of one query over every completed block), phase 2 for the partial sum."""
        j, n_queries, gains = self._schedule_position(i)
        if j == 0:
            state.phase1 = phase1(self._stacked(state), self.queries[i : i + n_queries],
                                  None if gains is None else gains[i : i + n_queries],
                                  score=self.cfg.score, heads=self.cfg.heads, eps=self.eps)  # type: ignore[arg-type]
        assert state.phase1 is not None
        return phase2(state.phase1, j, state.partial if j else None, self.queries[i],
                      None if gains is None else gains[i])

    def _mix(self, i: int, state: _State) -> Tensor:
        # On CUDA the one-shot fused kernel is faster than today's two-phase kernels
        # (results/gpu_h200/), so the schedule is used where it pays: the PyTorch path.
        if state.cache is not None:
            return self._mix_cached(i, state)
        if self.two_phase and not self.record and state.blocks[0].device.type != "cuda":
            return self._mix_two_phase(i, state)
        plan = self.plan[i]
        n_done = len(state.blocks)
        use_partial = state.partial is not None and plan.indices[-1] == n_done
        block_idx = [j for j in plan.indices if j < n_done]
        if len(block_idx) == n_done:
            blocks = self._stacked(state)
        else:  # sliding window: gather the selected blocks
            blocks = torch.stack([state.blocks[j] for j in block_idx])
        partial = state.partial if use_partial else None

        if self.cfg.mixing == "input_independent":
            logits = self.static_logits[str(i)] if str(i) in self.static_logits else blocks.new_zeros(1)
            weights = torch.softmax(logits.to(compute_dtype(blocks.dtype)), 0)
            out = mix_sources(blocks, weights.view((-1,) + (1,) * (blocks.dim() - 1)), partial)
            if self.record:
                self._record(i, weights.view((-1,) + (1,) * (blocks.dim() - 1)))
            return out

        if self.cfg.query == "learned":
            query = self.queries[i]
        else:
            latest = partial if partial is not None else blocks[-1]
            query = rms_normalize(latest, self.eps) @ self.query_proj[i].to(latest.dtype).T
        gain = self.key_gains[i] if self.cfg.key_norm == "rmsnorm" else None
        result = attend(blocks, partial, query, gain, score=self.cfg.score, heads=self.cfg.heads, eps=self.eps,
                        return_weights=self.record)
        if self.record:
            out, weights = result
            self._record(i, weights)
            return out
        return result

    def _record(self, i: int, weights: Tensor) -> None:
        """Point i's weights ``[n, *tokens, H]`` (static mixing: size-1 token dimensions):
        their mean for ``alpha``, per token for the sink search, and expanded onto the
        members of each source as point i's row of M."""
        weights = weights.detach()
        self.recorded_alpha.append(weights.float().reshape(weights.shape[0], -1).mean(1).tolist())
        members = source_members(self.plan[i], self.block_size)
        self.recorded_weights.append((weights, members))
        owner = torch.full((i + 1,), len(members), dtype=torch.long)  # v_i read by no source: weight 0
        for position, held in enumerate(members):
            owner[list(held)] = position
        padded = torch.cat([weights, weights.new_zeros(1, *weights.shape[1:])])
        self.save_mixing_row(padded[owner.to(weights.device)].movedim(0, -2))

    def layer_input(self, i: int, state: _State) -> Tensor:
        return self._mix(i, state)

    def update(self, i: int, state: _State, f: Tensor) -> None:
        state.partial = f if state.partial is None else state.partial + f
        if (i + 1) % self.block_size == 0:
            state.blocks.append(state.partial)
            if state.cache is not None:
                state.cache.append(state.partial, first_reader=i + 1)
            state.partial = None

    def final(self, state: _State) -> Tensor:
        return self._mix(self.n_sublayers, state)


class AttnResSpec(RuleSpec):
    config = AttnResConfig

    def build(self, cfg: AttnResConfig, n_sublayers: int, d_model: int) -> AttnResRule:
        return AttnResRule(cfg, n_sublayers, d_model)

    def check(self, cfg: AttnResConfig, n_sublayers: int, d_model: int) -> None:
        if cfg.heads > 1 and d_model % cfg.heads:
            raise ValueError(f"residual heads={cfg.heads} does not divide d_model={d_model}")
        cfg.resolve_block_size(n_sublayers)

    def flops_per_token(self, cfg: AttnResConfig, n_sublayers: int, d_model: int) -> float:
        d = d_model
        counts = source_counts(cfg, n_sublayers)
        if cfg.mixing == "input_independent":
            total = counts.sources * 2 * d  # weighted sum only
        else:
            total = counts.sources * (4 * d + (3 * d if cfg.key_norm == "rmsnorm" else 0))  # logit + sum (+ norm)
            if cfg.query == "input_dependent":
                total += counts.points * 2 * d * d
        return float(total + counts.partial_adds * d)

    def num_params(self, cfg: AttnResConfig, n_sublayers: int, d_model: int) -> int:
        counts = source_counts(cfg, n_sublayers)
        if cfg.mixing == "input_independent":
            return counts.sources - counts.single_source_points
        per_point = d_model if cfg.query == "learned" else d_model * d_model
        if cfg.key_norm == "rmsnorm":
            per_point += d_model
        return counts.points * per_point

    def source_plan(self, cfg: AttnResConfig, n_sublayers: int) -> SourcePlan:
        s = cfg.resolve_block_size(n_sublayers)
        sources, blocks = [], []
        for i, p in enumerate(source_plan_of(cfg, n_sublayers)):
            labels = []
            for j in p.indices:
                if j < p.n_done:
                    labels.append(f"b{j}" if s > 1 or j == 0 else f"f{j}")
                else:
                    labels.append(f"b{p.n_done}^{p.partial_len}")
            sources.append(tuple(labels))
            blocks.append(i // s + 1 if i < n_sublayers else None)
        return SourcePlan(tuple(sources), tuple(blocks))

    def block_size(self, cfg: AttnResConfig, n_sublayers: int | None) -> int | None:
        if cfg.kind == "full":
            return 1
        if cfg.block_size is not None:
            return cfg.block_size
        return n_sublayers // cfg.num_blocks if n_sublayers and cfg.num_blocks else None

    def label(self, cfg: AttnResConfig, n_sublayers: int | None) -> str:
        s = self.block_size(cfg, n_sublayers)
        parts = ["full" if cfg.kind == "full" else f"block S={s if s is not None else '?'}"]
        if cfg.kind == "block" and s and n_sublayers:
            parts[0] += f" (N={n_sublayers // s})"
        extras = {("score", "sigmoid"): "sigmoid", ("key_norm", "none"): "no key norm",
                  ("query", "input_dependent"): "input-dep. query", ("mixing", "input_independent"): "static mixing"}
        parts += [text for (name, value), text in extras.items() if getattr(cfg, name) == value]
        if cfg.heads > 1:
            parts.append(f"H={cfg.heads}")
        if cfg.window:
            parts.append(f"window 1+{cfg.window}")
        return ", ".join(parts)

    def family(self, cfg: AttnResConfig) -> str:
        return cfg.kind

    def depth_width_family(self, cfg: AttnResConfig) -> str:
        return "attnres"


SPEC = AttnResSpec()
