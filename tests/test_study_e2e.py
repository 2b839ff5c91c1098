"""Studies end to end with the real trainer on the smallest models: a study runs to
completion into a temporary SQLite file, a killed `study start` is finished by `study
resume` without re-running anything, pruning reports against the global step, and the
report prints the numbers stored in the database."""

from __future__ import annotations

import json
import os
import re
import signal
import sqlite3
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path

import optuna
import pytest
from optuna.trial import TrialState

from attnres_search.study.attrs import ATTR_CELL
from tests.cli_runner import cli

pytestmark = pytest.mark.slow
optuna.logging.set_verbosity(optuna.logging.WARNING)

TINY = """
model: {{n_layers: 1, d_model: 16, n_heads: 2, seq_len: 32}}
train: {{tokens: {tokens}, batch_size: 8, val_every: 20, val_windows: 4, diagnostics_every: 1000}}
variants: [baseline, full{extra}]
seeds: 2
"""
CLI = ("import sys; import click; from attnres_search.cli.errors import run_guarded; "
       "from attnres_search.cli.study_cmd import study; "
       "run_guarded(click.Group('attnres-search', commands=[study]))")


@pytest.fixture(autouse=True)
def one_thread(monkeypatch: pytest.MonkeyPatch) -> Iterator[None]:
    """These models are tiny: one thread is as fast, and it keeps the tests from crawling when
    other processes share the CPU (OpenMP threads spin-wait badly when oversubscribed)."""
    import torch

    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    monkeypatch.setenv("OMP_NUM_THREADS", "1")  # for the subprocesses
    yield
    torch.set_num_threads(threads)


def write_space(path: Path, tokens: int, extra: str = "") -> str:
    path.write_text(TINY.format(tokens=tokens, extra=extra))
    return str(path)


def completes(url: str, name: str) -> dict[int, tuple[str, float]]:
    st = optuna.load_study(study_name=name, storage=url)
    return {t.number: (t.user_attrs[ATTR_CELL], t.value) for t in st.get_trials(states=(TrialState.COMPLETE,))}


def test_smoke_study_runs_to_completion_and_reports_the_stored_numbers(tmp_path: Path, monkeypatch, capsys) -> None:
    monkeypatch.chdir(tmp_path)
    space = write_space(tmp_path / "tiny.yaml", tokens=40 * 8 * 32)
    url = f"sqlite:///{tmp_path / 'studies.db'}"
    code, _, err = cli(["study", "start", space, "--storage", url], monkeypatch, capsys)
    assert code == 0, err
    assert "ran 4 trial(s) here (4 complete" in err and "0 run(s) still missing" in err
    st = optuna.load_study(study_name="tiny", storage=url)
    trials = st.get_trials(states=(TrialState.COMPLETE,))
    assert len(trials) == 4 and len({t.user_attrs[ATTR_CELL] for t in trials}) == 4
    # Off a terminal the display is one timestamped line per trial start and end, with the loss.
    for t in trials:
        assert re.search(rf"^\d\d:\d\d:\d\d trial #{t.number} complete: loss {t.value:.4f} \(\d+ s\)$", err, re.M)
    assert len(re.findall(r"^\d\d:\d\d:\d\d trial [1-4]/4 started: #\d ", err, re.M)) == 4
    for t in trials:
        attrs = t.user_attrs
        assert t.value == attrs["final_val_loss"] < 5.5  # it learned (ln 256 = 5.55 at the start)
        assert set(t.intermediate_values) == {20, 40}  # global steps
        assert attrs["config"]["seed"] == attrs["seed"] == t.params["seed"]
        assert attrs["tokens"] == 40 * 8 * 32 and attrs["flops_total"] > 0 and attrs["tokens_per_s"] > 0
        assert attrs["device_name"] == "cpu" and "torch" in attrs["versions"] and "git_commit" in attrs
        assert Path(attrs["diagnostics_path"]).is_file()

    code, out, _ = cli(["report", "tiny", "--format", "json", "--storage", url], monkeypatch, capsys)
    assert code == 0
    rows = {r["variant"]: r for r in json.loads(out)["tables"]["variants"]}
    for variant in ("baseline", "full"):
        values = [t.value for t in trials if t.params["variant"] == variant]
        assert rows[variant]["n"] == 2 and rows[variant]["loss_mean"] == pytest.approx(sum(values) / 2, abs=1e-12)
    code, out, _ = cli(["report", "tiny", "--storage", url], monkeypatch, capsys)
    assert code == 0 and "│ baseline " in out and "│ full " in out and "1.737" in out
    code, out, _ = cli(["study", "status", "tiny", "--storage", url], monkeypatch, capsys)
    assert code == 0 and "done 4/4" in out and "complete" in out


