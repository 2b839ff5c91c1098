"""``launch --slurm`` (issue 13): the batch script, bad options, and real job arrays on a
single-node Slurm cluster started on localhost (:mod:`tests.slurm_cluster`).

The end-to-end tests submit real arrays, signal real array tasks with ``scancel`` and
assert on what the storage holds afterwards: which cells completed, how often, from
which step a preempted trial resumed, and which array task ran each trial.
"""

from __future__ import annotations

import os
import re
import subprocess
import sys
import time
from collections import Counter
from pathlib import Path
from types import SimpleNamespace

import optuna
import pytest
import torch
from optuna.trial import TrialState

from attnres_search.errors import BadInput
from attnres_search.study.attrs import ATTR_CELL, ATTR_SLURM_JOB
from attnres_search.study.slurm import SERVER_DB_NEEDED, SlurmOptions, current_slurm_task, parse_slurm_args, plan_job
from tests.slurm_cluster import SlurmCluster, slurm_cluster  # noqa: F401 - the fixture

TINY = """
model: {n_layers: 1, d_model: 16, n_heads: 2, seq_len: 16}
train: {steps: %(steps)d, tokens: null, batch_size: 4, val_every: %(val_every)d, val_windows: 2, diagnostics_every: 1000 %(extra)s}
"""


def write_space(tmp: Path, name: str, body: str, steps: int = 6, val_every: int = 3, extra: str = "") -> Path:
    path = tmp / f"{name}.yaml"
    path.write_text(TINY % {"steps": steps, "val_every": val_every, "extra": extra} + body)
    return path


def cli(*args: str, env: dict[str, str]) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "attnres_search", *args], capture_output=True, text=True, env=env,
                          timeout=300)


def study_env(tmp: Path, **extra: str) -> dict[str, str]:
    env = dict(os.environ, OMP_NUM_THREADS="1", ATTNRES_RUNS_DIR=str(tmp / "runs"), **extra)
    env.pop("ATTNRES_STORAGE", None)
    return env


def create(tmp: Path, name: str, body: str, env: dict[str, str], **space: object) -> str:
    url = f"sqlite:///{tmp / 'studies.db'}"
    out = cli("study", "start", str(write_space(tmp, name, body, **space)), "--name", name, "--storage", url,
              "--n-trials", "0", env=env)
    assert out.returncode == 0, out.stderr
    return url


FOUR_CELLS = """
variants: [baseline, block-s2]
seeds: 2
"""


@pytest.fixture(scope="module")
def made(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, str, dict[str, str]]:
    """One study for the tests that never submit: (folder, storage URL, environment)."""
    tmp = tmp_path_factory.mktemp("slurm-cli")
    env = study_env(tmp)
    return tmp, create(tmp, "cli", FOUR_CELLS, env), env


def directives(script: str) -> list[str]:
    return [line[len("#SBATCH "):] for line in script.splitlines() if line.startswith("#SBATCH ")]


# ---------------------------------------------------------------------------------------------
# The batch script (no cluster needed)


def test_dry_run_prints_the_batch_script_and_submits_nothing(made: tuple[Path, str, dict[str, str]]) -> None:
    tmp_path, url, env = made
    out = cli("launch", "cli", "--storage", url, "--slurm", "--workers", "2", "--partition", "gpu", "--time", "4:00:00",
              "--account", "lab", "--qos", "high", "--slurm-arg", "mem=8G", "--slurm-arg", "cpus-per-task=3",
              "--slurm-arg", "exclusive", "--dry-run", env=env)
    assert out.returncode == 0, out.stderr
    script = out.stdout
    logs = tmp_path / "runs" / "cli" / "logs"
    assert script.startswith("#!/bin/bash\n")
    assert directives(script) == [
        "--job-name=attnres-cli", "--array=0-1", "--nodes=1", "--ntasks-per-node=1",
        f"--output={logs.resolve()}/slurm-%A_%a.out", "--open-mode=append", f"--chdir={Path.cwd().resolve()}",
        "--export=ALL", "--requeue", "--signal=TERM@120", "--partition=gpu", "--time=4:00:00", "--account=lab",
        "--qos=high", "--mem=8G", "--cpus-per-task=3", "--exclusive"]
    srun = [line for line in script.splitlines() if line.startswith("srun ")]
    # --time 4:00:00 gives the workers a time limit a minute before the SIGTERM at 4 h - 120 s.
    assert srun == [f"srun --kill-on-bad-exit=1 {sys.executable} -m attnres_search worker cli --quiet "
                    "--time-limit 14220s"]
    assert "ATTNRES_SLURM_RANKS" not in script  # one process per worker
    assert 'export OMP_NUM_THREADS="${SLURM_CPUS_PER_TASK:-1}"' in script
    assert 'if [ "$status" -eq 143 ]; then' in script and 'scontrol requeue "$SLURM_JOB_ID"' in script
    assert not logs.exists(), "a dry run wrote the logs folder"
    # The script is valid bash.
    assert subprocess.run(["bash", "-n"], input=script, text=True).returncode == 0


