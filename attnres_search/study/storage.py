"""Where studies live: resolving the storage URL and opening it safely.

The URL comes from ``--storage``, else ``$ATTNRES_STORAGE``, else ``sqlite:///studies.db``
in the working directory; any SQLAlchemy URL works (PostgreSQL for several machines).

A storage is opened in one of three modes, and only ``create`` ever writes schema:

* ``create`` (``study start``, ``demo``): Optuna's tables are created when missing, and a
  new SQLite file gets WAL journaling (readers such as the dashboard never block a
  writing worker; it is a property of the file, so it is set once, here).
* ``write`` (workers, ``resume``, ``launch``, ``delete``): the storage must already be a
  study storage; nothing is created or migrated.
* ``read`` (``list``, ``status``, ``report``, ``dashboard``): the same, and SQLite
  transactions do not take the write lock.

Before Optuna touches a database that must already hold studies, its tables are looked up
with SQLAlchemy's inspector: an unrelated database or an empty file is "not a study
storage" (bad input), and it is left exactly as it was (no tables, no WAL switch).

Every storage records heartbeats while a trial runs: a trial whose process died stops
beating, is failed after the grace period by the next worker that looks, and is re-queued
by ``RetryHeartbeatStaleTrialCallback``. The interval and grace belong to each *study*
(stored with it at creation, see :func:`heartbeat_settings`, changed only by
``study set``): workers with different settings would otherwise fail each other's
healthy trials. The storage is opened with the defaults and the study's values are
applied to it when the study is opened (:func:`apply_heartbeat`).

A URL that cannot be opened is a one-line :class:`~attnres_search.errors.BadInput`; in-memory
SQLite is refused, since a study there vanishes with the process.
"""

from __future__ import annotations

import os
import warnings
from pathlib import Path
from typing import TYPE_CHECKING, Any, Literal

from attnres_search.errors import BadInput

if TYPE_CHECKING:
    import optuna
    import sqlalchemy

Mode = Literal["create", "write", "read"]

DEFAULT_URL = "sqlite:///studies.db"
ENV_URL = "ATTNRES_STORAGE"
ENV_HEARTBEAT = "ATTNRES_HEARTBEAT_INTERVAL"
ENV_GRACE = "ATTNRES_HEARTBEAT_GRACE"
ENV_RUNS_DIR = "ATTNRES_RUNS_DIR"
DEFAULT_HEARTBEAT_S = 60
MAX_RETRY = 3
BUSY_TIMEOUT_S = 60
# Tables whose presence (with their one bookkeeping row each) makes a database an Optuna storage
# that opening with skip_table_creation leaves unwritten.
STUDY_TABLES = ("studies", "trials", "trial_heartbeats", "version_info", "alembic_version")


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


def _parse(url: str) -> "sqlalchemy.engine.URL":
    import sqlalchemy
    from sqlalchemy.engine import make_url

    try:
        return make_url(url)
    except sqlalchemy.exc.ArgumentError:
        raise BadInput(f"storage {url!r} is not a SQLAlchemy URL (e.g. sqlite:///studies.db, "
                       "postgresql://user@host/db)") from None


def is_in_memory(url: str) -> bool:
    """``sqlite://`` and ``sqlite:///:memory:``: a database that dies with the process."""
    parsed = _parse(url)
    return parsed.get_backend_name() == "sqlite" and parsed.database in (None, "", ":memory:")


def sqlite_path(url: str) -> Path | None:
    """The database file of a file-backed SQLite URL (None otherwise, or for :memory:)."""
    parsed = _parse(url)
    if parsed.get_backend_name() != "sqlite" or is_in_memory(url):
        return None
    return Path(parsed.database)  # type: ignore[arg-type]


def heartbeat_settings(interval: int | None = None, grace: int | None = None) -> tuple[int, int]:
    """(interval, grace) in seconds for a *new* study: the explicit values, else
    ``$ATTNRES_HEARTBEAT_INTERVAL`` / ``$ATTNRES_HEARTBEAT_GRACE``, else 60 s and three
    intervals. Only study creation reads the environment; an existing study keeps what it stored."""
    if interval is None:
        interval = _positive_int_env(ENV_HEARTBEAT, DEFAULT_HEARTBEAT_S)
    if grace is None:
        grace = _positive_int_env(ENV_GRACE, 3 * interval)
    return check_heartbeat(interval, grace)


def check_heartbeat(interval: int, grace: int) -> tuple[int, int]:
    """A grace period shorter than one heartbeat interval would make live trials look dead."""
    if interval < 1 or grace < 1:
        raise BadInput(f"heartbeat interval and grace must be positive seconds, got {interval} and {grace}")
    if grace < interval:
        raise BadInput(f"heartbeat grace ({grace} s) must be at least the heartbeat interval ({interval} s), "
                       "or running trials would be failed between two beats")
    return interval, grace


def apply_heartbeat(storage: "optuna.storages.RDBStorage", interval: int, grace: int) -> None:
    """Make ``storage`` beat every ``interval`` seconds and count trials silent for ``grace``
    seconds as stale (``RDBStorage``'s public ``heartbeat_interval`` / ``grace_period``)."""
    storage.heartbeat_interval = int(interval)
    storage.grace_period = int(grace)


