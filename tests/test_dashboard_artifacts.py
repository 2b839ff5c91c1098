"""Where researchers look: each trial's run.json and figures are Optuna artifacts in a
file-system store next to the database, and `report --note` saves the report as the
study's note with its figures; both checked through optuna-dashboard's own WSGI app."""

from __future__ import annotations

import io
import json
from pathlib import Path
from typing import Any
from wsgiref.util import setup_testing_defaults

import optuna
import pytest

from attnres_search.reports.dashboard import FOREST_ID, LOSS_ID
from attnres_search.study.artifacts import artifact_dir
from tests.cli_runner import cli

SPACE = """
name: art
model: {n_layers: 1, d_model: 16, n_heads: 2, seq_len: 16}
train: {tokens: 1024, batch_size: 4, val_every: 8, val_windows: 2, diagnostics_every: 8}
variants: [baseline, block-s2]
seeds: 1
"""


def get(app: Any, path: str) -> tuple[str, bytes]:
    environ: dict[str, Any] = {"PATH_INFO": path, "REQUEST_METHOD": "GET", "wsgi.input": io.BytesIO()}
    setup_testing_defaults(environ)
    status: list[str] = []
    body = b"".join(app(environ, lambda s, headers, exc_info=None: status.append(s)))
    return status[0], body


@pytest.mark.slow
def test_trial_artifacts_and_the_report_note_show_in_the_dashboard(tmp_path: Path, monkeypatch, capsys) -> None:
    from optuna.artifacts import FileSystemArtifactStore
    from optuna_dashboard import wsgi

    monkeypatch.chdir(tmp_path)
    monkeypatch.delenv("ATTNRES_RUNS_DIR", raising=False)
    (tmp_path / "art.yaml").write_text(SPACE)
    url = f"sqlite:///{tmp_path / 'studies.db'}"
    code, _, err = cli(["study", "start", "art.yaml", "--storage", url, "--quiet"], monkeypatch, capsys)
    assert code == 0, err
    code, out, err = cli(["report", "art", "--storage", url, "--note", "--format", "markdown"], monkeypatch, capsys)
    assert code == 0, err
    assert "saved the report as the note" in err

    store_dir = artifact_dir(url, tmp_path / "runs")
    assert store_dir == tmp_path / "studies.db.artifacts" and store_dir.is_dir()
    app = wsgi(url, artifact_store=FileSystemArtifactStore(str(store_dir)))
    study_id = optuna.load_study(study_name="art", storage=url)._study_id  # noqa: SLF001 - the dashboard's URL key
    status, body = get(app, f"/api/studies/{study_id}")
    assert status.startswith("200"), body[:200]
    detail = json.loads(body)
    assert "Variants against the baseline" in detail["note"]["body"]
    assert {g["id"] for g in detail["plotly_graph_objects"]} == {FOREST_ID, LOSS_ID}
    trials = detail["trials"]
    assert len(trials) == 2
    for trial in trials:
        names = {a["filename"]: a for a in trial["artifacts"]}
        assert "run.json" in names and "loss.png" in names, names.keys()
        status, blob = get(app, f"/artifacts/{study_id}/{trial['trial_id']}/{names['run.json']['artifact_id']}")
        assert status.startswith("200")
        run = json.loads(blob)
        assert run["final_val_loss"] == pytest.approx(trial["values"][0])


def test_read_only_report_writes_no_note_and_no_artifact_folder(tmp_path: Path, monkeypatch, capsys) -> None:
    import attnres_search.training.run as training_run
    from tests.test_cli_opens_once import fake_run

    monkeypatch.chdir(tmp_path)
    monkeypatch.setattr(training_run, "run", fake_run)
    (tmp_path / "art.yaml").write_text(SPACE)
    assert cli(["study", "start", "art.yaml", "--quiet"], monkeypatch, capsys)[0] == 0
    before = (tmp_path / "studies.db").read_bytes()
    code, _, err = cli(["report", "art", "--format", "json"], monkeypatch, capsys)
    assert code == 0, err
    assert (tmp_path / "studies.db").read_bytes() == before