@pytest.mark.parametrize("time, limit, expected", [
    ("30", None, "--time-limit 1620s"),  # 30 min: a minute before the SIGTERM at 28 min
    ("5", None, "--time-limit 150s"),  # 5 min: never below half the time
    ("1-00:00:00", None, "--time-limit 86220s"),
    ("2:00:00", 5400.0, "--time-limit 5400s"),  # given: passed as it is
    (None, 90.0, "--time-limit 90s"),
    (None, None, None),
])
def test_workers_get_a_time_limit_from_time_or_as_given(tmp_path: Path, time: str | None, limit: float | None,
                                                        expected: str | None) -> None:
    job = plan_job(fake_handle("postgresql://me@db/studies", tmp_path), SlurmOptions(time=time, time_limit_s=limit))
    [srun] = [line for line in job.script.splitlines() if line.startswith("srun ")]
    if expected is None:
        assert "--time-limit" not in srun
    else:
        assert srun.endswith(f"worker big --quiet {expected}"), srun


def test_slurm_arg_replaces_a_generated_directive(made: tuple[Path, str, dict[str, str]]) -> None:
    _, url, env = made
    out = cli("launch", "cli", "--storage", url, "--slurm", "--slurm-arg", "signal=USR1@300",
              "--slurm-arg", "job-name=mine", "--dry-run", env=env)
    assert out.returncode == 0, out.stderr
    found = directives(out.stdout)
    assert "--signal=USR1@300" in found and "--signal=TERM@120" not in found
    assert "--job-name=mine" in found and "--job-name=attnres-cli" not in found


def fake_handle(url: str, tmp: Path) -> SimpleNamespace:
    return SimpleNamespace(name="big", url=url, shown_url=url.replace("secret", "***"), logs_dir=tmp / "logs")


def test_trials_across_nodes_get_one_rank_per_gpu(tmp_path: Path) -> None:
    url = "postgresql+psycopg2://me@db.example.org/studies"
    job = plan_job(fake_handle(url, tmp_path), SlurmOptions(nodes=4, gpus_per_node=4, devices_per_trial=8))
    assert (job.array_size, job.nodes_per_task, job.ranks_per_node) == (2, 2, 4)
    assert {"--array=0-1", "--nodes=2", "--ntasks-per-node=4", "--gpus-per-node=4"} <= set(directives(job.script))
    assert "export ATTNRES_SLURM_RANKS=1" in [line.split("  #")[0] for line in job.script.splitlines()]
    assert f"{sys.executable} -m attnres_search worker big --quiet --devices-per-trial 8" in job.script


def test_no_password_in_the_script(tmp_path: Path) -> None:
    url = "postgresql+psycopg2://me:secret@db.example.org/studies"
    job = plan_job(fake_handle(url, tmp_path), SlurmOptions(nodes=3))
    assert "secret" not in job.script and "me:***@db.example.org" in job.script
    assert "--array=0-2" in directives(job.script)


def test_trials_within_a_node_share_its_gpus(tmp_path: Path) -> None:
    url = "postgresql+psycopg2://me@db/studies"
    job = plan_job(fake_handle(url, tmp_path), SlurmOptions(nodes=2, gpus_per_node=8, devices_per_trial=2))
    assert (job.array_size, job.nodes_per_task, job.ranks_per_node) == (8, 1, 2)
    assert {"--array=0-7", "--nodes=1", "--ntasks-per-node=2", "--gpus-per-node=2"} <= set(directives(job.script))
    assert "export ATTNRES_SLURM_RANKS=1" in [line.split("  #")[0] for line in job.script.splitlines()]