def _positive_int_env(name: str, default: int) -> int:
    raw = os.environ.get(name)
    if raw is None or raw == "":
        return default
    try:
        value = int(raw)
    except ValueError:
        value = 0
    if value < 1:
        raise BadInput(f"${name} must be a positive number of seconds, got {raw!r}")
    return value


def open_storage(url: str | None = None, *, mode: Mode) -> "optuna.storages.RDBStorage":
    """An ``RDBStorage`` with heartbeats and retries, opened in ``mode`` (see the module doc)."""
    import optuna
    import sqlalchemy

    url = resolve_url(url)
    shown = display_url(url)
    parsed = _parse(url)
    if is_in_memory(url):
        raise BadInput(f"storage {shown} is in memory: a study there vanishes with the process; "
                       "give a file (sqlite:///studies.db) or a database server URL")
    is_sqlite = parsed.get_backend_name() == "sqlite"
    path = sqlite_path(url)
    if path is not None:
        if mode != "create" and not path.is_file():
            raise BadInput(f"no study database at {path} (storage {shown}); "
                           "start a study with `attnres-search study start SPACE`")
        if not path.parent.is_dir():
            raise BadInput(f"cannot open storage {shown}: directory {path.parent} does not exist")
    engine_kwargs: dict[str, Any] = {}
    if is_sqlite:
        # isolation_level=None: pysqlite stops issuing its own deferred BEGINs (which leave
        # SELECTs outside the transaction); _begin_transactions issues ours.
        engine_kwargs["connect_args"] = {"timeout": BUSY_TIMEOUT_S, "isolation_level": None}
    interval, grace = DEFAULT_HEARTBEAT_S, 3 * DEFAULT_HEARTBEAT_S  # the study's own values replace these
    try:
        if mode != "create":
            _require_study_tables(url, engine_kwargs, shown)
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", optuna.exceptions.ExperimentalWarning)
            storage = optuna.storages.RDBStorage(
                url, engine_kwargs=engine_kwargs, heartbeat_interval=interval, grace_period=grace,
                heartbeat_stale_trial_callback=optuna.storages.RetryHeartbeatStaleTrialCallback(max_retry=MAX_RETRY),
                skip_table_creation=mode != "create",
            )
        if path is not None and mode == "create":
            _enable_wal(storage.engine)  # first: the journal mode cannot change inside a transaction
        if is_sqlite:
            _begin_transactions(storage.engine, immediate=mode != "read")
    except (sqlalchemy.exc.SQLAlchemyError, ImportError, OSError) as exc:
        reason = str(getattr(exc, "orig", None) or exc).strip().splitlines()[0]
        raise BadInput(f"cannot open storage {shown}: {reason}") from None
    except RuntimeError as exc:  # Optuna's schema compatibility check
        raise BadInput(f"storage {shown}: {str(exc).splitlines()[0]}") from None
    return storage


def _require_study_tables(url: str, engine_kwargs: dict[str, Any], shown: str) -> None:
    """Refuse a database Optuna would have to create tables or bookkeeping rows in."""
    import sqlalchemy

    engine = sqlalchemy.create_engine(url, **engine_kwargs)
    try:
        with engine.connect() as conn:
            tables = set(sqlalchemy.inspect(conn).get_table_names())
            missing = [t for t in STUDY_TABLES if t not in tables]
            empty = [] if missing else [t for t in ("version_info", "alembic_version")
                                        if conn.execute(sqlalchemy.text(f"SELECT COUNT(*) FROM {t}")).scalar() == 0]
    finally:
        engine.dispose()
    if missing or empty:
        what = "no tables" if not tables else f"no {(missing or empty)[0]} table" if missing else "no schema version"
        raise BadInput(f"storage {shown} is not a study storage ({what}); "
                       "`attnres-search study start SPACE --storage URL` creates one")


def _begin_transactions(engine: "sqlalchemy.engine.Engine", *, immediate: bool) -> None:
    """Start every transaction with BEGIN IMMEDIATE (writers) or BEGIN (readers).

    Optuna claims a WAITING trial by reading its state and then updating it in one
    transaction (SELECT ... FOR UPDATE elsewhere). SQLite has no row locks, and pysqlite
    by default runs the SELECT outside any transaction, so two workers can both read
    WAITING and both run the trial. Taking SQLite's write lock when the transaction begins
    makes read-then-write atomic; a worker that finds the lock taken waits (busy timeout)
    instead of failing with "database is locked". Readers only read, so they never take it.
    """
    from sqlalchemy import event

    statement = "BEGIN IMMEDIATE" if immediate else "BEGIN"

    @event.listens_for(engine, "begin")
    def _begin(conn: Any) -> None:
        conn.exec_driver_sql(statement)


def _enable_wal(engine: "sqlalchemy.engine.Engine") -> None:
    """WAL is a property of the database file, so setting it once at creation is enough."""
    with engine.connect() as conn:
        conn.exec_driver_sql("PRAGMA journal_mode=WAL")


def runs_dir(url: str) -> Path:
    """Where trials write checkpoints, diagnostics and logs: ``$ATTNRES_RUNS_DIR``, else
    ``runs/`` beside a SQLite database, else ``runs/`` in the working directory."""
    if os.environ.get(ENV_RUNS_DIR):
        return Path(os.environ[ENV_RUNS_DIR])
    path = sqlite_path(url)
    return (path.parent if path is not None else Path.cwd()) / "runs"