def test_preempted_study_is_resumed_without_rerunning_anything(tmp_path: Path, monkeypatch, capsys) -> None:
    space = write_space(tmp_path / "killme.yaml", tokens=300 * 8 * 32, extra=", block-s2")
    db = tmp_path / "studies.db"
    url = f"sqlite:///{db}"
    env = dict(os.environ, ATTNRES_HEARTBEAT_INTERVAL="1", ATTNRES_HEARTBEAT_GRACE="2",
               ATTNRES_RUNS_DIR=str(tmp_path / "runs"))
    proc = subprocess.Popen([sys.executable, "-c", CLI, "study", "start", space, "--storage", url, "--quiet"],
                            env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, start_new_session=True)
    try:
        deadline = time.monotonic() + 120
        while time.monotonic() < deadline:
            states = [r[0] for r in _states(db)]
            if "COMPLETE" in states and "RUNNING" in states:
                break
            assert proc.poll() is None, proc.communicate()
            time.sleep(0.1)
        else:
            pytest.fail("the study never had a complete and a running trial")
    finally:
        os.killpg(proc.pid, signal.SIGTERM)  # a preemption: Lightning stops at the next step
        code = proc.wait(timeout=60)
    assert code in (143, -signal.SIGTERM)  # never 0: the study is not done
    before = completes(url, "killme")
    # The interrupted trial is failed and re-queued at once (or, if SIGTERM came before training
    # started, left RUNNING to go stale): either way exactly one, retried below.
    killed = [n for state, n in _states(db) if state in ("RUNNING", "FAIL")]
    assert 1 <= len(before) < 6 and len(killed) == 1

    for name, value in env.items():
        monkeypatch.setenv(name, value)
    code, _, err = cli(["study", "resume", "killme", "--storage", url], monkeypatch, capsys)
    assert code == 0, err
    after = completes(url, "killme")
    assert {n: after[n] for n in before} == before  # finished trials untouched
    cells = [cell for cell, _ in after.values()]
    assert len(cells) == 6 and len(set(cells)) == 6  # every cell x seed exactly once
    st = optuna.load_study(study_name="killme", storage=url)
    assert st.trials[killed[0]].state == TrialState.FAIL
    retried = [t for t in st.trials if t.system_attrs.get("failed_trial") == killed[0]]
    assert len(retried) == 1 and retried[0].state == TrialState.COMPLETE
    assert f"ran {6 - len(before)} trial(s) here" in err


def _states(db: Path) -> list[tuple[str, int]]:
    if not db.exists():
        return []
    try:
        with sqlite3.connect(db, timeout=5) as conn:
            return list(conn.execute("SELECT state, number FROM trials"))
    except sqlite3.OperationalError:  # tables not created yet
        return []


def test_pruning_reports_against_the_global_step(tmp_path: Path, monkeypatch, capsys) -> None:
    text = TINY.format(tokens=60 * 8 * 32, extra="").replace("variants: [baseline, full]", "variants: [baseline]")
    text = text.replace("seeds: 2", "seeds: 1") + (
        "axes: {lr: [3.0e-3, 1.0e-7]}\npruner: {type: median, n_startup_trials: 1, n_warmup_steps: 0}\n")
    (tmp_path / "prune.yaml").write_text(text)
    url = f"sqlite:///{tmp_path / 'studies.db'}"
    monkeypatch.setenv("ATTNRES_RUNS_DIR", str(tmp_path / "runs"))
    code, _, err = cli(["study", "start", str(tmp_path / "prune.yaml"), "--storage", url], monkeypatch, capsys)
    assert code == 0, err
    good, slow = optuna.load_study(study_name="prune", storage=url).trials
    assert good.state == TrialState.COMPLETE and set(good.intermediate_values) == {20, 40, 60}
    assert slow.state == TrialState.PRUNED and list(slow.intermediate_values) == [20]  # stopped at its first report
