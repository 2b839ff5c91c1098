"""The effective depth-mixing matrix M that every residual rule forms, and what is read off it.

Every rule here is linear in the sublayer outputs once its weights (gates, softmax
weights, stream maps) are fixed: the input of mixing point l (sublayer l + 1's input for
l < L, the head's input for l = L) is

    h_l = sum_{i <= l} M_{i->l} v_i,    v_0 = embedding, v_i = f_i (raw output of sublayer i).

So the plain residual is a lower-triangular matrix of ones, Highway a product of carry
gates (1-semiseparable), mHC a product of m x m stream maps (m-semiseparable), AttnRes a
dense lower-triangular softmax. M is one picture in which all rules can be compared, which
the rules' own weights (α over blocks, stream maps) are not.

Rules record M while they run with ``record`` set (:meth:`ResidualRule.save_mixing_row`),
one row per point, as the rule forms it (unnormalised: the plain residual's rows are all
ones, softmax AttnRes rows sum to 1). A row is ``[*tokens, l + 1, G]``: per token, and per
channel group when channels mix differently (``G`` = heads of multihead AttnRes, else 1);
input-independent rules may give a row without token dimensions, which broadcasts.

This module holds the numbers only (no drawing, nothing above ``torch``), so the model,
the diagnostics and the reports all read one definition. The registry skips it: it is not
a rule.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from typing import Any, Sequence

import torch
from torch import Tensor

SINK_K = 2.0
"""A source is a sink candidate for a layer on a token when it takes more than ``SINK_K``
times the uniform weight 1/n of the n sources that layer reads. Twice the fair share is
the smallest ratio that token-to-token noise does not reach on most tokens once a layer
reads more than two sources (it is exactly 1 at initialisation, where every layer is
uniform), and it is reachable at every point that reads three or more sources (a softmax
weight cannot exceed n times uniform). With two sources no weight can exceed 2 x 1/2, so
a two-source point, a gate rather than an attention, never shows a sink."""

SINK_P = 0.9
"""... and it is flagged when that holds on at least this fraction of the validation
tokens: a sink draws its weight "whatever the input" (attention sinks in LLMs hold on
nearly every token), while 10% slack tolerates the few tokens where one layer's input
really is different (the first positions of a window, rare bytes)."""


def source_names(n_sublayers: int) -> list[str]:
    """Column labels of M: ``v0`` (the embedding), then ``f1 .. fL``."""
    return ["v0"] + [f"f{i}" for i in range(1, n_sublayers + 1)]


def as_row(row: Tensor, token_shape: Sequence[int]) -> Tensor:
    """A recorded row expanded to ``[*token_shape, n, G]`` (a view: nothing is copied)."""
    if row.dim() < 2:
        raise ValueError(f"a mixing row is [*tokens, n_sources, groups]; got shape {tuple(row.shape)}")
    return row.expand(*token_shape, *row.shape[-2:])


def apply_row(row: Tensor, sources: Sequence[Tensor]) -> Tensor:
    """``sum_i M_i v_i`` per token and channel group: what a layer input must equal.

    ``sources``: v_0 .. v_l, each ``[*tokens, d]``; ``row``: ``[*tokens, l + 1, G]`` (or
    broadcastable); channel group g is channels ``g*d/G .. (g+1)*d/G``, as the multihead
    depth-attention splits them."""
    stacked = torch.stack(list(sources), dim=-2)  # [*tok, n, d]
    n, d = stacked.shape[-2:]
    groups = row.shape[-1]
    grouped = stacked.unflatten(-1, (groups, d // groups))  # [*tok, n, G, d/G]
    return (row.to(grouped.dtype).unsqueeze(-1) * grouped).sum(-3).flatten(-2)


@dataclass
class MixingRecorder:
    """Collects a rule's rows while one recording forward runs, reducing each at once.

    Reduced: the mean of M over tokens and channel groups and its standard deviation (the
    spread over tokens), per point and source; for AttnRes rules, the fraction of
    tokens on which each of the rule's own sources takes more than ``sink_k`` times the
    uniform weight. ``keep`` also keeps the full per-token rows (tests check them against
    the layer inputs)."""

    token_shape: tuple[int, ...]
    keep: bool = False
    sink_k: float = SINK_K
    mean: list[list[float]] = field(default_factory=list)
    std: list[list[float]] = field(default_factory=list)
    rows: list[Tensor] = field(default_factory=list)
    sink_fraction: list[list[float]] = field(default_factory=list)
    members: list[list[list[int]]] = field(default_factory=list)

    def take(self, rule: Any) -> None:
        """Move what ``rule`` recorded since the last call into the summaries."""
        while rule.recorded_mixing:
            row = as_row(rule.recorded_mixing.pop(0), self.token_shape)
            flat = row.reshape(-1, row.shape[-2], row.shape[-1]).transpose(1, 2).reshape(-1, row.shape[-2])
            self.mean.append(flat.double().mean(0).tolist())
            self.std.append(flat.double().std(0, correction=0).tolist())
            if self.keep:
                self.rows.append(row)
        while rule.recorded_weights:
            weights, members = rule.recorded_weights.pop(0)
            self.sink_fraction.append(sink_fractions(weights, self.sink_k))
            self.members.append([list(m) for m in members])

    def document(self, n_sublayers: int, labels: Sequence[Sequence[str]], sink_p: float = SINK_P) -> dict[str, Any]:
        """``mixing`` and ``sinks`` as ``diagnostics.json`` stores them (``None`` when the
        rule recorded no M, or is not an AttnRes rule)."""
        n_points = n_sublayers + 1
        out: dict[str, Any] = {"mixing": None, "sinks": None}
        if len(self.mean) == n_points:
            out["mixing"] = {"mean": self.mean, "std": self.std, "sources": source_names(n_sublayers)}
        if len(self.sink_fraction) == n_points:
            out["sinks"] = {"k": self.sink_k, "p": sink_p, "fraction": self.sink_fraction,
                            "members": self.members,
                            "flagged": flag_sinks(self.sink_fraction, labels, self.members, sink_p)}
        return out


def sink_fractions(weights: Tensor, k: float = SINK_K) -> list[float]:
    """Per source, the fraction of tokens (and heads) on which its share of the weight
    exceeds ``k`` times uniform. ``weights``: ``[n, *tokens, H]``, the rule's own sources
    first. Shares are weights over their sum, so unnormalised sigmoid gates are judged by
    the part of the mixture they hold, like softmax weights."""
    n = weights.shape[0]
    w = weights.detach().double().reshape(n, -1)
    share = w / w.sum(0, keepdim=True).clamp_min(torch.finfo(torch.float64).tiny)
    return (share > k / n).double().mean(1).tolist()


def flag_sinks(fractions: Sequence[Sequence[float]], labels: Sequence[Sequence[str]],
               members: Sequence[Sequence[Sequence[int]]], p: float = SINK_P) -> list[dict[str, Any]]:
    """The (point, source) pairs whose fraction reaches ``p``: the depth-wise sinks."""
    found = []
    for point, row in enumerate(fractions):
        for j, fraction in enumerate(row):
            if fraction >= p:
                label = labels[point][j] if point < len(labels) and j < len(labels[point]) else str(j)
                found.append({"point": point, "source": j, "label": label, "fraction": fraction,
                              "members": list(members[point][j]) if point < len(members) else []})
    return found


# ------------------------------------------------------------------------- read off M

@dataclass(frozen=True)
class MixingSummary:
    """What a report prints per variant, from the token-mean rows of M.

    Rows are first made into distributions over sources, w = |M| / sum |M| (so the plain
    residual's all-ones rows and uniform AttnRes look alike: both weigh every source
    equally); then averaged over the mixing points that read two or more sources:
    - ``effective_depth``: sum_i w_i (l + 1 - i), how many layers back the weight sits on
      average (1: only the newest source; uniform over l + 1 sources: (l + 2) / 2);
    - ``embedding_share``: w_0, the weight on the embedding;
    - ``distance_from_uniform``: total variation 1/2 sum_i |w_i - 1/(l+1)| in [0, 1);
    - ``spread``: sum_i std_i / sum_i |M_i|, how much M moves from token to token (0 for
      input-independent rules)."""

    effective_depth: float
    embedding_share: float
    distance_from_uniform: float
    spread: float


def summarize(mean: Sequence[Sequence[float]], std: Sequence[Sequence[float]] | None = None) -> MixingSummary:
    depth, emb, tv, spread = [], [], [], []
    for point, row in enumerate(mean):
        if len(row) < 2:
            continue
        l = len(row) - 1  # point l reads v_0 .. v_l
        a = [abs(x) for x in row]
        total = sum(a)
        if not total or not math.isfinite(total):
            continue
        w = [x / total for x in a]
        n = len(w)
        depth.append(sum(wi * (l + 1 - i) for i, wi in enumerate(w)))
        emb.append(w[0])
        tv.append(0.5 * sum(abs(wi - 1 / n) for wi in w))
        if std is not None:
            spread.append(sum(std[point]) / total)
    nan = float("nan")

    def avg(xs: list[float]) -> float:
        return sum(xs) / len(xs) if xs else nan

    return MixingSummary(avg(depth), avg(emb), avg(tv), avg(spread) if std is not None else nan)
