"""A throwaway single-node Slurm cluster on localhost for the ``launch --slurm`` tests.

munged, slurmctld and slurmd run in the foreground as children of the test session, with
a generated munge key and ``slurm.conf`` whose state, spool, log and PID paths all live in
a temporary folder; they are stopped by PID afterwards. Client commands (``sbatch``,
``squeue``, ``scontrol``) find the cluster through ``$SLURM_CONF``, which the fixture sets
for the whole session. Skips (with the reason) where Debian's ``slurm-wlm`` and ``munge``
are not installed or the daemons need root; ``.ci/run`` installs both.

There is no accounting database: job records come from ``scontrol show job`` (kept for
``MinJobAge`` seconds) and the job-completion log (``JobCompType=jobcomp/filetxt``).
"""

from __future__ import annotations

import os
import shutil
import socket
import subprocess
import tempfile
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest

DAEMONS = ("munged", "slurmctld", "slurmd")
CLIENTS = ("sbatch", "squeue", "scontrol", "scancel")
PARTITION = "debug"
CPUS = 2


@dataclass(frozen=True)
class SlurmCluster:
    """What a test needs of the running cluster."""

    root: Path
    conf: Path
    partition: str
    jobcomp_log: Path

    def env(self) -> dict[str, str]:
        """The environment for client commands and for ``attnres-search launch --slurm``."""
        return {**os.environ, "SLURM_CONF": str(self.conf)}

    def run(self, *args: str, check: bool = True) -> subprocess.CompletedProcess:
        return subprocess.run(list(args), env=self.env(), capture_output=True, text=True, check=check, timeout=60)

    def jobs(self, job_id: str) -> list[dict[str, str]]:
        """``scontrol show job`` of ``job_id`` (all its array tasks) as key=value records."""
        out = self.run("scontrol", "-o", "show", "job", job_id, check=False).stdout
        return [_fields(line) for line in out.splitlines() if line.strip()]

    def show_job(self, job_id: str) -> str:
        return self.run("scontrol", "show", "job", job_id, check=False).stdout

    def wait_done(self, job_id: str, timeout_s: float) -> list[dict[str, str]]:
        """Wait until no task of ``job_id`` is pending, running or requeued; its records."""
        deadline = time.monotonic() + timeout_s
        while True:
            jobs = self.jobs(job_id)
            if jobs and all(j.get("JobState") in FINAL_STATES for j in jobs):
                return jobs
            if time.monotonic() > deadline:
                raise AssertionError(f"Slurm job {job_id} not done after {timeout_s:.0f}s:\n{self.show_job(job_id)}")
            time.sleep(1.0)


FINAL_STATES = {"COMPLETED", "FAILED", "CANCELLED", "TIMEOUT", "NODE_FAIL", "OUT_OF_MEMORY", "PREEMPTED",
                "BOOT_FAIL", "DEADLINE"}


def _fields(line: str) -> dict[str, str]:
    fields = {}
    for token in line.split():
        key, sep, value = token.partition("=")
        if sep:
            fields[key] = value
    return fields


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _missing() -> str | None:
    absent = [name for name in (*DAEMONS, *CLIENTS) if shutil.which(name, path=f"/usr/sbin:{os.environ['PATH']}") is None]
    if absent:
        return f"Slurm/munge are not installed (no {', '.join(absent)}; apt-get install slurm-wlm munge)"
    if os.geteuid() != 0:
        return "the local Slurm cluster runs its daemons as root (SlurmUser=root); not root here"
    return None


