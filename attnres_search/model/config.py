"""The decoder's shape. Validation happens here, once, with errors that name the field: a
bad value must never reach a half-built model. The residual rule's own fields and checks
live with the rule (:mod:`attnres_search.residual`)."""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass, field, fields
from typing import Any

from attnres_search.residual import PRESETS, ResidualConfig, preset, preset_label, spec_for  # noqa: F401

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
        spec_for(self.residual).check(self.residual, self.n_sublayers, self.d_model)

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
    def from_dict(cls, data: dict[str, Any], *, lenient: bool = False) -> "ModelConfig":
        """``lenient`` reads residual configs stored before each rule had its own fields."""
        names = {f.name for f in fields(cls)}
        unknown = sorted(set(data) - names)
        if unknown:
            raise ValueError(f"unknown model field(s) {', '.join(map(repr, unknown))}; known: {', '.join(sorted(names))}")
        data = dict(data)
        if "residual" in data and isinstance(data["residual"], dict):
            data["residual"] = ResidualConfig.from_dict(data["residual"], lenient=lenient)
        return cls(**data)


