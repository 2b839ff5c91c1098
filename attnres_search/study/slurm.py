"""``attnres-search launch --slurm``: a study's workers as one Slurm job array.

Slurm already places jobs, hands out GPUs, preempts and requeues; this module only writes
the batch script and submits it with ``sbatch``. Each array task is one ordinary
``attnres-search worker`` (started with ``srun`` so that ``scancel --signal`` and
``--signal`` reach it as a job step), pulling trials from the shared storage until the
space is exhausted: which trial runs where is still decided by Optuna's atomic claim of
WAITING trials, never by this module. ``sbatch`` is called directly rather than through
submitit: the workers are a command line, not a pickled Python function, and the batch
script is exactly what ``--dry-run`` prints.

Preemption: ``#SBATCH --signal=TERM@<grace>`` (and a preempting scheduler, or ``scancel
--signal=TERM``) sends SIGTERM to the worker, whose run writes a checkpoint and exits 143
(:class:`attnres_search.training.run.RunInterrupted`); the trial it left RUNNING stops
beating and is retried by the next worker that looks (it resumes from the checkpoint, the
run folder being keyed by the cell). The batch script sees 143 and requeues its array task
(``scontrol requeue``; the job is submitted with ``--requeue``), which comes back as a
fresh worker.

Time limits: each worker gets ``--time-limit``, given to ``launch`` or derived from
``--time`` (:func:`worker_time_limit_s`: a minute before the SIGTERM the scheduler sends
``SIGNAL_GRACE_S`` ahead of the end). It then claims only trials that fit, checkpoints and
re-queues the one running at its deadline, and exits 0; the next job continues the study.

Layout: ``--nodes`` nodes with ``--gpus-per-node`` GPUs each. A trial of K devices with
K <= G runs on one node, one array task per trial, giving nodes x (G // K) workers; with K > G a trial spans K / G nodes
and there are nodes / (K / G) workers. Either way ``srun`` starts one process per device
(``--ntasks-per-node``), Lightning's ``SLURMEnvironment`` sets up DDP from Slurm's
variables, rank 0 alone runs the worker loop and talks to Optuna, and the other ranks
train the trials it posts (:mod:`attnres_search.study.slurm_ranks`). CPU-only clusters get
``--workers`` array tasks (default: one per node), K ranks each.
"""

from __future__ import annotations

import os
import re
import shlex
import shutil
import subprocess
import sys
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING

from attnres_search.errors import BadInput
from attnres_search.study.slurm_ranks import ENV_RANKS
from attnres_search.study.storage import ENV_URL, display_url, sqlite_path

if TYPE_CHECKING:
    from attnres_search.study.handle import StudyHandle

SIGNAL_GRACE_S = 120  # SIGTERM this long before the time limit: time to write a checkpoint
PREEMPTED_EXIT = 143  # 128 + SIGTERM: what a worker stopped by SIGTERM exits with
SERVER_DB_NEEDED = "use PostgreSQL or another server database for a cluster"

# Directives the layout owns: a --slurm-arg may not set them (it would break the layout silently).
_OWNED = {"array", "nodes", "ntasks", "ntasks-per-node", "gpus-per-node", "gres", "gpus", "gpus-per-task",
          "output", "error", "chdir", "requeue", "no-requeue", "export", "open-mode", "wrap"}
_KEY = re.compile(r"[a-z][a-z0-9-]*")
_TIME = re.compile(r"(\d+-)?\d+(:\d+){0,2}|\d+-\d+")
_DIRECTIVE_VALUE = re.compile(r"[^\s'\"\\`$]*")


@dataclass(frozen=True)
class SlurmOptions:
    """What ``launch --slurm`` was asked for (validated by :func:`plan_job`)."""

    nodes: int = 1
    gpus_per_node: int = 0  # 0: CPU-only workers
    devices_per_trial: int = 1
    workers: int | None = None  # CPU-only: array tasks (default: one per node)
    partition: str | None = None
    time: str | None = None
    account: str | None = None
    qos: str | None = None
    extra: tuple[tuple[str, str | None], ...] = ()  # --slurm-arg KEY=VALUE (KEY alone: a flag)
    time_limit_s: float | None = None  # the workers' --time-limit [default: derived from ``time``]


