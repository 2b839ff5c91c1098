"""``attnres-search worker`` and ``launch``: spread one study over GPUs, cores and machines.

Workers coordinate only through the storage (see :mod:`attnres_search.study.worker`), so the same
two commands scale from one laptop to several machines sharing a PostgreSQL URL.
"""

from __future__ import annotations

from pathlib import Path
from typing import TYPE_CHECKING

import click

from attnres_search.cli.errors import BadInput
from attnres_search.cli.options import time_limit_option
from attnres_search.cli.study_cmd import open_handle, quiet_optuna, quiet_option, run_and_summarize, storage_option

if TYPE_CHECKING:
    from attnres_search.study.handle import StudyHandle

DEVICES_HELP = "GPUs (or CPU processes) per trial; above 1 each trial runs Lightning DDP with rank 0 reporting."


@click.command()
@click.argument("name")
@storage_option
@click.option("--n-trials", type=click.IntRange(min=1), default=None, help="Stop after this many trials here.")
@click.option("--devices-per-trial", type=click.IntRange(min=1), default=1, show_default=True, help=DEVICES_HELP)
@time_limit_option
@quiet_option
def worker(name: str, storage: str | None, n_trials: int | None, devices_per_trial: int, time_limit: float | None,
           quiet: bool) -> None:
    """Join study NAME and run its trials until the space is exhausted.

    Start as many as you like, on any machine that reaches the storage: each trial is
    claimed by exactly one worker, and a worker that dies has its trial retried (from its
    last checkpoint) once its heartbeat is older than the study's grace period (`study
    set`). Interrupted cells (Ctrl-C, SIGTERM, a full disk) are run again; failed runs are
    left to `study resume`. With --time-limit the worker fits its trials into an
    allocation and the next one continues where it stopped.
    """
    quiet_optuna()
    handle = open_handle(name, storage, "write")
    from attnres_search.study.slurm_ranks import srun_ranks

    if srun_ranks():  # one of srun's ranks of a multi-device trial under `launch --slurm`
        _slurm_rank(handle, n_trials=n_trials, quiet=quiet, devices_per_trial=devices_per_trial,
                    time_limit=time_limit)
        return
    run_and_summarize(handle, n_trials=n_trials, quiet=quiet, devices_per_trial=devices_per_trial,
                      time_limit=time_limit)


def _slurm_rank(handle: "StudyHandle", *, n_trials: int | None, quiet: bool, devices_per_trial: int,
                time_limit: float | None) -> None:
    """Rank 0 is the worker (its trials posted for the others); the other ranks follow it."""
    from attnres_search.study.slurm_ranks import Board, adopt_slurm_rank, follow, leading_runner, rank
    from attnres_search.training.run import run

    adopt_slurm_rank()
    board = Board(handle.logs_dir)
    if rank() > 0:
        follow(board)
        return
    try:
        run_and_summarize(handle, n_trials=n_trials, quiet=quiet, devices_per_trial=devices_per_trial,
                          runner=leading_runner(board, run), time_limit=time_limit)
    finally:
        board.stop()


def _parse_gpus(value: str | None) -> list[str] | None:
    if value is None:
        return None
    gpus = [g.strip() for g in value.split(",") if g.strip()]
    if not gpus or not all(g.isdigit() for g in gpus):
        raise BadInput(f"--gpus takes comma-separated GPU indices like 0,1,2,3; got {value!r}")
    if len(set(gpus)) != len(gpus):
        raise BadInput(f"--gpus lists a GPU twice: {value!r}")
    return gpus


@click.command()
@click.argument("name")
@storage_option
@click.option("--gpus", default=None, metavar="0,1,2,3", help="One worker per GPU (per group of --devices-per-trial GPUs).")
@click.option("--workers", "n_workers", type=click.IntRange(min=1), default=None,
              help="Number of CPU workers (machines without GPUs; with --slurm: array tasks) [default: 1].")
@click.option("--devices-per-trial", type=click.IntRange(min=1), default=1, show_default=True, help=DEVICES_HELP)
@click.option("--log-dir", type=click.Path(file_okay=False, path_type=Path), default=None,
              help="Worker logs [default: runs/<study>/logs beside the storage].")
@click.option("--slurm", is_flag=True, help="Submit the workers as a Slurm job array instead of starting them here.")
@click.option("--nodes", type=click.IntRange(min=1), default=None, help="--slurm: nodes in all [default: 1].")
@click.option("--gpus-per-node", type=click.IntRange(min=0), default=None,
              help="--slurm: GPUs per node (0: CPU-only workers) [default: 0].")
@click.option("--partition", default=None, help="--slurm: partition (sbatch --partition).")
@click.option("--time", "slurm_time", default=None, metavar="HH:MM:SS",
              help="--slurm: time limit per array task; workers checkpoint and requeue before it "
                   "(their --time-limit is derived from it unless given).")
@click.option("--account", default=None, help="--slurm: account to charge (sbatch --account).")
@click.option("--qos", default=None, help="--slurm: quality of service (sbatch --qos).")
@click.option("--slurm-arg", "slurm_args", multiple=True, metavar="KEY=VALUE",
              help="--slurm: any other sbatch option, e.g. mem=64G or constraint=a100 (repeatable).")
