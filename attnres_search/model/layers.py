"""The Llama-style building blocks: RMSNorm, rotary embeddings, causal attention and
SwiGLU. Each sublayer owns its pre-norm and returns its raw output f_i = F_i(Norm_i(h_i));
what is done with f_i is the residual rule's business, never the sublayer's."""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from torch import Tensor, nn


def rms_normalize(x: Tensor, eps: float) -> Tensor:
    """x / RMS(x) with fp32 statistics, in x's dtype."""
    xf = x.float() if x.dtype in (torch.float16, torch.bfloat16) else x
    return (xf * torch.rsqrt(xf.pow(2).mean(-1, keepdim=True) + eps)).to(x.dtype)


class RMSNorm(nn.Module):
    def __init__(self, dim: int, eps: float = 1e-6) -> None:
        super().__init__()
        self.eps = eps
        self.weight = nn.Parameter(torch.ones(dim))

    def forward(self, x: Tensor) -> Tensor:
        return rms_normalize(x, self.eps) * self.weight


class Rotary(nn.Module):
    """Rotary position embedding tables, precomputed up to the model's context length."""

    def __init__(self, head_dim: int, seq_len: int, theta: float) -> None:
        super().__init__()
        inv_freq = 1.0 / (theta ** (torch.arange(0, head_dim, 2, dtype=torch.float64) / head_dim))
        angles = torch.outer(torch.arange(seq_len, dtype=torch.float64), inv_freq)
        self.register_buffer("cos", angles.cos().float(), persistent=False)
        self.register_buffer("sin", angles.sin().float(), persistent=False)

    def forward(self, x: Tensor) -> Tensor:
        """Rotate ``x[B, H, T, hd]`` (pairs are the two halves of the head dimension)."""
        t = x.shape[-2]
        if t > self.cos.shape[0]:
            raise ValueError(f"sequence length {t} exceeds the model's seq_len {self.cos.shape[0]}")
        cos, sin = self.cos[:t].to(x.dtype), self.sin[:t].to(x.dtype)
        x1, x2 = x.chunk(2, dim=-1)
        return torch.cat([x1 * cos - x2 * sin, x1 * sin + x2 * cos], dim=-1)


class Attention(nn.Module):
    def __init__(self, d_model: int, n_heads: int, rotary: Rotary, eps: float) -> None:
        super().__init__()
        self.n_heads = n_heads
        self.norm = RMSNorm(d_model, eps)
        self.qkv = nn.Linear(d_model, 3 * d_model, bias=False)
        self.out = nn.Linear(d_model, d_model, bias=False)
        self.rotary = rotary

    def forward(self, h: Tensor) -> Tensor:
        b, t, d = h.shape
        q, k, v = self.qkv(self.norm(h)).view(b, t, 3, self.n_heads, d // self.n_heads).permute(2, 0, 3, 1, 4)
        q, k = self.rotary(q), self.rotary(k)
        y = F.scaled_dot_product_attention(q, k, v, is_causal=True)
        return self.out(y.transpose(1, 2).reshape(b, t, d))


class SwiGLU(nn.Module):
    def __init__(self, d_model: int, d_ff: int, eps: float) -> None:
        super().__init__()
        self.norm = RMSNorm(d_model, eps)
        self.gate_up = nn.Linear(d_model, 2 * d_ff, bias=False)
        self.out = nn.Linear(d_ff, d_model, bias=False)

    def forward(self, h: Tensor) -> Tensor:
        gate, up = self.gate_up(self.norm(h)).chunk(2, dim=-1)
        return self.out(F.silu(gate) * up)


def init_sublayer_(module: nn.Module, n_sublayers: int, std: float = 0.02) -> None:
    """GPT-2 style: normal(0, std) for input projections, scaled by 1/sqrt(L) for the output
    projection, so the baseline's residual stream does not blow up with depth at init."""
    for name, p in module.named_parameters():
        if p.dim() == 2:
            scale = 1 / math.sqrt(n_sublayers) if name.startswith("out") else 1.0
            nn.init.normal_(p, 0.0, std * scale)
