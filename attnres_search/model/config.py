"""Model and residual-rule configuration, and the named presets of the paper's Table 4.

Every residual rule is one setting of :class:`ResidualConfig`, so a study can sweep its
fields as easily as it picks a preset by name. Validation happens here, once, with errors
that name the offending field: a bad value must never reach a half-built model.
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass, field, fields, replace
from typing import Any, Literal

Kind = Literal["prenorm", "full", "block", "denseformer", "mhc", "mhc_lite"]
KINDS: tuple[str, ...] = ("prenorm", "full", "block", "denseformer", "mhc", "mhc_lite")
ATTNRES_KINDS = ("full", "block")
SCORES = ("softmax", "sigmoid")
KEY_NORMS = ("rmsnorm", "none")
QUERIES = ("learned", "input_dependent")
MIXINGS = ("input_dependent", "input_independent")


@dataclass(frozen=True)
class ResidualConfig:
    """How layer inputs are formed from earlier layers' outputs.

    ``block_size`` counts *sublayers* (attention and MLP are one layer each), as in the
    paper; ``num_blocks`` is the alternative way to say it and is resolved against the depth
    when the model is built. ``full`` is block AttnRes with ``block_size=1``.
    """

    kind: Kind = "prenorm"
    block_size: int | None = None
    num_blocks: int | None = None
    score: str = "softmax"
    key_norm: str = "rmsnorm"
    query: str = "learned"
    mixing: str = "input_dependent"
    heads: int = 1
    window: int | None = None
    streams: int = 4
    sinkhorn_iters: int = 20

    def __post_init__(self) -> None:
        _check_choice("kind", self.kind, KINDS)
        _check_choice("score", self.score, SCORES)
        _check_choice("key_norm", self.key_norm, KEY_NORMS)
        _check_choice("query", self.query, QUERIES)
        _check_choice("mixing", self.mixing, MIXINGS)
        for name in ("block_size", "num_blocks", "window"):
            value = getattr(self, name)
            if value is not None and (not isinstance(value, int) or value < 1):
                raise ValueError(f"{name} must be a positive integer or null, got {value!r}")
        if not isinstance(self.heads, int) or self.heads < 1:
            raise ValueError(f"heads must be a positive integer, got {self.heads!r}")
        if self.kind == "block" and self.block_size is None and self.num_blocks is None:
            raise ValueError("block AttnRes needs block_size (sublayers per block) or num_blocks")
        if self.kind == "full" and self.block_size not in (None, 1):
            raise ValueError(f"block_size must be 1 (or unset) for full AttnRes, got {self.block_size}")
        if self.kind == "block" and self.block_size is not None and self.num_blocks is not None:
            raise ValueError("give block_size or num_blocks, not both")
        if self.kind in ("mhc", "mhc_lite") and self.streams < 2:
            raise ValueError(f"streams must be >= 2 for {self.kind}, got {self.streams}")
        if self.kind == "mhc_lite" and self.streams > 5:
            raise ValueError("streams must be <= 5 for mhc_lite (it mixes all m! permutation matrices)")

    @property
    def is_attnres(self) -> bool:
        return self.kind in ATTNRES_KINDS

    def resolve_block_size(self, n_layers: int) -> int:
        """Sublayers per block for a model with ``n_layers`` sublayers (L = 2 * L_b)."""
        if self.kind == "full":
            return 1
        if self.kind != "block":
            raise ValueError(f"{self.kind} has no blocks")
        if self.num_blocks is not None:
            if n_layers % self.num_blocks:
                raise ValueError(
                    f"num_blocks={self.num_blocks} does not divide the {n_layers} sublayers "
                    f"(2 x n_layers); pick a divisor of {n_layers}"
                )
            return n_layers // self.num_blocks
        assert self.block_size is not None
        if n_layers % self.block_size:
            raise ValueError(
                f"block_size={self.block_size} does not divide the {n_layers} sublayers "
                f"(2 x n_layers); pick a divisor of {n_layers}"
            )
        return self.block_size

    def to_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> "ResidualConfig":
        return cls(**_known_fields(cls, data, "residual"))


@dataclass(frozen=True)
class ModelConfig:
    """A Llama-style decoder. ``n_layers`` counts transformer blocks (L_b); the residual rule
    sees ``2 * n_layers`` sublayers."""

    vocab_size: int = 256
    n_layers: int = 4
    d_model: int = 128
    n_heads: int = 4
    d_ff: int | None = None
    seq_len: int = 256
    rope_theta: float = 10000.0
    norm_eps: float = 1e-6
    tie_embeddings: bool = False
    residual: ResidualConfig = field(default_factory=ResidualConfig)

    def __post_init__(self) -> None:
        for name in ("vocab_size", "n_layers", "d_model", "n_heads", "seq_len"):
            value = getattr(self, name)
            if not isinstance(value, int) or value < 1:
                raise ValueError(f"{name} must be a positive integer, got {value!r}")
        if self.d_model % self.n_heads:
            raise ValueError(f"n_heads={self.n_heads} does not divide d_model={self.d_model}")
        if (self.d_model // self.n_heads) % 2:
            raise ValueError(f"head dimension d_model/n_heads={self.d_model // self.n_heads} must be even for RoPE")
        if self.d_ff is not None and self.d_ff < 1:
            raise ValueError(f"d_ff must be a positive integer, got {self.d_ff!r}")
        if isinstance(self.residual, dict):
            object.__setattr__(self, "residual", ResidualConfig.from_dict(self.residual))
        r = self.residual
        if r.heads > 1 and self.d_model % r.heads:
            raise ValueError(f"residual heads={r.heads} does not divide d_model={self.d_model}")
        if r.kind == "block":
            r.resolve_block_size(self.n_sublayers)

    @property
    def n_sublayers(self) -> int:
        return 2 * self.n_layers

    @property
    def ffn_dim(self) -> int:
        """SwiGLU hidden width: 8/3 d rounded up to a multiple of 16 unless given."""
        if self.d_ff is not None:
            return self.d_ff
        return -(-int(8 * self.d_model / 3) // 16) * 16

    def to_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> "ModelConfig":
        data = _known_fields(cls, data, "model")
        if "residual" in data and isinstance(data["residual"], dict):
            data["residual"] = ResidualConfig.from_dict(data["residual"])
        return cls(**data)


def _check_choice(name: str, value: object, choices: tuple[str, ...]) -> None:
    if value not in choices:
        raise ValueError(f"{name} must be one of {', '.join(choices)}; got {value!r}")


def _known_fields(cls: type, data: dict[str, Any], what: str) -> dict[str, Any]:
    names = {f.name for f in fields(cls)}
    unknown = sorted(set(data) - names)
    if unknown:
        raise ValueError(f"unknown {what} field(s) {', '.join(map(repr, unknown))}; known: {', '.join(sorted(names))}")
    return dict(data)


# Paper Table 4 rows (and the block-size sweep of Figure 6). The value is the paper's row label.
PRESETS: dict[str, tuple[ResidualConfig, str]] = {
    "baseline": (ResidualConfig("prenorm"), "Baseline (PreNorm)"),
    "denseformer": (ResidualConfig("denseformer"), "DenseFormer"),
    "mhc": (ResidualConfig("mhc"), "mHC (m = 4 streams)"),
    "mhc-lite": (ResidualConfig("mhc_lite"), "mHC-lite (m = 4 streams)"),
    "full": (ResidualConfig("full"), "Full AttnRes"),
    "full-inputq": (ResidualConfig("full", query="input_dependent"), "Full, input-dependent query"),
    "full-static": (ResidualConfig("full", mixing="input_independent"), "Full, input-independent mixing"),
    "full-sigmoid": (ResidualConfig("full", score="sigmoid"), "Full, sigmoid instead of softmax"),
    "full-nokeynorm": (ResidualConfig("full", key_norm="none"), "Full, without RMSNorm on keys"),
    "swa-8": (ResidualConfig("full", window=8), "Sliding window, W = 1 + 8"),
    "block-s2": (ResidualConfig("block", block_size=2), "Block AttnRes, S = 2"),
    "block-s4": (ResidualConfig("block", block_size=4), "Block AttnRes, S = 4 (N = 8)"),
    "block-s8": (ResidualConfig("block", block_size=8), "Block AttnRes, S = 8"),
    "block-s16": (ResidualConfig("block", block_size=16), "Block AttnRes, S = 16"),
    "block-s32": (ResidualConfig("block", block_size=32), "Block AttnRes, S = 32"),
    "block-n8": (ResidualConfig("block", num_blocks=8), "Block AttnRes, N = 8"),
    "block-mh16": (ResidualConfig("block", block_size=4, heads=16), "Block, multihead H = 16"),
    "block-nokeynorm": (ResidualConfig("block", block_size=4, key_norm="none"), "Block, without RMSNorm on keys"),
}


def preset(name: str, **overrides: Any) -> ResidualConfig:
    """The residual rule of a named preset, optionally with some fields changed."""
    try:
        cfg = PRESETS[name][0]
    except KeyError:
        raise ValueError(f"unknown preset {name!r}; known presets: {', '.join(PRESETS)}") from None
    return replace(cfg, **overrides) if overrides else cfg


def preset_label(name: str) -> str:
    return PRESETS[name][1] if name in PRESETS else name