@dataclass(frozen=True)
class SlurmJob:
    """One planned job array: the batch script and how it was laid out."""

    study: str
    storage_url: str
    array_size: int
    nodes_per_task: int
    ranks_per_node: int  # processes srun starts per node of a task (1 unless a trial spans nodes)
    log_dir: Path
    script: str = field(repr=False)

    @property
    def output_pattern(self) -> Path:
        return self.log_dir / "slurm-%A_%a.out"

    def log_of(self, job_id: str, task: int) -> Path:
        return self.log_dir / f"slurm-{job_id}_{task}.out"


def parse_slurm_args(values: tuple[str, ...]) -> tuple[tuple[str, str | None], ...]:
    """``--slurm-arg KEY=VALUE`` (or ``KEY`` for a flag) into directive pairs."""
    pairs = []
    for raw in values:
        key, sep, value = raw.partition("=")
        key = key.strip().lstrip("-")
        if not _KEY.fullmatch(key):
            raise BadInput(f"--slurm-arg {raw!r}: give KEY=VALUE with an sbatch option name as KEY (e.g. mem=32G)")
        if key in _OWNED:
            raise BadInput(f"--slurm-arg {key}: set by launch --slurm itself (use --nodes, --gpus-per-node, "
                           "--devices-per-trial, --workers or --log-dir)")
        if sep and not _DIRECTIVE_VALUE.fullmatch(value):
            raise BadInput(f"--slurm-arg {raw!r}: the value may not hold spaces, quotes, '\\', '`' or '$'")
        pairs.append((key, value if sep else None))
    return tuple(pairs)


def slurm_time_s(text: str) -> float:
    """Seconds of a Slurm ``--time``: ``M``, ``M:S``, ``H:M:S``, ``D-H``, ``D-H:M`` or ``D-H:M:S``."""
    days, _, clock = text.rpartition("-") if "-" in text else ("", "", text)
    parts = [int(p) for p in clock.split(":")]
    if days:  # after a day count the first field is hours
        seconds = sum(p * 60 ** (2 - i) for i, p in enumerate(parts))
    else:
        seconds = {1: lambda: parts[0] * 60, 2: lambda: parts[0] * 60 + parts[1],
                   3: lambda: parts[0] * 3600 + parts[1] * 60 + parts[2]}[len(parts)]()
    return float(int(days or 0) * 86400 + seconds)


def worker_time_limit_s(slurm_time: str) -> float:
    """The workers' time limit for an array task of Slurm ``--time``: stop a minute before
    the SIGTERM sent ``SIGNAL_GRACE_S`` ahead of the end, but never below half the time."""
    total = slurm_time_s(slurm_time)
    return max(total / 2, total - SIGNAL_GRACE_S - 60)


