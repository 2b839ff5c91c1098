"""Where studies live: resolving the storage URL and opening it safely.

The URL comes from ``--storage``, else ``$ATTNRES_STORAGE``, else ``sqlite:///studies.db``
in the working directory; any SQLAlchemy URL works (PostgreSQL for several machines).

SQLite gets WAL journaling (readers such as the dashboard never block a writing worker)
and a busy timeout (a worker waits for the lock instead of failing). Every storage records
heartbeats while a trial runs: a trial whose process died stops beating, is failed after
the grace period by the next worker that looks, and is re-queued by
``RetryHeartbeatStaleTrialCallback`` (Optuna 5's name for ``RetryFailedTrialCallback``).
``$ATTNRES_HEARTBEAT_INTERVAL`` / ``$ATTNRES_HEARTBEAT_GRACE`` (seconds) tune that.

Opening never creates anything when it fails: a URL that cannot be opened is a one-line
``ValueError`` (bad input), and commands that only read refuse a SQLite file that does
not exist instead of creating an empty one.
"""

from __future__ import annotations

import os
import warnings
from pathlib import Path

DEFAULT_URL = "sqlite:///studies.db"
ENV_URL = "ATTNRES_STORAGE"
ENV_HEARTBEAT = "ATTNRES_HEARTBEAT_INTERVAL"
ENV_GRACE = "ATTNRES_HEARTBEAT_GRACE"
ENV_RUNS_DIR = "ATTNRES_RUNS_DIR"
DEFAULT_HEARTBEAT_S = 60
MAX_RETRY = 3
BUSY_TIMEOUT_S = 60


def resolve_url(url: str | None = None) -> str:
    """``--storage`` beats ``$ATTNRES_STORAGE`` beats the default."""
    return url or os.environ.get(ENV_URL) or DEFAULT_URL


def display_url(url: str) -> str:
    """The URL with any password masked, for messages."""
    from sqlalchemy.engine import make_url

    try:
        return make_url(url).render_as_string(hide_password=True)
    except Exception:  # noqa: BLE001 - an unparsable URL is shown as given
        return url


def sqlite_path(url: str) -> Path | None:
    """The database file of a file-backed SQLite URL (None otherwise, or for :memory:)."""
    from sqlalchemy.engine import make_url

    parsed = make_url(url)
    if parsed.get_backend_name() != "sqlite" or parsed.database in (None, "", ":memory:"):
        return None
    return Path(parsed.database)


def heartbeat_settings() -> tuple[int, int]:
    """(interval, grace) in seconds from the environment; grace defaults to 3 intervals."""
    interval = _positive_int_env(ENV_HEARTBEAT, DEFAULT_HEARTBEAT_S)
    return interval, _positive_int_env(ENV_GRACE, 3 * interval)


def _positive_int_env(name: str, default: int) -> int:
    raw = os.environ.get(name)
    if raw is None or raw == "":
        return default
    try:
        value = int(raw)
    except ValueError:
        value = 0
    if value < 1:
        raise ValueError(f"${name} must be a positive number of seconds, got {raw!r}")
    return value


def open_storage(url: str | None = None, *, must_exist: bool = True):  # -> optuna.storages.RDBStorage
    """An ``RDBStorage`` with heartbeats and retries; ``must_exist`` for commands that read."""
    import optuna
    import sqlalchemy
    from sqlalchemy.engine import make_url

    url = resolve_url(url)
    shown = display_url(url)
    try:
        parsed = make_url(url)
    except sqlalchemy.exc.ArgumentError:
        raise ValueError(f"storage {url!r} is not a SQLAlchemy URL (e.g. sqlite:///studies.db, "
                         "postgresql://user@host/db)") from None
    engine_kwargs: dict = {}
    path = sqlite_path(url)
    if parsed.get_backend_name() == "sqlite":
        # isolation_level=None: pysqlite stops issuing its own deferred BEGINs (which leave
        # SELECTs outside the transaction); _serialize_sqlite_transactions issues ours.
        engine_kwargs["connect_args"] = {"timeout": BUSY_TIMEOUT_S, "isolation_level": None}
    if path is not None:
        if must_exist and not path.is_file():
            raise ValueError(f"no study database at {path} (storage {shown}); "
                             "start a study with `attnres-search study start SPACE`")
        if not path.parent.is_dir():
            raise ValueError(f"cannot open storage {shown}: directory {path.parent} does not exist")
    interval, grace = heartbeat_settings()
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", optuna.exceptions.ExperimentalWarning)
            storage = optuna.storages.RDBStorage(
                url, engine_kwargs=engine_kwargs, heartbeat_interval=interval, grace_period=grace,
                heartbeat_stale_trial_callback=optuna.storages.RetryHeartbeatStaleTrialCallback(max_retry=MAX_RETRY),
            )
        if path is not None:
            _enable_wal(storage.engine)  # first: the journal mode cannot change inside a transaction
        if parsed.get_backend_name() == "sqlite":
            _serialize_sqlite_transactions(storage.engine)
    except (sqlalchemy.exc.SQLAlchemyError, ImportError, OSError) as exc:
        reason = str(getattr(exc, "orig", None) or exc).strip().splitlines()[0]
        raise ValueError(f"cannot open storage {shown}: {reason}") from None
    return storage


def _serialize_sqlite_transactions(engine) -> None:  # engine: sqlalchemy.engine.Engine
    """Start every transaction with BEGIN IMMEDIATE.

    Optuna claims a WAITING trial by reading its state and then updating it in one
    transaction (SELECT ... FOR UPDATE elsewhere). SQLite has no row locks, and pysqlite
    by default runs the SELECT outside any transaction, so two workers can both read
    WAITING and both run the trial. Taking SQLite's write lock when the transaction begins
    makes read-then-write atomic; a worker that finds the lock taken waits (busy timeout)
    instead of failing with "database is locked".
    """
    from sqlalchemy import event

    @event.listens_for(engine, "begin")
    def _begin_immediate(conn) -> None:  # noqa: ANN001 - SQLAlchemy Connection
        conn.exec_driver_sql("BEGIN IMMEDIATE")


def _enable_wal(engine) -> None:  # engine: sqlalchemy.engine.Engine
    """WAL is a property of the database file, so setting it once per open is enough."""
    with engine.connect() as conn:
        conn.exec_driver_sql("PRAGMA journal_mode=WAL")


def runs_dir(url: str) -> Path:
    """Where trials write checkpoints and diagnostics: ``$ATTNRES_RUNS_DIR``, else ``runs/``
    beside a SQLite database, else ``runs/`` in the working directory."""
    if os.environ.get(ENV_RUNS_DIR):
        return Path(os.environ[ENV_RUNS_DIR])
    path = sqlite_path(url)
    return (path.parent if path is not None else Path.cwd()) / "runs"
