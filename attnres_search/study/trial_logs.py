"""Each trial's own log file, and Optuna's log records routed into it.

Optuna logs a failed trial as a warning carrying the whole traceback. In a terminal that
breaks the progress display (a screenful per failure), so while a trial runs, every
record of the ``optuna`` logger goes to that trial's log file instead, traceback
included; the worker prints one line per failed trial naming the file. Outside a trial,
records reach stderr as one line each, as Optuna's own handler would print them.
"""

from __future__ import annotations

import contextlib
import logging
import sys
from pathlib import Path
from typing import Iterator

_FORMAT = "[%(levelname)1.1s %(asctime)s] %(message)s"


def trial_log_path(logs_dir: Path, number: int) -> Path:
    return logs_dir / f"trial-{number}.log"


class TrialLogRouter(logging.Handler):
    """Sends ``optuna`` records to the current trial's log file (with tracebacks), or to
    stderr as single lines when no trial is running."""

    def __init__(self) -> None:
        super().__init__(level=logging.NOTSET)
        self.path: Path | None = None
        self._format = logging.Formatter(_FORMAT)

    def start_trial(self, path: Path) -> None:
        path.parent.mkdir(parents=True, exist_ok=True)
        self.path = path

    def end_trial(self) -> None:
        self.path = None

    def emit(self, record: logging.LogRecord) -> None:
        try:
            if self.path is not None:
                with self.path.open("a") as log:
                    log.write(self._format.format(record) + "\n")
            else:  # the header and the message's first line: never a traceback
                record.message = record.getMessage()
                record.asctime = self._format.formatTime(record)
                print(self._format.formatMessage(record).splitlines()[0], file=sys.stderr)
        except Exception:  # noqa: BLE001 - logging must never break a worker
            self.handleError(record)


@contextlib.contextmanager
def route_optuna_logs() -> Iterator[TrialLogRouter]:
    """Install a :class:`TrialLogRouter` in place of Optuna's default handler, and put
    Optuna's handler back afterwards."""
    import optuna

    router = TrialLogRouter()
    logger = logging.getLogger("optuna")
    optuna.logging.disable_default_handler()
    logger.addHandler(router)
    try:
        yield router
    finally:
        logger.removeHandler(router)
        optuna.logging.enable_default_handler()


def write_trial_log(path: Path, text: str) -> None:
    """Append ``text`` to a trial's log file."""
    path.parent.mkdir(parents=True, exist_ok=True)
    with path.open("a") as log:
        log.write(text if text.endswith("\n") else text + "\n")
