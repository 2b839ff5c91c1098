"""Each study command opens its storage once and passes one StudyHandle down to the worker,
the progress display and the report (issue 9): `demo` used to open it three times, and
`study start` twice. Counted at Optuna's RDBStorage constructor, with a fake runner."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import optuna
import pytest

from attnres_search.training.config import RunConfig, RunResult
from tests.cli_runner import cli

optuna.logging.set_verbosity(optuna.logging.WARNING)

SPACE = """
model: {n_layers: 2, d_model: 32, n_heads: 2, seq_len: 32}
train: {tokens: 10k, batch_size: 4}
variants: [baseline, full]
seeds: 2
"""


def fake_run(cfg: RunConfig, **_: Any) -> RunResult:
    loss = 3.0 + 0.01 * cfg.seed - (0.05 if cfg.model.residual.kind != "prenorm" else 0.0)
    return RunResult(config=cfg.to_dict(), params_total=10, params_non_embedding=5, flops_per_token=1.0,
                     flops_total=1.0, tokens=cfg.tokens, steps=2, tokens_per_s=1.0, wall_time_s=0.1,
                     final_val_loss=loss, best_val_loss=loss, val_curve=[(1, loss + 1), (2, loss)])


@pytest.fixture
def opens(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> list[str]:
    """The URLs of every RDBStorage constructed while the test runs."""
    import attnres_search.training.run as training_run

    monkeypatch.chdir(tmp_path)
    monkeypatch.delenv("ATTNRES_STORAGE", raising=False)
    monkeypatch.setenv("ATTNRES_RUNS_DIR", str(tmp_path / "runs"))
    monkeypatch.setattr(training_run, "run", fake_run)
    seen: list[str] = []
    real = optuna.storages.RDBStorage

    class Counting(real):  # type: ignore[misc, valid-type]
        def __init__(self, url: str, *args: Any, **kwargs: Any) -> None:
            seen.append(url)
            super().__init__(url, *args, **kwargs)

    monkeypatch.setattr(optuna.storages, "RDBStorage", Counting)
    return seen


def test_start_resume_status_and_report_each_open_the_storage_once(opens: list[str], tmp_path: Path,
                                                                   monkeypatch, capsys) -> None:
    (tmp_path / "s.yaml").write_text(SPACE)
    for args in (["study", "start", "s.yaml", "--n-trials", "2"], ["study", "resume", "s"],
                 ["study", "status", "s"], ["report", "s", "--format", "json"], ["worker", "s"]):
        opens.clear()
        code, _, err = cli(args, monkeypatch, capsys)
        assert code == 0, err
        assert opens == ["sqlite:///studies.db"], args
    assert len(optuna.load_study(study_name="s", storage="sqlite:///studies.db").get_trials(
        states=(optuna.trial.TrialState.COMPLETE,))) == 4


def test_demo_opens_the_storage_once_and_resumes_its_study(opens: list[str], monkeypatch, capsys) -> None:
    code, out, err = cli(["demo"], monkeypatch, capsys)
    assert code == 0, err
    assert opens == ["sqlite:///studies.db"]
    assert "created" in err and "│ full " in out
    opens.clear()
    code, out, err = cli(["demo"], monkeypatch, capsys)
    assert code == 0 and "resuming study demo-ablation" in err and "ran 0 trial(s)" in err
    assert opens == ["sqlite:///studies.db"]
