"""``attnres-search launch``: one worker process per GPU (or N CPU workers) on one study.

The workers are ordinary ``attnres-search worker`` processes: they share nothing but the
storage, so the same study can also be joined by workers on other machines. This module
only starts them, shows their combined progress (read back from the storage, the single
source of truth), forwards Ctrl-C, and reports how each one ended. It schedules nothing:
which trial runs where is decided by Optuna's atomic claim of WAITING trials.
"""

from __future__ import annotations

import contextlib
import os
import signal
import subprocess
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Sequence

from rich.console import Console
from rich.live import Live
from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn
from rich.table import Table

from attnres_search.errors import BadInput

if TYPE_CHECKING:
    from attnres_search.study.handle import StudyHandle
    from attnres_search.study.time_limit import TimeLimit

STOP_GRACE_S = 30.0


@dataclass
class WorkerProcess:
    index: int
    device: str | None  # CUDA_VISIBLE_DEVICES value, None for a CPU worker
    log_path: Path
    popen: subprocess.Popen = field(repr=False)

    @property
    def label(self) -> str:
        return f"gpu {self.device}" if self.device is not None else f"cpu {self.index}"

    def describe_exit(self) -> str:
        rc = self.popen.returncode
        if rc is None:
            return "running"
        if rc == 0:
            return "finished"
        if rc < 0:
            return f"killed by {signal.Signals(-rc).name}"
        return f"exit {rc}"


def check_gpus(gpus: list[str]) -> None:
    """``--gpus`` names GPUs this machine has: without CUDA, the workers would silently run
    on the CPU under a "gpu N" label. Indices are checked against the devices CUDA sees
    when ``$CUDA_VISIBLE_DEVICES`` does not already narrow them."""
    import torch

    if not torch.cuda.is_available():
        raise BadInput(f"--gpus {','.join(gpus)}: CUDA is not available on this machine "
                       "(use --workers N for CPU workers)")
    if not os.environ.get("CUDA_VISIBLE_DEVICES"):
        count = torch.cuda.device_count()
        absent = [g for g in gpus if int(g) >= count]
        if absent:
            raise BadInput(f"--gpus: no GPU {absent[0]} on this machine (it has {count}: 0..{count - 1})")


def worker_command(study: str, storage_url: str, extra: list[str]) -> list[str]:
    """The command a launched worker runs: this interpreter, so a venv is inherited."""
    return [sys.executable, "-m", "attnres_search", "worker", study, "--storage", storage_url, "--quiet", *extra]


