"""Trials that use several devices: Lightning DDP inside one study trial.

The process that called :func:`attnres_search.training.run` (a study worker, which alone
talks to Optuna) spawns one process per device; each sets the torch.distributed
environment and runs the ordinary single-process training path, where Lightning sees
processes created externally and runs its DDP strategy (gloo on CPU, NCCL on GPU). Rank 0
writes ``run.json``; the caller reads it back. The ranks never touch the study, so they
cannot diverge on what Optuna decided; caller-side callbacks (pruning, progress) do not
cross the process boundary, so multi-device trials are neither pruned nor shown step by step.

The rank's entry point is passed in (:func:`attnres_search.training.run.run` passes
itself), so this module imports nothing from the run it serves: no import cycle.
"""

from __future__ import annotations

import dataclasses
import json
import os
import socket
import tempfile
from collections.abc import Callable
from pathlib import Path
from typing import Any

import torch.multiprocessing as mp

from attnres_search.training.config import RunConfig, RunResult

_RANK_ENV = ("MASTER_ADDR", "MASTER_PORT", "WORLD_SIZE", "RANK", "LOCAL_RANK", "NODE_RANK")


def inside_launched_rank() -> bool:
    """True in a process that this module (or torchrun) started as one DDP rank."""
    return "LOCAL_RANK" in os.environ and "WORLD_SIZE" in os.environ


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


RankEntry = Callable[..., Any]  # called as entry(cfg, progress=False) in each rank


def _rank_main(rank: int, entry: RankEntry, cfg: RunConfig, port: int) -> None:
    os.environ.update(MASTER_ADDR="127.0.0.1", MASTER_PORT=str(port), WORLD_SIZE=str(cfg.devices),
                      RANK=str(rank), LOCAL_RANK=str(rank), NODE_RANK="0")
    entry(cfg, progress=False)


def run_ddp(cfg: RunConfig, entry: RankEntry) -> RunResult:
    """Run ``entry(cfg)`` on ``cfg.devices`` processes and return rank 0's result.

    ``entry`` must be a module-level function (it is pickled by name into spawned ranks)."""
    with tempfile.TemporaryDirectory(prefix="attnres-ddp-") as tmp:
        out_dir = cfg.out_dir or tmp
        cfg = dataclasses.replace(cfg, out_dir=out_dir)
        result_path = Path(out_dir) / "run.json"
        result_path.unlink(missing_ok=True)
        saved = {k: os.environ.pop(k) for k in _RANK_ENV if k in os.environ}
        try:
            mp.start_processes(_rank_main, args=(entry, cfg, _free_port()), nprocs=cfg.devices, join=True,
                               start_method="spawn")
        except mp.ProcessRaisedException as exc:
            reason = str(exc).strip().splitlines()[-1]
            raise RuntimeError(f"a DDP rank failed: {reason}") from None
        except mp.ProcessExitedException as exc:
            raise RuntimeError(f"a DDP rank died: {exc}") from None
        finally:
            os.environ.update(saved)
        return RunResult.from_dict(json.loads(result_path.read_text()))
