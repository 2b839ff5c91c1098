"""Studies with an injected runner (no training): every cell x seed runs exactly once,
duplicates are skipped, failures and dead workers' trials are re-run by resume, and bad
input exits with code 2 leaving the storage untouched."""

from __future__ import annotations

import warnings
from pathlib import Path
from typing import Any

import optuna
import pytest
from optuna.trial import TrialState

from attnres_search.training.config import RunConfig, RunResult
from attnres_search.study.attrs import ATTR_CELL
from attnres_search.study.cells import cell_key
from attnres_search.study.handle import StudyHandle, new_study, open_study
from attnres_search.study.space_file import parse_space
from attnres_search.study.storage import open_storage
from attnres_search.study.worker import run_worker
from tests.cli_runner import cli

optuna.logging.set_verbosity(optuna.logging.WARNING)

SPACE = """
name: fake
model: {n_layers: 2, d_model: 32, n_heads: 2, seq_len: 32}
train: {tokens: 10k, batch_size: 4}
variants: [baseline, full, block-s2]
seeds: 2
"""


def fake_loss(cfg: RunConfig) -> float:
    return 3.0 + 0.01 * cfg.seed - (0.05 if cfg.model.residual.kind != "prenorm" else 0.0)


def fake_runner(cfg: RunConfig, *, callbacks: Any = (), progress: Any = None) -> RunResult:
    loss = fake_loss(cfg)
    return RunResult(config=cfg.to_dict(), params_total=1234, params_non_embedding=1000, flops_per_token=10.0,
                     flops_total=10.0 * cfg.tokens, tokens=cfg.tokens, steps=5, tokens_per_s=99.0, wall_time_s=0.01,
                     final_val_loss=loss, best_val_loss=loss - 0.001, val_curve=[(2, loss + 1), (5, loss)],
                     device_name="cpu", versions={"torch": "x"}, git_commit="abc")