def start_workers(handle: "StudyHandle", *, gpus: list[str] | None, n_cpu: int, log_dir: Path | None = None,
                  extra: Sequence[str] = ()) -> list[WorkerProcess]:
    """Start the workers, each in its own process group so Ctrl-C reaches them only through
    :func:`stop_workers` (and each gets the whole grace period to fail its trial cleanly).
    ``gpus`` holds one CUDA_VISIBLE_DEVICES value per worker; logs go to ``log_dir``
    (default: the study's logs folder)."""
    log_dir = log_dir or handle.logs_dir
    log_dir.mkdir(parents=True, exist_ok=True)
    devices: list[str | None] = list(gpus) if gpus else [None] * n_cpu
    threads = max(1, (os.cpu_count() or 1) // len(devices))
    workers = []
    for i, device in enumerate(devices):
        env = dict(os.environ)
        # A CPU worker must not grab a GPU it was not given; each gets its share of cores.
        env["CUDA_VISIBLE_DEVICES"] = device if device is not None else ""
        env.setdefault("OMP_NUM_THREADS", str(threads))
        log_path = log_dir / f"worker-{i}.log"
        log = open(log_path, "ab")
        popen = subprocess.Popen(worker_command(handle.name, handle.url, list(extra)), env=env, stdout=log,
                                 stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL, start_new_session=True)
        log.close()
        workers.append(WorkerProcess(i, device, log_path, popen))
    return workers


def stop_workers(workers: list[WorkerProcess], grace_s: float = STOP_GRACE_S) -> None:
    """SIGINT to every worker, then SIGKILL whatever is still alive after ``grace_s``."""
    for w in workers:
        if w.popen.poll() is None:
            _signal_group(w, signal.SIGINT)
    deadline = time.monotonic() + grace_s
    for w in workers:
        try:
            w.popen.wait(timeout=max(0.0, deadline - time.monotonic()))
        except subprocess.TimeoutExpired:
            _signal_group(w, signal.SIGKILL)
            w.popen.wait()


def _signal_group(w: WorkerProcess, sig: signal.Signals) -> None:
    try:
        os.killpg(w.popen.pid, sig)
    except ProcessLookupError:
        pass


def _status_table(workers: list[WorkerProcess]) -> Table:
    table = Table(title="workers", show_edge=False)
    table.add_column("worker")
    table.add_column("pid", justify="right")
    table.add_column("state")
    table.add_column("log")
    for w in workers:
        state = w.describe_exit()
        style = "green" if state == "finished" else ("yellow" if state == "running" else "red")
        table.add_row(w.label, str(w.popen.pid), f"[{style}]{state}[/]", str(w.log_path))
    return table


def supervise(workers: list[WorkerProcess], handle: "StudyHandle", *,
              console: Console, quiet: bool = False, poll_s: float = 2.0, time_limit: "TimeLimit | None" = None) -> int:
    """Show combined progress until every worker exits; Ctrl-C (or any error here) stops
    them all cleanly. Returns 0 when every worker finished cleanly, 130 when interrupted,
    1 otherwise. ``time_limit``: the workers' own (they stop themselves at its deadline);
    one still running :data:`STOP_GRACE_S` after it is stopped like Ctrl-C would."""
    interrupted = False
    previous = signal.signal(signal.SIGTERM, _raise_interrupt)  # preemption stops workers like Ctrl-C
    try:
        _watch(workers, handle, console=console, quiet=quiet, poll_s=poll_s, time_limit=time_limit)
    except KeyboardInterrupt:
        interrupted = True
        console.print(f"[yellow]interrupted: stopping {len(workers)} workers (up to {STOP_GRACE_S:.0f}s)[/]")
    finally:
        signal.signal(signal.SIGTERM, previous)
        stop_workers(workers)  # a no-op for workers that already exited
    if quiet:
        for w in workers:
            console.print(f"{w.label}: {w.describe_exit()} (log {w.log_path})")
    else:
        console.print(_status_table(workers))
    if interrupted:
        return 130
    return 0 if all(w.popen.returncode == 0 for w in workers) else 1


def _raise_interrupt(signum: int, frame: object) -> None:
    raise KeyboardInterrupt


def _watch(workers: list[WorkerProcess], handle: "StudyHandle", *, console: Console, quiet: bool,
           poll_s: float, time_limit: "TimeLimit | None" = None) -> None:
    """Poll until every worker has exited (or overran ``time_limit``), redrawing the
    progress read from the storage."""
    progress = Progress(TextColumn("[bold]{task.description}"), BarColumn(), MofNCompleteColumn(),
                        TextColumn("{task.fields[detail]}"), TimeElapsedColumn(), console=console)
    task = progress.add_task(handle.name, total=None, detail="")

    def refresh() -> None:
        status = handle.status()
        progress.update(task, completed=status.done, total=status.total,
                        detail=f"running {status.running}, failed {status.failed}")

    refresh()
    display = contextlib.nullcontext() if quiet else Live(progress, console=console, refresh_per_second=2)
    with display:
        while any(w.popen.poll() is None for w in workers):
            if time_limit is not None and time_limit.left() < -STOP_GRACE_S:
                console.print("[yellow]time limit: a worker overran its deadline; stopping the workers[/]")
                break  # supervise stops them
            time.sleep(poll_s)
            refresh()
        refresh()
