"""Trials over several ``srun`` ranks: rank 0 runs the worker loop, the others follow it.

Under ``launch --slurm`` a trial of K > 1 devices is K processes that ``srun`` started (one
per device, on one node or several), and Lightning's ``SLURMEnvironment`` sets up DDP from
Slurm's variables. Only rank 0 talks to Optuna (it is an ordinary worker, whose runner
is wrapped by :func:`leading_runner`); before training each trial it publishes the trial's
resolved run config on a :class:`Board` in the shared logs folder, and every other rank
(:func:`follow`) trains the same config as its own rank, then waits for the next one. The
ranks never touch the study, so they cannot disagree on what Optuna decided; as with
:mod:`attnres_search.training.ddp`, caller callbacks (pruning, step progress) stay off,
since a pruning decision taken on rank 0 alone would leave the others waiting.

The board is one folder per array task and restart (``ranks-<job>-<restart>``), holding
``trial-<n>.json`` files written atomically and a ``stop`` file when rank 0's worker is done.
"""

from __future__ import annotations

import json
import os
import time
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

ENV_RANKS = "ATTNRES_SLURM_RANKS"  # set by the batch script when srun starts one process per device
STOP = "stop"


def srun_ranks() -> bool:
    """True in a process that ``srun`` started as one rank of a multi-device trial."""
    return os.environ.get(ENV_RANKS) == "1" and "SLURM_PROCID" in os.environ


def rank() -> int:
    return int(os.environ.get("SLURM_PROCID", "0"))


def adopt_slurm_rank() -> None:
    """Name this process's rank in torch.distributed's terms, from Slurm's: then
    :func:`attnres_search.training.run` trains in-process as that rank (it does not spawn
    ranks of its own) and Lightning's ``SLURMEnvironment`` wires up the process group."""
    env = os.environ
    env["RANK"] = env["SLURM_PROCID"]
    env["WORLD_SIZE"] = env["SLURM_NTASKS"]
    env["LOCAL_RANK"] = env.get("SLURM_LOCALID", "0")
    env["NODE_RANK"] = env.get("SLURM_NODEID", "0")


class Board:
    """Where rank 0 posts the trials its followers train (a folder on the shared file system)."""

    def __init__(self, logs_dir: Path) -> None:
        job = os.environ.get("SLURM_JOB_ID", "local")
        self.path = Path(logs_dir) / f"ranks-{job}-{os.environ.get('SLURM_RESTART_COUNT', '0')}"

    def post(self, seq: int, cfg: dict[str, Any]) -> None:
        self.path.mkdir(parents=True, exist_ok=True)
        tmp = self.path / f".trial-{seq}.json.tmp"
        tmp.write_text(json.dumps(cfg))
        tmp.replace(self.path / f"trial-{seq}.json")  # atomic: a follower never reads half a file

    def stop(self) -> None:
        self.path.mkdir(parents=True, exist_ok=True)
        (self.path / STOP).touch()

    def next(self, seq: int, poll_s: float = 0.5) -> dict[str, Any] | None:
        """Trial ``seq``'s config once posted; None once rank 0 stopped without posting it."""
        posted = self.path / f"trial-{seq}.json"
        while True:
            if posted.exists():
                return json.loads(posted.read_text())
            if (self.path / STOP).exists():
                return None
            time.sleep(poll_s)


Runner = Callable[..., Any]


def leading_runner(board: Board, runner: Runner) -> Runner:
    """Rank 0's runner: post each trial's config, then train it as rank 0."""
    seq = 0

    def run(cfg: Any, *, callbacks: Sequence[Any] = (), progress: bool | None = False, **kw: Any) -> Any:
        nonlocal seq
        board.post(seq, cfg.to_dict())
        seq += 1
        return runner(cfg, progress=False, **kw)  # callbacks stay on the worker's side (see module doc)

    return run


def follow(board: Board, runner: Runner | None = None) -> int:
    """A rank > 0: train every trial rank 0 posts, until it stops. A failed run is rank 0's
    to record; this rank goes on with the next trial. SIGTERM (:class:`RunInterrupted`)
    ends it like the worker. Returns how many trials it trained."""
    from attnres_search.training.config import RunConfig

    if runner is None:
        from attnres_search.training.run import run as runner
    seq = 0
    while (posted := board.next(seq)) is not None:
        try:
            runner(RunConfig.from_dict(posted), progress=False)
        except Exception:  # noqa: BLE001 - rank 0 stores the reason; the ranks stay in step
            pass
        seq += 1
    return seq
