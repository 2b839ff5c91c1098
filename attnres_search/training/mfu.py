"""Model FLOPs utilisation: the training FLOPs a run does per second over what its device
could do at best.

FLOPs are the model's own count (:func:`attnres_search.model.flops.flops_per_token`,
training = 3 x forward, attention context included, so AttnRes rows count their
depth-attention), not the kernels' actual work: recomputation or padding never raises MFU.

The peak is the dense (no sparsity) bf16 tensor-core figure of the device's datasheet,
looked up by CUDA's device name in :data:`BF16_DENSE_TFLOPS`, or given (``--peak-tflops``).
Lightning has such a table too (``lightning.fabric.utilities.throughput``), but it mixes
dense and 2:4-sparse figures (an H200 at 2000 TFLOP/s, an H100 at 989) and reads an
RTX 4090's fp32 rate as its bf16 peak, so its MFU would not compare across GPUs. A CPU has
no such figure: its MFU is reported only with a given peak.
"""

from __future__ import annotations

import re
from dataclasses import dataclass

# Dense bf16 tensor TFLOP/s (FP32 accumulate), from NVIDIA's and AMD's datasheets. Patterns
# are matched in order against torch.cuda.get_device_name() in lower case: specific first.
BF16_DENSE_TFLOPS: tuple[tuple[str, str, float], ...] = (
    (r"\bgh200\b", "GH200", 989.0),
    (r"\bh200 nvl\b", "H200 NVL", 835.0),
    (r"\bh200\b", "H200", 989.0),
    (r"\bh100 nvl\b", "H100 NVL", 835.0),
    (r"\bh100 pcie\b", "H100 PCIe", 756.0),
    (r"\bh100\b", "H100 SXM", 989.0),
    (r"\bh800\b", "H800", 989.0),
    (r"\bb200\b", "B200", 2250.0),
    (r"\ba100\b", "A100", 312.0),
    (r"\ba800\b", "A800", 312.0),
    (r"\ba10g\b", "A10G", 70.0),  # AWS's A10G; the A10 datasheet's 125 is for the full-clock A10
    (r"\ba10\b", "A10", 125.0),
    (r"\bl40s\b", "L40S", 362.0),
    (r"\bl40\b", "L40", 181.0),
    (r"\bl4\b", "L4", 121.0),
    (r"\brtx 4090\b", "RTX 4090", 165.2),
    (r"\brtx 3090\b", "RTX 3090", 71.0),
    (r"\brtx a6000\b", "RTX A6000", 154.8),
    (r"\brtx 6000 ada\b", "RTX 6000 Ada", 364.2),
    (r"\bmi300x\b", "MI300X", 1307.4),
)


@dataclass(frozen=True)
class Peak:
    """A device's peak in TFLOP/s and where the figure came from (for the reader)."""

    tflops: float
    source: str  # "table: H200" or "--peak-tflops"


def table_peak(device_name: str) -> Peak | None:
    """The table's dense bf16 peak for a CUDA device name, or None for a device not in it."""
    name = device_name.lower()
    for pattern, label, tflops in BF16_DENSE_TFLOPS:
        if re.search(pattern, name):
            return Peak(tflops, f"table: {label}")
    return None


def device_peak(device_type: str, device_name: str, given_tflops: float | None) -> Peak | None:
    """The peak to divide by: ``given_tflops`` (``--peak-tflops``) when set, else on CUDA
    the table's figure for ``device_name``; None on a CPU without a given peak and on a
    GPU the table does not know."""
    if given_tflops is not None:
        return Peak(given_tflops, "--peak-tflops")
    if device_type == "cuda":
        return table_peak(device_name)
    return None


def achieved_tflops(flops_per_token: float, tokens_per_s: float) -> float:
    """Training TFLOP/s a run achieved: its model FLOPs per token times its tokens per second."""
    return flops_per_token * tokens_per_s / 1e12


def mfu(flops_per_token: float, tokens_per_s: float, peak: Peak, devices: int = 1) -> float:
    """The fraction of ``devices`` devices' peak that ``tokens_per_s`` tokens a second of
    ``flops_per_token`` training FLOPs each make up."""
    return achieved_tflops(flops_per_token, tokens_per_s) / (peak.tflops * devices)


def mfu_text(value: float | None, peak: Peak | None) -> str:
    """``"41.3% of 989 TFLOP/s (table: H200)"`` for a table, ``""`` without a peak."""
    if value is None or peak is None:
        return ""
    return f"{100 * value:.1f}% of {peak.tflops:g} TFLOP/s ({peak.source})"


def run_mfu(flops_per_token: float, tokens_per_s: float, device_name: str, devices: int,
            given_tflops: float | None) -> tuple[Peak | None, float | None]:
    """``(peak, mfu)`` of a finished run from what it recorded (its device's name, as
    :func:`attnres_search.training.provenance.device_name` writes it: the GPU's name, else
    the device type; its tokens per second over all ``devices``); ``(None, None)`` without a peak."""
    device_type = device_name if device_name in ("cpu", "mps", "xla") else "cuda"
    peak = device_peak(device_type, device_name, given_tflops)
    if peak is None or tokens_per_s <= 0:
        return peak, None
    return peak, mfu(flops_per_token, tokens_per_s, peak, devices)
