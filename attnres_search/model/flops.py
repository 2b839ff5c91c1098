"""Parameter and FLOP accounting, by arithmetic (nothing is allocated, so ``model describe``
answers at once for any shape), so studies can match compute across variants.

Forward FLOPs per token follow Kaplan et al.: 2 per multiply-accumulate of every weight
matrix a token passes through (sublayers and head; the embedding lookup is free), plus the
attention context term 2·n_ctx·d per attention sublayer (QK^T and AV, without causal
halving), plus the residual rule's own work (depth-attention or stream mixing), which is
small but not zero. Training = 3 x forward.
"""

from __future__ import annotations

from attnres_search.model.config import ModelConfig
from attnres_search.residual import spec_for


def residual_flops_per_token(cfg: ModelConfig) -> float:
    """Forward FLOPs/token of the residual rule itself (the rule's spec counts them)."""
    return spec_for(cfg.residual).flops_per_token(cfg.residual, cfg.n_sublayers, cfg.d_model)


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


def count_params(cfg: ModelConfig, non_embedding: bool = False) -> dict[str, int]:
    """Parameters of :class:`~attnres_search.model.decoder.AttnResLM` for ``cfg``, counted
    without building it: ``{"total", "non_embedding", "residual"}`` (tests check it
    against the built model for every preset)."""
    d, v = cfg.d_model, cfg.vocab_size
    per_block = (4 * d * d + d) + (3 * d * cfg.ffn_dim + d)  # attention + MLP, each with its pre-norm gain
    residual = spec_for(cfg.residual).num_params(cfg.residual, cfg.n_sublayers, d)
    embedding = v * d
    total = embedding + cfg.n_layers * per_block + d + residual + (0 if cfg.tie_embeddings else v * d)
    return {"total": total, "non_embedding": total - embedding, "residual": residual}
