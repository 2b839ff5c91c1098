"""Parameter and FLOP accounting, so studies can match compute across variants.

Forward FLOPs per token follow Kaplan et al.: 2 per multiply-accumulate of every weight
matrix a token passes through (sublayers and head; the embedding lookup is free), plus the
attention context term 2·n_ctx·d per attention sublayer (QK^T and AV, without causal
halving), plus the residual rule's own work (depth-attention or stream mixing), which is
small but not zero. Training = 3 x forward.
"""

from __future__ import annotations

import math

from attnres_search.model.config import ModelConfig


def residual_flops_per_token(cfg: ModelConfig) -> float:
    """Forward FLOPs/token of the residual rule itself."""
    r, d, n_sub = cfg.residual, cfg.d_model, cfg.n_sublayers
    if r.kind == "prenorm":
        return float(n_sub * d)  # one add per sublayer
    if r.kind == "denseformer":
        return float(sum(2 * (i + 2) * d for i in range(n_sub)))
    if r.kind in ("mhc", "mhc_lite"):
        m = r.streams
        n_res = math.factorial(m) if r.kind == "mhc_lite" else m * m
        per_layer = 2 * m * d * (2 * m + n_res) + 2 * m * d + 2 * m * m * d + 2 * m * d
        return float(n_sub * per_layer)
    s = r.resolve_block_size(n_sub)
    total = 0.0
    for i in range(n_sub + 1):
        n_done = 1 + i // s
        has_partial = (i % s != 0) if i < n_sub else (n_sub % s != 0)
        n = n_done + int(has_partial)
        if r.window is not None:
            n = min(n, 1 + r.window)
        per_source = 4 * d + (3 * d if r.key_norm == "rmsnorm" else 0)  # logit + weighted sum (+ norm)
        total += n * per_source
        if r.query == "input_dependent":
            total += 2 * d * d
        if r.kind == "block" and i < n_sub and i % s != 0:
            total += d  # the partial-sum add
    return total


def matmul_params(cfg: ModelConfig) -> int:
    """Weights a token multiplies through: attention, MLP and head matrices."""
    d = cfg.d_model
    per_block = 4 * d * d + 3 * d * cfg.ffn_dim
    return cfg.n_layers * per_block + d * cfg.vocab_size


def flops_per_token(cfg: ModelConfig) -> dict[str, float]:
    """``{"forward": F, "train": 3F, "attention_context": ..., "residual": ...}`` per token."""
    context = 2 * cfg.n_layers * cfg.seq_len * cfg.d_model
    residual = residual_flops_per_token(cfg)
    forward = 2 * matmul_params(cfg) + context + residual
    return {"forward": float(forward), "train": float(3 * forward), "attention_context": float(context), "residual": residual}
