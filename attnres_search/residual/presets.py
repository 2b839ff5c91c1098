"""Named residual rules: the paper's Table 4 rows, the block-size sweep of Figure 6, and the
other baselines. The value is the rule and the row label reports print."""

from __future__ import annotations

from dataclasses import replace
from typing import Any

from attnres_search.residual.base import ResidualConfig

R = ResidualConfig

PRESETS: dict[str, tuple[ResidualConfig, str]] = {
    "baseline": (R("prenorm"), "Baseline (PreNorm)"),
    "denseformer": (R("denseformer"), "DenseFormer"),
    "mhc": (R("mhc"), "mHC (m = 4 streams)"),
    "mhc-lite": (R("mhc_lite"), "mHC-lite (m = 4 streams)"),
    "full": (R("full"), "Full AttnRes"),
    "full-inputq": (R("full", query="input_dependent"), "Full, input-dependent query"),
    "full-static": (R("full", mixing="input_independent"), "Full, input-independent mixing"),
    "full-sigmoid": (R("full", score="sigmoid"), "Full, sigmoid instead of softmax"),
    "full-nokeynorm": (R("full", key_norm="none"), "Full, without RMSNorm on keys"),
    "swa-8": (R("full", window=8), "Sliding window, W = 1 + 8"),
    "block-s2": (R("block", block_size=2), "Block AttnRes, S = 2"),
    "block-s4": (R("block", block_size=4), "Block AttnRes, S = 4 (N = 8)"),
    "block-s8": (R("block", block_size=8), "Block AttnRes, S = 8"),
    "block-s16": (R("block", block_size=16), "Block AttnRes, S = 16"),
    "block-s32": (R("block", block_size=32), "Block AttnRes, S = 32"),
    "block-n8": (R("block", num_blocks=8), "Block AttnRes, N = 8"),
    "block-mh16": (R("block", block_size=4, heads=16), "Block, multihead H = 16"),
    "block-nokeynorm": (R("block", block_size=4, key_norm="none"), "Block, without RMSNorm on keys"),
    "rezero": (R("rezero"), "ReZero"),
    "hc": (R("hc"), "Hyper-connections, static (n = 4 streams)"),
    "hc-dynamic": (R("hc", dynamic=True), "Hyper-connections, dynamic (n = 4 streams)"),
    "highway": (R("highway"), "Highway (scalar gate, carry bias -2)"),
}


def register_preset(name: str, config: ResidualConfig, label: str | None = None) -> None:
    """Add a named rule (for rules registered from outside the package)."""
    PRESETS[name] = (config, label or name)


def preset(name: str, **overrides: Any) -> ResidualConfig:
    """The residual rule of a named preset, optionally with some fields changed."""
    try:
        cfg = PRESETS[name][0]
    except KeyError:
        raise ValueError(f"unknown preset {name!r}; known presets: {', '.join(PRESETS)}") from None
    return replace(cfg, **overrides) if overrides else cfg


def preset_label(name: str) -> str:
    return PRESETS[name][1] if name in PRESETS else name
