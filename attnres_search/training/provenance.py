"""Where a result came from: the code's git commit, the versions of the packages that
shape the numbers, and the device that trained it. Stored with every run so a report can
say what produced each row."""

from __future__ import annotations

import contextlib
import importlib.metadata
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


def git_commit() -> str | None:
    """The commit of the checkout this package runs from; None outside a git checkout."""
    try:
        out = subprocess.run(
            ["git", "rev-parse", "HEAD"],
            cwd=Path(__file__).resolve().parent,
            capture_output=True,
            text=True,
            timeout=5,
            check=True,
        )
    except (OSError, subprocess.SubprocessError):
        return None
    return out.stdout.strip() or None


def device_name(device: torch.device) -> str:
    """The GPU's marketing name (``NVIDIA H100 80GB HBM3``), else the device type."""
    return torch.cuda.get_device_name(device) if device.type == "cuda" else device.type