@pytest.mark.parametrize("options, message", [
    (SlurmOptions(nodes=2, gpus_per_node=4, devices_per_trial=3), "does not divide --gpus-per-node 4"),
    (SlurmOptions(nodes=3, gpus_per_node=4, devices_per_trial=8), "--nodes 3 is not a multiple of the 2 nodes"),
    (SlurmOptions(nodes=2, gpus_per_node=4, devices_per_trial=6), "must be a multiple of --gpus-per-node 4"),
    (SlurmOptions(gpus_per_node=4, workers=2), "--workers is for CPU-only workers"),
    (SlurmOptions(time="four hours"), "--time 'four hours'"),
    (SlurmOptions(time="30", time_limit_s=3600.0), "--time-limit 1h is longer than --time 30"),
])
def test_impossible_layouts_are_bad_input(tmp_path: Path, options: SlurmOptions, message: str) -> None:
    with pytest.raises(BadInput, match=re.escape(message)):
        plan_job(fake_handle("postgresql://me@db/studies", tmp_path), options)


def test_sqlite_is_refused_for_several_nodes(made: tuple[Path, str, dict[str, str]]) -> None:
    _, url, env = made
    out = cli("launch", "cli", "--storage", url, "--slurm", "--nodes", "2", "--dry-run", env=env)
    assert out.returncode == 2
    assert out.stdout == ""
    lines = out.stderr.strip().splitlines()
    assert len(lines) == 1 and SERVER_DB_NEEDED in lines[0], out.stderr


@pytest.mark.parametrize("args, message", [
    (["--slurm", "--slurm-arg", "array=0-9"], "--slurm-arg array: set by launch --slurm itself"),
    (["--slurm", "--slurm-arg", "=x"], "give KEY=VALUE"),
    (["--slurm", "--slurm-arg", "comment=a b"], "may not hold spaces"),
    (["--slurm", "--gpus", "0,1"], "with --slurm give --gpus-per-node"),
    (["--nodes", "2"], "--nodes needs --slurm"),
    (["--dry-run"], "--dry-run needs --slurm"),
])
def test_bad_slurm_options_are_one_line_and_exit_2(made: tuple[Path, str, dict[str, str]], args: list[str],
                                                   message: str) -> None:
    _, url, env = made
    out = cli("launch", "cli", "--storage", url, *args, env=env)
    assert out.returncode == 2, out.stdout + out.stderr
    lines = out.stderr.strip().splitlines()
    assert len(lines) == 1 and message in lines[0], out.stderr


def test_parse_slurm_args_keeps_flags_and_values() -> None:
    assert parse_slurm_args(("mem=8G", "--exclusive", "constraint=a100|h100")) == (
        ("mem", "8G"), ("exclusive", None), ("constraint", "a100|h100"))


def test_current_slurm_task_names_the_array_task_and_its_requeues() -> None:
    assert current_slurm_task({}) is None
    assert current_slurm_task({"SLURM_JOB_ID": "17"}) == "17"
    array = {"SLURM_JOB_ID": "19", "SLURM_ARRAY_JOB_ID": "17", "SLURM_ARRAY_TASK_ID": "1"}
    assert current_slurm_task(array) == "17_1"
    assert current_slurm_task({**array, "SLURM_RESTART_COUNT": "0"}) == "17_1"
    assert current_slurm_task({**array, "SLURM_RESTART_COUNT": "2"}) == "17_1+2"


# ---------------------------------------------------------------------------------------------
# A real cluster


def completed_per_cell(study: optuna.Study) -> Counter:
    return Counter(t.user_attrs[ATTR_CELL] for t in study.get_trials(states=(TrialState.COMPLETE,)))


