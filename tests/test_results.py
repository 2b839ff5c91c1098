"""Committed evidence stays true: every ``results/<name>/`` report re-renders from its
frozen storage to exactly the committed ``report.json``, and reading it writes nothing."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import pytest

from cli_runner import cli

RESULTS = Path(__file__).resolve().parents[1] / "results"
FROZEN = sorted(p.parent for p in RESULTS.glob("*/report.json") if (p.parent / "studies.db").exists())


def test_there_is_committed_evidence() -> None:
    assert FROZEN, "results/ holds no frozen study"


@pytest.mark.parametrize("folder", FROZEN, ids=[p.name for p in FROZEN])
def test_committed_report_rerenders_from_its_frozen_storage(folder: Path, tmp_path: Path, monkeypatch, capsys) -> None:
    committed = json.loads((folder / "report.json").read_text())
    db = tmp_path / "studies.db"
    shutil.copyfile(folder / "studies.db", db)
    before = db.read_bytes()
    monkeypatch.chdir(tmp_path)
    code, out, err = cli(["report", committed["study"], "--storage", f"sqlite:///{db}", "--format", "json"],
                         monkeypatch, capsys)
    assert code == 0, err
    assert json.loads(out) == committed
    assert db.read_bytes() == before, "rendering a report must not write to the storage"
    assert (folder / "README.md").exists(), "every result says how it was produced"
