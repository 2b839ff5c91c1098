"""optuna-dashboard on our storage: its WSGI app, and the `dashboard` command, serve the
study and its trials (with our stored attributes) over real HTTP on 127.0.0.1."""

from __future__ import annotations

import json
import os
import socket
import subprocess
import sys
import threading
import time
import urllib.error
import urllib.request
from collections.abc import Iterator
from pathlib import Path
from typing import Any
from wsgiref.simple_server import WSGIRequestHandler, WSGIServer, make_server

import optuna
import optuna_dashboard
import pytest

from attnres_search.training.config import RunConfig, RunResult
from attnres_search.study.handle import new_study
from attnres_search.study.space_file import parse_space
from attnres_search.study.storage import open_storage
from attnres_search.study.worker import run_worker

optuna.logging.set_verbosity(optuna.logging.WARNING)
SPACE = """
name: dash
model: {n_layers: 2, d_model: 32, n_heads: 2, seq_len: 32}
train: {tokens: 10k, batch_size: 4}
variants: [baseline, full]
seeds: 1
"""
CLI = ("import click; from attnres_search.cli.errors import run_guarded; "
       "from attnres_search.cli.dashboard_cmd import dashboard; "
       "run_guarded(click.Group('attnres-search', commands=[dashboard]))")


def fake_runner(cfg: RunConfig, **_: Any) -> RunResult:
    loss = 2.5 if cfg.model.residual.kind == "prenorm" else 2.4
    return RunResult(config=cfg.to_dict(), params_total=10, params_non_embedding=5, flops_per_token=1.0,
                     flops_total=1.0, tokens=cfg.tokens, steps=2, tokens_per_s=1.0, wall_time_s=0.1,
                     final_val_loss=loss, best_val_loss=loss, val_curve=[(1, loss + 1), (2, loss)])


@pytest.fixture
def url(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> str:
    monkeypatch.setenv("ATTNRES_RUNS_DIR", str(tmp_path / "runs"))
    url = f"sqlite:///{tmp_path / 'studies.db'}"
    run_worker(new_study(parse_space(SPACE), "dash", open_storage(url, mode="create")), runner=fake_runner)
    return url


class _Quiet(WSGIRequestHandler):
    def log_message(self, *args: Any) -> None:
        pass


@pytest.fixture
def served(url: str) -> Iterator[str]:
    server: WSGIServer = make_server("127.0.0.1", 0, optuna_dashboard.wsgi(open_storage(url, mode="read")), handler_class=_Quiet)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    yield f"http://127.0.0.1:{server.server_port}"
    server.shutdown()


def get(url: str) -> Any:
    with urllib.request.urlopen(url, timeout=10) as response:
        return json.load(response)


def test_wsgi_app_lists_the_study_and_its_trials(served: str) -> None:
    studies = get(f"{served}/api/studies")["study_summaries"]
    assert [s["study_name"] for s in studies] == ["dash"]
    detail = get(f"{served}/api/studies/{studies[0]['study_id']}")
    assert detail["name"] == "dash" and len(detail["trials"]) == 2
    assert {a["key"] for a in detail["user_attrs"]} >= {"space", "kind"}
    for trial in detail["trials"]:
        assert trial["state"] == "Complete"
        attrs = {a["key"]: a["value"] for a in trial["user_attrs"]}
        assert float(attrs["final_val_loss"]) == trial["values"][0] and "config" in attrs
        assert [v["step"] for v in trial["intermediate_values"]] == [1, 2]
        assert {p["name"] for p in trial["params"]} == {"variant", "seed"}


def test_dashboard_command_serves_the_storage(url: str) -> None:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    proc = subprocess.Popen([sys.executable, "-c", CLI, "dashboard", "--storage", url, "--port", str(port)],
                            stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, env=dict(os.environ))
    try:
        deadline = time.monotonic() + 60
        while True:
            try:
                studies = get(f"http://127.0.0.1:{port}/api/studies")["study_summaries"]
                break
            except (urllib.error.URLError, ConnectionError):
                assert proc.poll() is None, proc.stderr.read() if proc.stderr else ""
                assert time.monotonic() < deadline, "the dashboard never answered"
                time.sleep(0.2)
        assert [s["study_name"] for s in studies] == ["dash"]
    finally:
        proc.terminate()
        proc.wait(timeout=10)