def submit(cluster: SlurmCluster, name: str, url: str, env: dict[str, str], *args: str) -> str:
    out = cli("launch", name, "--storage", url, "--slurm", "--partition", cluster.partition, *args,
              env={**env, "SLURM_CONF": str(cluster.conf)})
    assert out.returncode == 0, out.stdout + out.stderr
    match = re.search(r"submitted Slurm job array (\d+)", out.stdout)
    assert match, out.stdout
    return match.group(1)


def test_no_such_partition_is_exit_2(tmp_path: Path, slurm_cluster: SlurmCluster) -> None:  # noqa: F811
    env = study_env(tmp_path, SLURM_CONF=str(slurm_cluster.conf))
    url = create(tmp_path, "nopart", FOUR_CELLS, env)
    out = cli("launch", "nopart", "--storage", url, "--slurm", "--partition", "nosuch", env=env)
    assert out.returncode == 2, out.stdout + out.stderr
    lines = out.stderr.strip().splitlines()
    assert len(lines) == 1 and "--partition nosuch: no such Slurm partition" in lines[0], out.stderr
    assert slurm_cluster.run("squeue", "-h", "-n", "attnres-nopart").stdout.strip() == ""
    assert not (tmp_path / "runs" / "nopart" / "logs").exists()


@pytest.mark.slow
def test_two_task_array_completes_every_cell_exactly_once(tmp_path: Path,
                                                          slurm_cluster: SlurmCluster) -> None:  # noqa: F811
    env = study_env(tmp_path)
    url = create(tmp_path, "array", FOUR_CELLS, env)
    job_id = submit(slurm_cluster, "array", url, env, "--workers", "2", "--slurm-arg", "cpus-per-task=1")
    records = slurm_cluster.wait_done(job_id, 300)
    print(slurm_cluster.show_job(job_id))
    print(slurm_cluster.jobcomp_log.read_text())
    logs = tmp_path / "runs" / "array" / "logs"
    task_logs = {p.name: p.read_text() for p in logs.glob("slurm-*.out")}
    assert sorted(task_logs) == [f"slurm-{job_id}_0.out", f"slurm-{job_id}_1.out"], sorted(task_logs)
    assert sorted(r["ArrayTaskId"] for r in records) == ["0", "1"]
    assert all(r["JobState"] == "COMPLETED" and r["ExitCode"] == "0:0" for r in records), records
    study = optuna.load_study(study_name="array", storage=url)
    per_cell = completed_per_cell(study)
    assert len(per_cell) == 4 and set(per_cell.values()) == {1}, per_cell
    ran_by = {t.user_attrs.get(ATTR_SLURM_JOB) for t in study.get_trials(states=(TrialState.COMPLETE,))}
    assert ran_by <= {f"{job_id}_0", f"{job_id}_1"}, ran_by
    status = cli("study", "status", "array", "--storage", url, env=env)
    assert status.returncode == 0, status.stderr
    print(status.stdout)
    assert "Slurm array tasks" in status.stdout and f"{job_id}_" in status.stdout
    assert "done 4/4" in status.stdout


def _wait_for(predicate, timeout_s: float, what: str) -> None:
    deadline = time.monotonic() + timeout_s
    while not predicate():
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out waiting for {what}")
        time.sleep(0.3)


