"""optuna-dashboard on our storage: its WSGI app, and the `dashboard` command, serve the
study and its trials (with our stored attributes) over real HTTP on 127.0.0.1; the study's
page carries the report as its note and the forest plot and loss curves as figures; the
command is read-only unless --writable."""

from __future__ import annotations

import gc
import json
import os
import socket
import sqlite3
import subprocess
import sys
import time
import urllib.error
import urllib.request
from pathlib import Path
from typing import Any

import numpy as np
import optuna
import optuna_dashboard
import pytest

from attnres_search.reports.build import build_report
from attnres_search.reports.dashboard import FOREST_ID, FOREST_TITLE, LOSS_ID, LOSS_TITLE, comparing_rows, publish
from attnres_search.reports.dashboard import note_markdown
from attnres_search.reports.records import load_records
from attnres_search.study.dashboard_app import READ_ONLY_REASON, dashboard_app
from attnres_search.study.handle import new_study, open_study
from attnres_search.study.space_file import parse_space
from attnres_search.study.storage import open_storage
from attnres_search.study.worker import run_worker
from attnres_search.training.config import RunConfig, RunResult
from tests.cli_runner import cli

optuna.logging.set_verbosity(optuna.logging.WARNING)
SPACE = """
name: dash
model: {n_layers: 2, d_model: 32, n_heads: 2, seq_len: 32}
train: {tokens: 10k, batch_size: 4}
variants: [baseline, full]
seeds: 2
"""
CLI = ("import click; from attnres_search.cli.errors import run_guarded; "
       "from attnres_search.cli.dashboard_cmd import dashboard; "
       "run_guarded(click.Group('attnres-search', commands=[dashboard]))")


def fake_runner(cfg: RunConfig, **_: Any) -> RunResult:
    loss = (2.5 if cfg.model.residual.kind == "prenorm" else 2.4) + 0.03 * cfg.seed + (0.01 if cfg.seed else 0.0)
    return RunResult(config=cfg.to_dict(), params_total=10, params_non_embedding=5, flops_per_token=1.0,
                     flops_total=1.0, tokens=cfg.tokens, steps=2, tokens_per_s=1.0, wall_time_s=0.1,
                     final_val_loss=loss, best_val_loss=loss, val_curve=[(1, loss + 1), (2, loss)])


