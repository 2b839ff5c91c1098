"""What every Triton kernel of the depth-attention shares: whether the kernels were defined
for Triton's CPU interpreter, how a tile is sized, and the per-source logit.

Its own module so that :mod:`.runtime` can ask "are the kernels interpreted?" without
importing the fused kernels (which import :mod:`.runtime` for allocation): the dependency
runs one way, ``fused``/``two_phase_triton`` -> ``runtime`` -> (lazily) ``triton_base``.
Importing this module imports Triton.
"""

from __future__ import annotations

import triton
import triton.language as tl


@triton.jit
def logit(v, u, inv_dh, eps, HAS_GAIN: tl.constexpr):
    """Logit ``s`` and inverse RMS ``r`` of a ``[BLOCK_T, BLOCK_D]`` tile of one source."""
    dot = tl.sum(v * u[None, :], axis=1)
    if HAS_GAIN:
        r = tl.rsqrt(tl.sum(v * v, axis=1) * inv_dh + eps)
    else:
        r = tl.full(dot.shape, 1.0, tl.float32)
    return dot * r, r


INTERPRETED: bool = not isinstance(logit, triton.runtime.jit.JITFunction)
"""True when the kernels were defined for Triton's CPU interpreter (``TRITON_INTERPRET=1``
was set when Triton first defined a kernel in this process)."""


def block_rows(block_d: int, n_tokens: int, tile_elems: int = 1024) -> int:
    """Tokens per program: about ``tile_elems`` elements of each source per program, which
    measured best on an H100 (one token per program from d = 1024 up). The interpreter gets
    tiny tiles so CPU tests cover several programs and the masked tail."""
    if INTERPRETED:
        return 4
    rows = max(1, tile_elems // block_d)
    return min(rows, triton.next_power_of_2(max(n_tokens, 1)))


def num_warps(block_t: int, block_d: int, elems_per_warp: int) -> int:
    """Warps per program. Measured on an H100 with bf16 sources: forward best at ~1024
    elements a warp (d=4096: 4 warps), backward, which holds more tiles live, at ~512."""
    return max(2, min(16, block_t * block_d // elems_per_warp))