def plan_job(handle: "StudyHandle", options: SlurmOptions, *, log_dir: Path | None = None,
             workdir: Path | None = None) -> SlurmJob:
    """Validate ``options`` for ``handle``'s study and write the batch script. Raises
    :class:`BadInput` for a layout Slurm could not run or a storage a cluster must not share."""
    o = options
    k, g = o.devices_per_trial, o.gpus_per_node
    if sqlite_path(handle.url) is not None and o.nodes > 1:
        raise BadInput(f"--slurm --nodes {o.nodes} with SQLite storage {handle.shown_url}: {SERVER_DB_NEEDED} "
                       "(SQLite is unsafe on network file systems)")
    if o.time is not None and not _TIME.fullmatch(o.time):
        raise BadInput(f"--time {o.time!r}: use Slurm's format, e.g. 30, 4:00:00 or 2-12:00:00")
    if o.time is not None and o.time_limit_s is not None and o.time_limit_s > slurm_time_s(o.time):
        from attnres_search.units import format_duration

        raise BadInput(f"--time-limit {format_duration(o.time_limit_s)} is longer than --time {o.time}: the "
                       "scheduler would stop the workers first")
    for name, value in (("--partition", o.partition), ("--account", o.account), ("--qos", o.qos)):
        if value is not None and not re.fullmatch(r"[A-Za-z0-9._,-]+", value):
            raise BadInput(f"{name} {value!r}: not a Slurm name")
    if g == 0:
        array_size = o.nodes if o.workers is None else o.workers
        nodes_per_task, ranks_per_node = 1, k
    else:
        if o.workers is not None:
            raise BadInput("--workers is for CPU-only workers; with --gpus-per-node each worker gets "
                           "--devices-per-trial GPUs and their number follows from --nodes")
        if k <= g:
            if g % k:
                raise BadInput(f"--devices-per-trial {k} does not divide --gpus-per-node {g}")
            nodes_per_task, ranks_per_node = 1, k
            array_size = o.nodes * (g // k)
        else:
            if k % g:
                raise BadInput(f"--devices-per-trial {k} spans nodes: it must be a multiple of --gpus-per-node {g}")
            nodes_per_task, ranks_per_node = k // g, g
            if o.nodes % nodes_per_task:
                raise BadInput(f"--nodes {o.nodes} is not a multiple of the {nodes_per_task} nodes one trial of "
                               f"{k} devices needs at {g} GPUs per node")
            if sqlite_path(handle.url) is not None:
                raise BadInput(f"trials across {nodes_per_task} nodes with SQLite storage {handle.shown_url}: "
                               f"{SERVER_DB_NEEDED}")
            array_size = o.nodes // nodes_per_task
    log_dir = (log_dir or handle.logs_dir).resolve()
    workdir = (workdir or Path.cwd()).resolve()
    job = SlurmJob(handle.name, handle.url, array_size, nodes_per_task, ranks_per_node, log_dir, script="")
    return SlurmJob(job.study, job.storage_url, array_size, nodes_per_task, ranks_per_node, log_dir,
                    script=batch_script(job, o, workdir))


def batch_script(job: SlurmJob, o: SlurmOptions, workdir: Path) -> str:
    """The ``sbatch`` script of ``job``. The storage URL is not in it: it reaches the
    workers in ``$ATTNRES_STORAGE`` (exported from the submitting shell), so a password
    never lands in a file Slurm keeps or ``--dry-run`` prints."""
    k, g = o.devices_per_trial, o.gpus_per_node
    directives: list[tuple[str, str | None]] = [
        ("job-name", f"attnres-{job.study}"),
        ("array", f"0-{job.array_size - 1}"),
        ("nodes", str(job.nodes_per_task)),
        ("ntasks-per-node", str(job.ranks_per_node)),
    ]
    if g:
        directives.append(("gpus-per-node", str(min(k, g) if job.nodes_per_task == 1 else g)))
    directives += [
        ("output", str(job.output_pattern)),
        ("open-mode", "append"),  # a requeued task appends to its log
        ("chdir", str(workdir)),
        ("export", "ALL"),
        ("requeue", None),
        ("signal", f"TERM@{SIGNAL_GRACE_S}"),
    ]
    for key, value in (("partition", o.partition), ("time", o.time), ("account", o.account), ("qos", o.qos)):
        if value is not None:
            directives.append((key, value))
    for key, value in o.extra:  # --slurm-arg replaces a generated directive of the same name
        directives = [d for d in directives if d[0] != key] + [(key, value)]
    worker = [sys.executable, "-m", "attnres_search", "worker", job.study, "--quiet"]
    if k > 1:
        worker += ["--devices-per-trial", str(k)]
    limit = o.time_limit_s if o.time_limit_s is not None else (worker_time_limit_s(o.time) if o.time else None)
    if limit is not None:
        worker += ["--time-limit", f"{limit:g}s"]
    srun = ["srun", "--kill-on-bad-exit=1"]
    lines = [
        "#!/bin/bash",
        f"# attnres-search workers for study {job.study}: one array task per worker, each pulling trials",
        f"# from {display_url(job.storage_url)} (passed in ${ENV_URL}) until the space is exhausted.",
        "# Written by `attnres-search launch --slurm`.",
        *(f"#SBATCH --{key}" + (f"={value}" if value is not None else "") for key, value in directives),
        "",
        "export OMP_NUM_THREADS=\"${SLURM_CPUS_PER_TASK:-1}\"  # a fair share of the task's cores",
    ]
    if k > 1:
        lines.append(f"export {ENV_RANKS}=1  # srun starts one rank per device; rank 0 is the worker, the rest follow")
    lines += [
        "echo \"attnres-search: study " + job.study + ", array task ${SLURM_ARRAY_JOB_ID}_${SLURM_ARRAY_TASK_ID} "
        "(job ${SLURM_JOB_ID}, restart ${SLURM_RESTART_COUNT:-0}) on $(hostname)\"",
        shlex.join(srun + worker),
        "status=$?",
        f"if [ \"$status\" -eq {PREEMPTED_EXIT} ]; then",
        "  echo \"attnres-search: worker stopped by SIGTERM after checkpointing; requeueing this array task\"",
        "  scontrol requeue \"$SLURM_JOB_ID\" && exit 0",
        "fi",
        "exit \"$status\"",
        "",
    ]
    return "\n".join(lines)


def check_cluster(options: SlurmOptions) -> None:
    """The client commands exist and the partition asked for is one Slurm knows."""
    for command in ("sbatch", "sinfo"):
        if shutil.which(command) is None:
            raise BadInput(f"--slurm: {command} is not on PATH (run launch on a Slurm login node)")
    if options.partition is None:
        return
    for name in options.partition.split(","):
        out = subprocess.run(["sinfo", "-h", "-p", name, "-o", "%P"], capture_output=True, text=True, timeout=60)
        if out.returncode != 0 or not out.stdout.strip():
            raise BadInput(f"--partition {name}: no such Slurm partition (`sinfo -s` lists them)")


def submit(job: SlurmJob) -> str:
    """Submit ``job`` with ``sbatch``; its array job id. The storage URL goes in the
    environment the job exports."""
    job.log_dir.mkdir(parents=True, exist_ok=True)
    env = {**os.environ, ENV_URL: job.storage_url}
    out = subprocess.run(["sbatch", "--parsable"], input=job.script, capture_output=True, text=True, env=env,
                         timeout=120)
    if out.returncode != 0:
        reason = (out.stderr.strip().splitlines() or ["no message"])[-1]
        raise BadInput(f"sbatch refused the job: {reason}")
    return out.stdout.strip().split(";")[0]


def current_slurm_task(environ: "os._Environ[str] | dict[str, str] | None" = None) -> str | None:
    """The Slurm job this process runs in, as ``squeue``/``sacct`` name it: ``ARRAYJOB_TASK``
    for an array task (``JOB`` otherwise), plus ``+R`` after R requeues. None outside Slurm."""
    env = os.environ if environ is None else environ
    job = env.get("SLURM_JOB_ID")
    if not job:
        return None
    array_job, task = env.get("SLURM_ARRAY_JOB_ID"), env.get("SLURM_ARRAY_TASK_ID")
    label = f"{array_job}_{task}" if array_job and task else job
    restarts = env.get("SLURM_RESTART_COUNT")
    return f"{label}+{restarts}" if restarts and restarts != "0" else label


@dataclass(frozen=True)
class SlurmTrial:
    """One trial and the Slurm array task that ran (or runs) it, for ``study status``."""

    number: int
    run: str
    state: str
    slurm_job: str


def slurm_trials(handle: "StudyHandle") -> list[SlurmTrial]:
    """Every trial that ran under Slurm, in trial order (empty for a study run elsewhere)."""
    from attnres_search.study.attrs import ATTR_SLURM_JOB
    from attnres_search.study.cells import cell_label
    from attnres_search.study.status import trial_params

    return [SlurmTrial(t.number, cell_label(trial_params(t)), t.state.name.lower(), t.user_attrs[ATTR_SLURM_JOB])
            for t in handle.trials() if t.user_attrs.get(ATTR_SLURM_JOB)]