@pytest.fixture
def url(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> str:
    monkeypatch.setenv("ATTNRES_RUNS_DIR", str(tmp_path / "runs"))
    url = f"sqlite:///{tmp_path / 'studies.db'}"
    run_worker(new_study(parse_space(SPACE), "dash", open_storage(url, mode="create")), runner=fake_runner)
    return url


@pytest.fixture
def served(url: str, serve_wsgi) -> str:
    return serve_wsgi(optuna_dashboard.wsgi(open_storage(url, mode="read")))


def get(url: str) -> Any:
    with urllib.request.urlopen(url, timeout=10) as response:
        return json.load(response)


def request(url: str, method: str, body: bytes | None = None) -> tuple[int, Any]:
    """(status, JSON body or None) of a request that may fail with an HTTP error."""
    req = urllib.request.Request(url, data=body, method=method, headers={"Content-Type": "application/json"})
    try:
        with urllib.request.urlopen(req, timeout=10) as response:
            text = response.read()
            return response.status, json.loads(text) if text else None
    except urllib.error.HTTPError as exc:
        text = exc.read()
        return exc.code, json.loads(text) if text else None


def study_id(base: str, name: str) -> int:
    return next(s["study_id"] for s in get(f"{base}/api/studies")["study_summaries"] if s["study_name"] == name)


def test_wsgi_app_lists_the_study_and_its_trials(served: str) -> None:
    studies = get(f"{served}/api/studies")["study_summaries"]
    assert [s["study_name"] for s in studies] == ["dash"]
    detail = get(f"{served}/api/studies/{studies[0]['study_id']}")
    assert detail["name"] == "dash" and len(detail["trials"]) == 4
    assert {a["key"] for a in detail["user_attrs"]} >= {"space", "kind"}
    for trial in detail["trials"]:
        assert trial["state"] == "Complete"
        attrs = {a["key"]: a["value"] for a in trial["user_attrs"]}
        assert float(attrs["final_val_loss"]) == trial["values"][0] and "config" in attrs
        assert [v["step"] for v in trial["intermediate_values"]] == [1, 2]
        assert {p["name"] for p in trial["params"]} == {"variant", "seed"}


def test_the_report_and_its_figures_go_on_the_study_page(url: str, serve_wsgi) -> None:
    handle = open_study("dash", open_storage(url, mode="write"))
    records = load_records(handle.study, handle.space)
    report = build_report(records, "dash", "ablation")
    published = publish(handle.study, report, records)
    assert published.figures == {FOREST_ID: FOREST_TITLE, LOSS_ID: LOSS_TITLE}
    publish(handle.study, report, records)  # again: the figures are replaced, not added

    base = serve_wsgi(optuna_dashboard.wsgi(open_storage(url, mode="read")))
    detail = get(f"{base}/api/studies/{study_id(base, 'dash')}")
    assert detail["note"]["body"] == note_markdown(report) and detail["note"]["version"] == 2
    assert report.tables[0].title in detail["note"]["body"]
    figures = {g["id"]: json.loads(g["graph_object"]) for g in detail["plotly_graph_objects"]}
    assert set(figures) == {FOREST_ID, LOSS_ID}

    forest = figures[FOREST_ID]
    assert forest["layout"]["title"]["text"] == FOREST_TITLE
    ours = next(t for t in forest["data"] if t["name"].startswith("ours, equal tokens"))
    rows = [r for r in comparing_rows(report) if r.get("delta_mean") is not None]
    assert forest["layout"]["yaxis"]["ticktext"] == [r["variant"] for r in rows] == ["full"]
    assert ours["y"] == [0] and ours["x"] == pytest.approx([-0.1])  # full is 0.1 below the baseline at every seed
    paper = next(t for t in forest["data"] if t["name"] == "paper Δ")
    assert paper["x"] == pytest.approx([-0.029])

    curves = figures[LOSS_ID]
    assert curves["layout"]["title"]["text"] == LOSS_TITLE
    means = {t["name"]: t for t in curves["data"] if t.get("mode") == "lines+markers"}
    assert set(means) == {"baseline (n=2)", "full (n=2)"}
    seeds = [fake_runner(handle.space.run_config({"variant": "baseline", "seed": s})).val_curve for s in (0, 1)]
    assert means["baseline (n=2)"]["y"] == pytest.approx(np.mean([[v for _, v in c] for c in seeds], axis=0))
    bands = [t for t in curves["data"] if t.get("fill") == "toself"]
    assert len(bands) == 2  # lowest to highest seed, one per variant


def test_a_study_puts_its_report_on_its_page_when_it_finishes(tmp_path: Path, monkeypatch, capsys) -> None:
    import attnres_search.training.run as training_run
    from optuna_dashboard import get_note

    monkeypatch.chdir(tmp_path)
    monkeypatch.setattr(training_run, "run", fake_runner)
    (tmp_path / "fin.yaml").write_text(SPACE.replace("name: dash", "name: fin"))
    code, _, err = cli(["study", "start", "fin.yaml", "--n-trials", "3"], monkeypatch, capsys)
    study = optuna.load_study(study_name="fin", storage="sqlite:///studies.db")
    assert code == 0, err
    assert get_note(study) == "" and "is complete" not in err  # one run still missing: nothing published
    code, _, err = cli(["study", "resume", "fin"], monkeypatch, capsys)
    assert code == 0, err
    assert "study fin is complete: its report and 2 figure(s)" in err
    assert "Variants against the baseline" in get_note(optuna.load_study(study_name="fin", storage="sqlite:///studies.db"))


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _start_dashboard(url: str, *flags: str) -> tuple[subprocess.Popen, str]:
    port = _free_port()
    proc = subprocess.Popen([sys.executable, "-c", CLI, "dashboard", "--storage", url, "--port", str(port), *flags],
                            stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, env=dict(os.environ))
    base = f"http://127.0.0.1:{port}"
    deadline = time.monotonic() + 60
    while True:
        try:
            get(f"{base}/api/studies")
            return proc, base
        except (urllib.error.URLError, ConnectionError):
            assert proc.poll() is None, proc.stderr.read() if proc.stderr else ""
            assert time.monotonic() < deadline, "the dashboard never answered"
            time.sleep(0.2)


def _settled_bytes(db: Path) -> bytes:
    """The database's bytes once every committed write is in the file itself: a checkpoint
    moves what the write-ahead log holds into it, so two snapshots differ only if a write
    happened in between."""
    gc.collect()  # the fixture's storages: their connections close
    with sqlite3.connect(db) as conn:
        conn.execute("PRAGMA wal_checkpoint(TRUNCATE)")
    conn.close()
    return db.read_bytes()


def test_dashboard_is_read_only_unless_writable(url: str, tmp_path: Path, serve_wsgi, monkeypatch, capsys) -> None:
    db = tmp_path / "studies.db"
    before = _settled_bytes(db)
    proc, base = _start_dashboard(url)
    try:
        sid = study_id(base, "dash")
        for method, path, body in (("DELETE", f"/api/studies/{sid}", None),
                                   ("PUT", f"/api/studies/{sid}/note", json.dumps({"version": 1, "body": "x"}).encode()),
                                   ("POST", f"/api/studies/{sid}/rename", json.dumps({"study_name": "y"}).encode())):
            status, answer = request(base + path, method, body)
            assert status == 403 and answer == {"reason": READ_ONLY_REASON}, (method, path, status, answer)
        assert get(f"{base}/api/studies/{sid}")["name"] == "dash"
    finally:
        proc.terminate()
        proc.wait(timeout=10)
    assert _settled_bytes(db) == before

    # --writable, through the same command in this process (its server on a thread)
    from attnres_search.study import dashboard_app as dashboard_module

    served: list[str] = []
    monkeypatch.setattr(dashboard_module, "serve", lambda app, host, port: served.append(serve_wsgi(app)))
    code, _, err = cli(["dashboard", "--storage", url, "--writable"], monkeypatch, capsys)
    assert code == 0 and "writable" in err, err
    status, _ = request(f"{served[0]}/api/studies/{study_id(served[0], 'dash')}", "DELETE")
    assert status == 204
    assert get(f"{served[0]}/api/studies")["study_summaries"] == []
    assert optuna.get_all_study_names(storage=url) == []


def test_dashboard_on_a_missing_storage_is_bad_input(tmp_path: Path, monkeypatch, capsys) -> None:
    code, _, err = cli(["dashboard", "--storage", f"sqlite:///{tmp_path / 'none.db'}"], monkeypatch, capsys)
    assert code == 2 and err.startswith("error: no study database") and err.count("\n") == 1
    assert not (tmp_path / "none.db").exists()


RESULTS = Path(__file__).resolve().parents[1] / "results"


@pytest.mark.parametrize("db", [RESULTS / name / "studies.db" for name in ("cpu_ablation", "cpu_block_count",
                                                                          "pilot_depth")],
                         ids=lambda p: p.parent.name)
def test_committed_results_open_with_their_note_and_figures(db: Path, tmp_path: Path, serve_wsgi) -> None:
    """Every committed storage shows its report and figures (regenerated with `report --note`)."""
    copy = tmp_path / "studies.db"
    copy.write_bytes(db.read_bytes())
    app, _ = dashboard_app(f"sqlite:///{copy}", tmp_path / "runs")
    base = serve_wsgi(app)
    for summary in get(f"{base}/api/studies")["study_summaries"]:
        detail = get(f"{base}/api/studies/{summary['study_id']}")
        assert f"study {summary['study_name']}" in detail["note"]["body"] and "\n|---" in detail["note"]["body"]
        assert {g["id"] for g in detail["plotly_graph_objects"]} == {FOREST_ID, LOSS_ID}
