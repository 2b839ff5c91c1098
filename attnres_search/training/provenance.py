"""Where a result came from: the code's git commit, the versions of the packages that
shape the numbers, and the hardware that trained it. Stored with every run so a report can
say what produced each row.

The hardware matters for the bits: the same seed, commit and software give the same final
loss on one machine, but a different CPU (another BLAS kernel per instruction set) rounds
differently and training amplifies that to ~0.01 nats, the size of the effects studied."""

from __future__ import annotations

import contextlib
import functools
import importlib.metadata
import os
import platform
import subprocess
from pathlib import Path

import torch

VERSIONED_PACKAGES = ("torch", "lightning", "optuna", "triton", "numpy", "attnres-search")


def versions() -> dict[str, str]:
    """Python's and each installed package's version (missing packages are left out)."""
    found = {"python": platform.python_version()}
    for name in VERSIONED_PACKAGES:
        with contextlib.suppress(importlib.metadata.PackageNotFoundError):
            found[name] = importlib.metadata.version(name)
    return found


@functools.cache
def git_commit() -> str | None:
    """The commit of the checkout this package runs from, with ``+dirty`` when tracked files
    differ from it (the code that ran is then not that commit); None outside a git checkout.

    Read once per process: a worker imports the code when it starts, and commits that land
    in the checkout while it trains do not change what it runs. Reading HEAD again after
    each run would credit a run to code it never executed. Workers call this when they
    start (:func:`attnres_search.study.worker.run_worker`), so the first run is covered too."""
    head = _git("rev-parse", "HEAD")
    if not head:
        return None
    changed = _git("status", "--porcelain", "--untracked-files=no")
    return f"{head}+dirty" if changed else head


def _git(*args: str) -> str | None:
    """``git ARGS`` in this package's folder: its stripped output, None when git fails."""
    try:
        out = subprocess.run(["git", *args], cwd=Path(__file__).resolve().parent, capture_output=True, text=True,
                             timeout=5, check=True)
    except (OSError, subprocess.SubprocessError):
        return None
    return out.stdout.strip()


def device_name(device: torch.device) -> str:
    """The GPU's marketing name (``NVIDIA H100 80GB HBM3``), else the device type."""
    return torch.cuda.get_device_name(device) if device.type == "cuda" else device.type


def cpu_model() -> str:
    """The CPU's model name as the OS reports it (``/proc/cpuinfo`` on Linux, sysctl on macOS),
    else :func:`platform.processor`, else the architecture."""
    with contextlib.suppress(OSError):
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            key, _, value = line.partition(":")
            if key.strip() in ("model name", "Model", "cpu model") and value.strip():
                return value.strip()
    if platform.system() == "Darwin":
        with contextlib.suppress(OSError, subprocess.SubprocessError):
            out = subprocess.run(["sysctl", "-n", "machdep.cpu.brand_string"], capture_output=True, text=True,
                                 timeout=5, check=True)
            if out.stdout.strip():
                return out.stdout.strip()
    return platform.processor() or platform.machine() or "unknown"


def hardware(device: torch.device) -> dict[str, str]:
    """What the numbers of a run depend on below the software: the CPU model and the
    instruction set torch dispatches its CPU kernels to (``torch.backends.cpu.get_cpu_capability``),
    the core count, and on a GPU its name, compute capability, driver and CUDA version."""
    info = {"cpu": cpu_model(), "cpu_capability": torch.backends.cpu.get_cpu_capability(),
            "machine": platform.machine(), "cpu_count": str(os.cpu_count() or 0)}
    if device.type == "cuda":
        major, minor = torch.cuda.get_device_capability(device)
        info.update({"gpu": torch.cuda.get_device_name(device), "gpu_capability": f"{major}.{minor}",
                     "cuda": str(torch.version.cuda), "driver": gpu_driver() or "unknown"})
    return info


def gpu_driver() -> str | None:
    """The NVIDIA driver version from ``nvidia-smi`` (torch does not expose it); None without one."""
    try:
        out = subprocess.run(["nvidia-smi", "--query-gpu=driver_version", "--format=csv,noheader"],
                             capture_output=True, text=True, timeout=10, check=True)
    except (OSError, subprocess.SubprocessError):
        return None
    return out.stdout.strip().splitlines()[0] if out.stdout.strip() else None


def hardware_label(info: dict[str, str] | None) -> str:
    """One line for tables: ``GPU (driver, CUDA) / CPU [capability]``; ``unrecorded`` for older runs."""
    if not info:
        return "unrecorded"
    cpu = f"{info.get('cpu', '?')} [{info.get('cpu_capability', '?')}]"
    if "gpu" in info:
        return f"{info['gpu']} (driver {info.get('driver', '?')}, CUDA {info.get('cuda', '?')}) / {cpu}"
    return cpu
