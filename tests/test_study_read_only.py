"""Commands that only read never write (issue 10, item 10): `study list`, `study status`,
`report` and `dashboard` open a storage without creating tables, migrating, or switching
the journal mode. A database that holds no studies is exit 2 "not a study storage" and its
bytes are unchanged; the commands that run trials refuse it the same way."""

from __future__ import annotations

import hashlib
import sqlite3
from pathlib import Path

import optuna
import pytest

from attnres_search.study.handle import new_study
from attnres_search.study.space_file import parse_space
from attnres_search.study.storage import open_storage
from tests.cli_runner import cli

optuna.logging.set_verbosity(optuna.logging.WARNING)

READERS = [["study", "list"], ["study", "status", "x"], ["report", "x"], ["dashboard"]]
WRITERS = [["study", "resume", "x"], ["worker", "x"], ["launch", "x"], ["study", "delete", "x", "--yes"]]
SPACE = """
model: {n_layers: 2, d_model: 32, n_heads: 2, seq_len: 32}
train: {tokens: 10k, batch_size: 4}
variants: [baseline, full]
seeds: 1
"""


@pytest.fixture(autouse=True)
def no_server(monkeypatch: pytest.MonkeyPatch) -> None:
    """`dashboard` would serve forever once it got past its checks: make that a failure."""
    import optuna_dashboard

    def refuse(*args: object, **kwargs: object) -> None:
        raise AssertionError("the dashboard started on a storage it should have refused")

    monkeypatch.setattr(optuna_dashboard, "run_server", refuse)
    from attnres_search.study import dashboard_app

    monkeypatch.setattr(dashboard_app, "serve", refuse)


def digest(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


def journal_mode(path: Path) -> str:
    with sqlite3.connect(path) as conn:
        return conn.execute("PRAGMA journal_mode").fetchone()[0]


def unrelated_db(path: Path) -> Path:
    with sqlite3.connect(path) as conn:
        conn.execute("CREATE TABLE notes (id INTEGER PRIMARY KEY, text TEXT)")
        conn.execute("INSERT INTO notes (text) VALUES ('keep me')")
    return path


@pytest.mark.parametrize("command", READERS + WRITERS, ids=lambda c: " ".join(c[:2]))
@pytest.mark.parametrize("kind", ["unrelated", "empty-file"])
def test_a_database_without_studies_is_refused_and_left_unchanged(kind: str, command: list[str], tmp_path: Path,
                                                                 monkeypatch, capsys) -> None:
    monkeypatch.chdir(tmp_path)
    db = tmp_path / "other.db"
    if kind == "unrelated":
        unrelated_db(db)
    else:
        db.write_bytes(b"")
    before, mode = digest(db), journal_mode(db) if kind == "unrelated" else None
    code, out, err = cli([*command, "--storage", f"sqlite:///{db}"], monkeypatch, capsys)
    assert code == 2 and "not a study storage" in err and len(err.strip().splitlines()) == 1, out + err
    assert digest(db) == before
    assert sorted(p.name for p in tmp_path.iterdir()) == ["other.db"]  # no runs/, no WAL files left
    if kind == "unrelated":
        assert journal_mode(db) == mode == "delete"  # not switched to WAL
    else:
        assert db.stat().st_size == 0


def test_reading_a_real_study_storage_does_not_change_it(tmp_path: Path, monkeypatch, capsys) -> None:
    monkeypatch.chdir(tmp_path)
    db = tmp_path / "studies.db"
    opened = open_storage(f"sqlite:///{db}", mode="create")
    new_study(parse_space(SPACE), "x", opened)
    opened.engine.dispose()
    before = digest(db)
    for command in (["study", "list"], ["study", "status", "x"], ["report", "x", "--format", "json"]):
        code, out, err = cli([*command, "--storage", f"sqlite:///{db}"], monkeypatch, capsys)
        assert code == 0, err
    assert digest(db) == before


def test_an_older_optuna_schema_is_not_migrated(tmp_path: Path, monkeypatch, capsys) -> None:
    """A storage whose schema version is not Optuna's current one is refused, not upgraded."""
    monkeypatch.chdir(tmp_path)
    db = tmp_path / "studies.db"
    opened = open_storage(f"sqlite:///{db}", mode="create")
    new_study(parse_space(SPACE), "x", opened)
    opened.engine.dispose()
    with sqlite3.connect(db) as conn:
        conn.execute("UPDATE alembic_version SET version_num = 'v3.0.0.a'")
    before = digest(db)
    code, _, err = cli(["study", "status", "x", "--storage", f"sqlite:///{db}"], monkeypatch, capsys)
    assert code == 2 and "optuna storage upgrade" in err and len(err.strip().splitlines()) == 1, err
    assert digest(db) == before
