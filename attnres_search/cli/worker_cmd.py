"""``attnres-search worker`` and ``launch``: spread one study over GPUs, cores and machines.

Workers coordinate only through the storage (see :mod:`attnres_search.study.worker`), so the same
two commands scale from one laptop to several machines sharing a PostgreSQL URL.
"""

from __future__ import annotations

from pathlib import Path

import click

from attnres_search.cli.errors import BadInput
from attnres_search.cli.study_cmd import open_handle, quiet_optuna, quiet_option, run_and_summarize, storage_option

DEVICES_HELP = "GPUs (or CPU processes) per trial; above 1 each trial runs Lightning DDP with rank 0 reporting."


@click.command()
@click.argument("name")
@storage_option
@click.option("--n-trials", type=click.IntRange(min=1), default=None, help="Stop after this many trials here.")
@click.option("--devices-per-trial", type=click.IntRange(min=1), default=1, show_default=True, help=DEVICES_HELP)
@quiet_option
def worker(name: str, storage: str | None, n_trials: int | None, devices_per_trial: int, quiet: bool) -> None:
    """Join study NAME and run its trials until the space is exhausted.

    Start as many as you like, on any machine that reaches the storage: each trial is
    claimed by exactly one worker, and a worker that dies has its trial retried (from its
    last checkpoint) once its heartbeat goes stale.
    """
    quiet_optuna()
    run_and_summarize(open_handle(name, storage, "write"), n_trials=n_trials, quiet=quiet,
                      devices_per_trial=devices_per_trial)


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
              help="Number of CPU workers (machines without GPUs) [default: 1].")
@click.option("--devices-per-trial", type=click.IntRange(min=1), default=1, show_default=True, help=DEVICES_HELP)
@click.option("--log-dir", type=click.Path(file_okay=False, path_type=Path), default=None,
              help="Worker logs [default: runs/<study>/logs beside the storage].")
@quiet_option
def launch(name: str, storage: str | None, gpus: str | None, n_workers: int | None, devices_per_trial: int,
           log_dir: Path | None, quiet: bool) -> None:
    """Start workers for study NAME on this machine and show their combined progress.

    Ctrl-C stops every worker (its running trial is marked failed and re-run by
    `study resume`); each worker's exit is reported at the end.
    """
    import sys

    from attnres_search.cli.terminal import stdout_console
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
    extra = ["--devices-per-trial", str(devices_per_trial)] if devices_per_trial > 1 else []
    workers = start_workers(handle, gpus=groups, n_cpu=n_workers or 1, log_dir=log_dir, extra=extra)
    sys.exit(supervise(workers, handle, console=stdout_console(), quiet=quiet))