@pytest.fixture
def url(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> str:
    monkeypatch.setenv("ATTNRES_RUNS_DIR", str(tmp_path / "runs"))
    return f"sqlite:///{tmp_path / 'studies.db'}"


def create(url: str, text: str = SPACE) -> optuna.Study:
    return new_study(parse_space(text), "fake", open_storage(url, mode="create")).study


def opened(url: str) -> StudyHandle:
    return open_study("fake", open_storage(url, mode="write"))


def complete_by_cell(st: optuna.Study) -> dict[str, list[int]]:
    out: dict[str, list[int]] = {}
    for t in st.get_trials(states=(TrialState.COMPLETE,)):
        out.setdefault(t.user_attrs[ATTR_CELL], []).append(t.number)
    return out


def test_grid_runs_every_cell_once_and_stores_the_run(url: str) -> None:
    st = create(url)
    assert len(st.get_trials(states=(TrialState.WAITING,))) == 6
    summary = run_worker(opened(url), runner=fake_runner)
    assert (summary.ran, summary.completed, summary.missing) == (6, 6, 0)
    st, space = (h := opened(url)).study, h.space
    cells = complete_by_cell(st)
    assert sorted(cells) == sorted(cell_key(p) for p in space.cells()) and all(len(v) == 1 for v in cells.values())
    trial = st.trials[0]
    cfg = RunConfig.from_dict(trial.user_attrs["config"])
    assert trial.value == trial.user_attrs["final_val_loss"] == fake_loss(cfg)
    assert trial.user_attrs["seed"] == cfg.seed == trial.params["seed"]
    for name in ("params_total", "flops_total", "tokens", "tokens_per_s", "best_val_loss", "val_curve",
                 "versions", "git_commit", "device_name", "variant", "preset", "host"):
        assert name in trial.user_attrs
    assert trial.intermediate_values == {2: trial.value + 1, 5: trial.value}
    assert st.user_attrs["kind"] == "ablation" and st.user_attrs["space"]["variants"] == ["baseline", "full", "block-s2"]
    assert run_worker(opened(url), runner=fake_runner).ran == 0  # nothing left


def test_duplicate_trials_are_skipped(url: str) -> None:
    st = create(url)
    run_worker(opened(url), runner=fake_runner, n_trials=2)
    first = st.trials[0]
    st.enqueue_trial(first.params, user_attrs={ATTR_CELL: first.user_attrs[ATTR_CELL]})  # e.g. two `start`s
    summary = run_worker(opened(url), runner=fake_runner)
    assert summary.skipped == 1 and summary.completed == 4
    assert all(len(v) == 1 for v in complete_by_cell(st).values()) and len(complete_by_cell(st)) == 6
    skipped = [t for t in st.trials if "skipped" in t.user_attrs]
    assert len(skipped) == 1 and skipped[0].state == TrialState.PRUNED
    assert opened(url).enqueue_missing() == 0


def test_failed_cells_are_rerun_by_resume_only(url: str) -> None:
    st = create(url)

    def flaky(cfg: RunConfig, **kwargs: Any) -> RunResult:
        if cfg.model.residual.kind == "full" and cfg.seed == 1:
            raise ValueError("loss became nan at step 3")
        return fake_runner(cfg, **kwargs)

    summary = run_worker(opened(url), runner=flaky)
    assert (summary.completed, summary.failed, summary.missing) == (5, 1, 1)
    failed = st.get_trials(states=(TrialState.FAIL,))[0]
    assert "nan at step 3" in failed.user_attrs["error"]
    before = {t.number: t.value for t in st.get_trials(states=(TrialState.COMPLETE,))}
    assert run_worker(opened(url), runner=fake_runner).ran == 0  # a plain worker leaves failures alone
    summary = run_worker(opened(url), runner=fake_runner, requeue_failed=True)
    assert (summary.ran, summary.completed, summary.missing) == (1, 1, 0)
    after = {t.number: t.value for t in st.get_trials(states=(TrialState.COMPLETE,))}
    assert {n: after[n] for n in before} == before and len(after) == 6
    assert all(len(v) == 1 for v in complete_by_cell(st).values())


@pytest.mark.parametrize("beat", [True, False], ids=["heartbeat", "died-before-first-beat"])
def test_dead_workers_trial_is_failed_after_grace_and_retried(beat: bool, url: str,
                                                              monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("ATTNRES_HEARTBEAT_INTERVAL", "1")
    monkeypatch.setenv("ATTNRES_HEARTBEAT_GRACE", "1")
    st = create(url)
    storage = open_storage(url, mode="write")
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", UserWarning)  # "heartbeat is meant for optimize": the point here
        dead = optuna.load_study(study_name="fake", storage=storage).ask()  # claimed, then its process "dies"
    if beat:
        storage.record_heartbeat(dead._trial_id)
    summary = run_worker(opened(url), runner=fake_runner, poll_s=0.2)
    assert summary.missing == 0 and summary.completed == 6
    trials = st.get_trials()
    assert trials[dead.number].state == TrialState.FAIL
    retry = [t for t in trials if t.system_attrs.get("failed_trial") == dead.number]
    assert len(retry) == 1 and retry[0].state == TrialState.COMPLETE
    assert retry[0].user_attrs[ATTR_CELL] == trials[dead.number].user_attrs[ATTR_CELL]
    assert all(len(v) == 1 for v in complete_by_cell(st).values()) and len(complete_by_cell(st)) == 6


def test_sampled_space_uses_tpe_for_n_trials(url: str) -> None:
    text = SPACE.replace("seeds: 2", "seeds: [3]") + "axes: {lr: {low: 1e-4, high: 1e-2, log: true}}\nn_trials: 4\n"
    st = create(url, text)
    assert isinstance(opened(url).study.sampler, optuna.samplers.TPESampler)
    assert not st.get_trials(states=(TrialState.WAITING,))
    summary = run_worker(opened(url), runner=fake_runner)
    assert summary.completed == 4
    for t in st.trials:
        assert 1e-4 <= t.params["lr"] <= 1e-2 and t.params["seed"] == 3
        assert RunConfig.from_dict(t.user_attrs["config"]).lr == t.params["lr"]


# ------------------------------------------------------------------------------- bad input

BAD_SPACES = {
    "malformed.yaml": "model: {n_layers: 2\n",
    "preset.yaml": SPACE.replace("block-s2", "block-s3x"),
    "key.yaml": SPACE + "sampler_options: {}\n",
    "type.yaml": SPACE.replace("seeds: 2", "seeds: two"),
    "depth.yaml": SPACE.replace("block-s2", "block-s8"),
}


@pytest.mark.parametrize("name", sorted(BAD_SPACES))
def test_bad_space_exits_2_and_creates_nothing(name: str, tmp_path: Path, monkeypatch, capsys) -> None:
    monkeypatch.chdir(tmp_path)
    (tmp_path / name).write_text(BAD_SPACES[name])
    code, out, err = cli(["study", "start", name], monkeypatch, capsys)
    assert code == 2 and out == ""
    assert len(err.strip().splitlines()) == 1 and err.startswith("error: search space ")
    assert sorted(p.name for p in tmp_path.iterdir()) == [name]  # no studies.db


@pytest.mark.parametrize("storage, message", [
    ("sqlite:///{tmp}/missing-dir/studies.db", "does not exist"),
    ("not a url", "not a SQLAlchemy URL"),
    ("nosuchdb://host/db", "cannot open storage"),
    ("postgresql+psycopg2://nobody@127.0.0.1:1/studies", "cannot open storage"),
])
def test_unopenable_storage_exits_2_and_creates_nothing(storage: str, message: str, tmp_path: Path,
                                                        monkeypatch, capsys) -> None:
    monkeypatch.chdir(tmp_path)
    code, _, err = cli(["study", "start", "smoke_ablation", "--storage", storage.format(tmp=tmp_path)],
                       monkeypatch, capsys)
    assert code == 2 and message in err and len(err.strip().splitlines()) == 1
    assert list(tmp_path.iterdir()) == []


def test_commands_that_read_never_create_a_database(tmp_path: Path, monkeypatch, capsys) -> None:
    monkeypatch.chdir(tmp_path)
    monkeypatch.delenv("ATTNRES_STORAGE", raising=False)
    for args in (["study", "resume", "x"], ["study", "status", "x"], ["report", "x"], ["dashboard"]):
        code, _, err = cli(args, monkeypatch, capsys)
        assert code == 2 and "no study database at studies.db" in err, args
    code, out, _ = cli(["study", "list"], monkeypatch, capsys)
    assert code == 0 and "no studies" in out
    assert list(tmp_path.iterdir()) == []


def test_existing_name_and_unknown_study_exit_2_without_changes(url: str, monkeypatch, capsys) -> None:
    monkeypatch.setenv("ATTNRES_STORAGE", url)
    create(url)
    code, _, err = cli(["study", "start", "smoke_ablation", "--name", "fake"], monkeypatch, capsys)
    assert code == 2 and "already exists" in err and "study resume fake" in err
    assert len(optuna.load_study(study_name="fake", storage=url).trials) == 6
    code, _, err = cli(["study", "resume", "nope"], monkeypatch, capsys)
    assert code == 2 and "no study named 'nope'" in err and "fake" in err
    assert optuna.get_all_study_names(url) == ["fake"]


def test_runs_record_the_commit_the_worker_started_with(url: str, monkeypatch: pytest.MonkeyPatch) -> None:
    """A commit that lands in the checkout while a worker trains must not be credited to
    the runs it makes: the worker imported the older code, so that commit is the one stored;
    and code run from an edited checkout is marked as not being any commit."""
    import subprocess

    from attnres_search.training import provenance

    git = {"HEAD": "1111111", "status": " M attnres_search/model/rules/full.py"}

    def fake_git(args: list[str], **_: Any) -> subprocess.CompletedProcess:
        return subprocess.CompletedProcess(args, 0, stdout=git["HEAD" if args[1] == "rev-parse" else "status"] + "\n")

    monkeypatch.setattr(provenance.subprocess, "run", fake_git)
    provenance.git_commit.cache_clear()

    def runner(cfg: RunConfig, **kwargs: Any) -> RunResult:
        git.update(HEAD="2222222", status="")  # someone commits the edit while this run trains
        result = fake_runner(cfg, **kwargs)
        result.git_commit = provenance.git_commit()  # what training/run.py stores
        return result

    try:
        create(url)
        assert run_worker(opened(url), runner=runner, n_trials=2).completed == 2
        provenance.git_commit.cache_clear()
        assert provenance.git_commit() == "2222222", "a clean checkout is its commit"
    finally:
        provenance.git_commit.cache_clear()
    commits = {t.user_attrs["git_commit"] for t in optuna.load_study(study_name="fake", storage=url).get_trials(
        states=(TrialState.COMPLETE,))}
    assert commits == {"1111111+dirty"}