def _conf(root: Path, host: str) -> str:
    return "\n".join([
        "ClusterName=attnres-test",
        f"SlurmctldHost={host}",
        "SlurmUser=root",
        "SlurmdUser=root",
        "AuthType=auth/munge",
        # cred_expire also holds a requeued job back this long (default 120 s): keep the preemption test short.
        f"AuthInfo=socket={root / 'munge.socket'},cred_expire=10",
        f"SlurmctldPort={_free_port()}",
        f"SlurmdPort={_free_port()}",
        f"StateSaveLocation={root / 'state'}",
        f"SlurmdSpoolDir={root / 'spool'}",
        f"SlurmctldPidFile={root / 'slurmctld.pid'}",
        f"SlurmdPidFile={root / 'slurmd.pid'}",
        f"SlurmctldLogFile={root / 'slurmctld.log'}",
        f"SlurmdLogFile={root / 'slurmd.log'}",
        "ProctrackType=proctrack/linuxproc",
        "TaskPlugin=task/none",
        "SelectType=select/cons_tres",
        "SelectTypeParameters=CR_Core",
        "JobAcctGatherType=jobacct_gather/none",
        "AccountingStorageType=accounting_storage/none",
        "JobCompType=jobcomp/filetxt",
        f"JobCompLoc={root / 'jobcomp.log'}",
        "MpiDefault=none",
        "ReturnToService=2",
        "MinJobAge=600",  # finished jobs stay visible to `scontrol show job`
        "KillWait=30",
        "SchedulerParameters=sched_interval=1",
        f"NodeName={host} CPUs={CPUS} State=UNKNOWN",
        f"PartitionName={PARTITION} Nodes={host} Default=YES MaxTime=INFINITE State=UP",
        "",
    ])


def _wait_for_node(cluster: SlurmCluster, procs: dict[str, subprocess.Popen], timeout_s: float = 60.0) -> None:
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        for name, proc in procs.items():
            if proc.poll() is not None:
                raise RuntimeError(f"{name} exited with {proc.returncode}; see {cluster.root}")
        out = cluster.run("sinfo", "-h", "-o", "%t", check=False).stdout.strip()
        if out == "idle":
            return
        time.sleep(0.5)
    raise RuntimeError(f"the Slurm node did not come up in {timeout_s:.0f}s; see the logs in {cluster.root}")


def _stop(procs: dict[str, subprocess.Popen]) -> None:
    for name in reversed(list(procs)):  # slurmd, slurmctld, then munged
        proc = procs[name]
        if proc.poll() is None:
            proc.terminate()
            try:
                proc.wait(timeout=20)
            except subprocess.TimeoutExpired:
                proc.kill()
                proc.wait()


@pytest.fixture(scope="session")
def slurm_cluster() -> Iterator[SlurmCluster]:
    reason = _missing()
    if reason is not None:
        pytest.skip(reason)
    root = Path(tempfile.mkdtemp(prefix="attnres-slurm-"))
    for folder in ("state", "spool", "munge"):
        (root / folder).mkdir()
    host = socket.gethostname().split(".")[0]
    conf = root / "slurm.conf"
    conf.write_text(_conf(root, host))
    key = root / "munge" / "munge.key"
    key.write_bytes(os.urandom(1024))
    key.chmod(0o400)
    cluster = SlurmCluster(root, conf, PARTITION, root / "jobcomp.log")
    procs: dict[str, subprocess.Popen] = {}
    daemon = lambda name, *args: subprocess.Popen(  # noqa: E731
        [name, *args], env=cluster.env(), stdout=open(root / f"{Path(name).name}.out", "wb"),
        stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL, start_new_session=True)
    try:
        procs["munged"] = daemon("/usr/sbin/munged", "--foreground", "--force", f"--key-file={key}",
                                 f"--socket={root / 'munge.socket'}", f"--pid-file={root / 'munged.pid'}",
                                 f"--log-file={root / 'munged.log'}", f"--seed-file={root / 'munge' / 'seed'}")
        for _ in range(100):
            if (root / "munge.socket").exists():
                break
            time.sleep(0.1)
        procs["slurmctld"] = daemon("/usr/sbin/slurmctld", "-D", "-i", "-f", str(conf))
        procs["slurmd"] = daemon("/usr/sbin/slurmd", "-D", "-f", str(conf))
        _wait_for_node(cluster, procs)
    except Exception as exc:
        _stop(procs)
        pytest.fail(f"could not start the local Slurm cluster: {exc}")
    previous = os.environ.get("SLURM_CONF")
    os.environ["SLURM_CONF"] = str(conf)
    try:
        yield cluster
    finally:
        if previous is None:
            os.environ.pop("SLURM_CONF", None)
        else:
            os.environ["SLURM_CONF"] = previous
        subprocess.run(["scancel", "--full", "--user=root"], env=cluster.env(), capture_output=True, timeout=60)
        _stop(procs)
        shutil.rmtree(root, ignore_errors=True)