@pytest.mark.slow
def test_term_signal_requeues_the_task_and_the_trial_resumes_from_its_checkpoint(
        tmp_path: Path, slurm_cluster: SlurmCluster) -> None:  # noqa: F811
    env = study_env(tmp_path, ATTNRES_HEARTBEAT_INTERVAL="1", ATTNRES_HEARTBEAT_GRACE="3")
    url = create(tmp_path, "preempt", "variants: [baseline]\nseeds: 1\n", env, steps=400, val_every=100,
                 extra=", ckpt_every: 40")
    job_id = submit(slurm_cluster, "preempt", url, env)
    task = f"{job_id}_0"
    study = optuna.load_study(study_name="preempt", storage=url)
    checkpoint = tmp_path / "runs" / "preempt"
    _wait_for(lambda: bool(study.get_trials(states=(TrialState.RUNNING,))), 120, "the trial to start")
    _wait_for(lambda: any(checkpoint.rglob("checkpoints/last.ckpt")), 300, "the trial's first checkpoint")
    first = study.get_trials(states=(TrialState.RUNNING,))[0]
    assert first.user_attrs[ATTR_SLURM_JOB] == task
    slurm_cluster.run("scancel", "--signal=TERM", task)
    records = slurm_cluster.wait_done(job_id, 400)
    print(slurm_cluster.show_job(job_id))
    assert len(records) == 1 and records[0]["JobState"] == "COMPLETED", records
    assert int(records[0]["Restarts"]) == 1, records
    log = (tmp_path / "runs" / "preempt" / "logs" / f"slurm-{task}.out").read_text()
    assert "requeueing this array task" in log, log
    assert "restart 1)" in log, log

    study = optuna.load_study(study_name="preempt", storage=url)
    per_cell = completed_per_cell(study)
    assert list(per_cell.values()) == [1], per_cell
    assert study.trials[first.number].state == TrialState.FAIL
    retry = study.get_trials(states=(TrialState.COMPLETE,))[0]
    assert retry.number != first.number
    assert retry.user_attrs[ATTR_SLURM_JOB] == f"{task}+1"  # the requeued task ran it
    resumed = retry.user_attrs["resumed_from_step"]
    # It resumes from the checkpoint written on SIGTERM: past the first one (step 40) we waited for.
    assert resumed is not None and 40 <= resumed < 400, resumed
    assert retry.user_attrs["steps"] == 400
    final = torch.load(next(checkpoint.rglob("checkpoints/last.ckpt")), map_location="cpu", weights_only=False)
    assert final["global_step"] == 400
    status = cli("study", "status", "preempt", "--storage", url, env=env)
    print(log, status.stdout)
    assert status.returncode == 0 and f"{task}+1" in status.stdout, status.stdout + status.stderr


@pytest.mark.slow
def test_two_device_trials_run_as_two_srun_ranks_led_by_rank_0(tmp_path: Path,
                                                                slurm_cluster: SlurmCluster) -> None:  # noqa: F811
    """The multi-device layout for real, on CPU: srun starts 2 ranks per array task,
    Lightning's SLURMEnvironment joins them (gloo), rank 0 alone talks to Optuna."""
    env = study_env(tmp_path)
    url = create(tmp_path, "ranks", "variants: [baseline]\nseeds: 2\n", env)
    job_id = submit(slurm_cluster, "ranks", url, env, "--devices-per-trial", "2")
    records = slurm_cluster.wait_done(job_id, 300)
    log = (tmp_path / "runs" / "ranks" / "logs" / f"slurm-{job_id}_0.out").read_text()
    assert len(records) == 1 and records[0]["JobState"] == "COMPLETED", (records, log)
    assert records[0]["NumTasks"] == "2", records
    study = optuna.load_study(study_name="ranks", storage=url)
    per_cell = completed_per_cell(study)
    assert len(per_cell) == 2 and set(per_cell.values()) == {1}, per_cell
    assert len(study.trials) == 2, "a follower rank created trials"
    for trial in study.trials:
        assert trial.user_attrs["config"]["devices"] == 2
        assert trial.user_attrs["tokens"] == 6 * 4 * 16 * 2, trial.user_attrs  # steps x batch x seq_len x ranks
    board = tmp_path / "runs" / "ranks" / "logs" / f"ranks-{records[0]['JobId']}-0"
    assert sorted(p.name for p in board.iterdir()) == ["stop", "trial-0.json", "trial-1.json"]


def test_a_run_over_srun_ranks_on_several_nodes_tells_lightning_the_node_count(monkeypatch: pytest.MonkeyPatch) -> None:
    from attnres_search.training.config import RunConfig
    from attnres_search.training.trainer import _srun_nodes

    monkeypatch.setenv("SLURM_NNODES", "2")
    monkeypatch.setenv("WORLD_SIZE", "8")
    assert _srun_nodes(RunConfig(devices=8)) == 2
    assert _srun_nodes(RunConfig(devices=1)) == 1
    monkeypatch.setenv("WORLD_SIZE", "2")  # ranks this process spawned itself, not srun's
    assert _srun_nodes(RunConfig(devices=8)) == 1
    monkeypatch.delenv("SLURM_NNODES")
    monkeypatch.setenv("WORLD_SIZE", "8")
    assert _srun_nodes(RunConfig(devices=8)) == 1