@click.option("--dry-run", is_flag=True, help="--slurm: print the batch script instead of submitting it.")
@time_limit_option
@quiet_option
def launch(name: str, storage: str | None, gpus: str | None, n_workers: int | None, devices_per_trial: int,
           log_dir: Path | None, slurm: bool, nodes: int | None, gpus_per_node: int | None, partition: str | None,
           slurm_time: str | None, account: str | None, qos: str | None, slurm_args: tuple[str, ...],
           dry_run: bool, time_limit: float | None, quiet: bool) -> None:
    """Start workers for study NAME on this machine and show their combined progress,
    or with --slurm submit them to Slurm as a job array.

    Ctrl-C stops every local worker (its running trial is failed as interrupted and
    re-queued: launching again continues it from its checkpoint); each worker's exit is
    reported at the end. Slurm workers are
    requeued when preempted and continue their trial from its checkpoint. --time-limit
    goes to every worker (with --slurm it defaults to a little less than --time).
    """
    import sys

    from attnres_search.cli.terminal import stdout_console

    slurm_given = {"--nodes": nodes, "--gpus-per-node": gpus_per_node, "--partition": partition,
                   "--time": slurm_time, "--account": account, "--qos": qos,
                   "--slurm-arg": slurm_args or None, "--dry-run": dry_run or None}
    if slurm:
        if gpus is not None:
            raise BadInput("--gpus is for workers on this machine; with --slurm give --gpus-per-node (Slurm picks the GPUs)")
        _launch_slurm(name, storage, n_workers=n_workers, devices_per_trial=devices_per_trial, log_dir=log_dir,
                      nodes=nodes or 1, gpus_per_node=gpus_per_node or 0, partition=partition, slurm_time=slurm_time,
                      account=account, qos=qos, slurm_args=slurm_args, dry_run=dry_run, time_limit=time_limit)
        return
    stray = [flag for flag, value in slurm_given.items() if value is not None]
    if stray:
        raise BadInput(f"{stray[0]} needs --slurm")

    from attnres_search.study.launch import check_gpus, start_workers, supervise

    gpu_list = _parse_gpus(gpus)
    if gpu_list is not None and n_workers is not None:
        raise BadInput("give --gpus or --workers, not both")
    groups: list[str] | None = None
    if gpu_list is not None:
        check_gpus(gpu_list)
        if len(gpu_list) % devices_per_trial:
            raise BadInput(f"--devices-per-trial {devices_per_trial} does not divide the {len(gpu_list)} GPUs of --gpus")
        groups = [",".join(gpu_list[i : i + devices_per_trial]) for i in range(0, len(gpu_list), devices_per_trial)]
    # A missing study is bad input, found before any process starts; the same handle then feeds the progress.
    handle = open_handle(name, storage, "write")
    handle.enqueue_missing()  # what is left to run, queued once here rather than by each worker at once
    extra = ["--devices-per-trial", str(devices_per_trial)] if devices_per_trial > 1 else []
    limit = None
    if time_limit is not None:
        from attnres_search.study.time_limit import TimeLimit

        limit = TimeLimit(time_limit)
        extra += ["--time-limit", f"{time_limit:g}s"]
    workers = start_workers(handle, gpus=groups, n_cpu=n_workers or 1, log_dir=log_dir, extra=extra)
    rc = supervise(workers, handle, console=stdout_console(), quiet=quiet, time_limit=limit)
    status = handle.status()
    if limit is not None and status.remaining != 0:  # every worker's own line is in its log
        left = f"{status.remaining} left" if status.remaining is not None else "the sampler decides what is left"
        click.echo(f"time limit: {status.done} run(s) done, {left}; launch again to continue "
                   "(re-queued trials continue from their checkpoints)", err=True)
    sys.exit(rc)


def _launch_slurm(name: str, storage: str | None, *, n_workers: int | None, devices_per_trial: int,
                  log_dir: Path | None, nodes: int, gpus_per_node: int, partition: str | None,
                  slurm_time: str | None, account: str | None, qos: str | None, slurm_args: tuple[str, ...],
                  dry_run: bool, time_limit: float | None) -> None:
    """Check everything, then print the batch script (``--dry-run``) or submit it."""
    from attnres_search.cli.terminal import stdout_console
    from attnres_search.study.slurm import SlurmOptions, check_cluster, parse_slurm_args, plan_job, submit
    from attnres_search.study.storage import sqlite_path

    options = SlurmOptions(nodes=nodes, gpus_per_node=gpus_per_node, devices_per_trial=devices_per_trial,
                           workers=n_workers, partition=partition, time=slurm_time, account=account, qos=qos,
                           extra=parse_slurm_args(slurm_args), time_limit_s=time_limit)
    handle = open_handle(name, storage, "read" if dry_run else "write")
    job = plan_job(handle, options, log_dir=log_dir)
    if dry_run:
        click.echo(job.script, nl=False)
        return
    check_cluster(options)
    job_id = submit(job)
    console = stdout_console()
    console.print(f"submitted Slurm job array {job_id}: {job.array_size} worker(s) for study {name} "
                  f"on {handle.shown_url}")
    if sqlite_path(handle.url) is not None:
        console.print("[yellow]note: SQLite storage; every array task must see it on a local disk of one node "
                      "(use PostgreSQL on a real cluster)[/]")
    console.print(f"  follow:  squeue -j {job_id}    attnres-search study status {name}"
                  + (f" --storage '{handle.shown_url}'" if storage else ""))
    console.print(f"  logs:    {job.output_pattern.with_name(f'slurm-{job_id}_<task>.out')}")
    console.print(f"  cancel:  scancel {job_id}")
