"""Run ``attnres-search`` in-process exactly as the console script does, so tests see the
real exit codes that ``run_guarded`` maps errors to (0 ok, 1 failure, 2 bad input)."""

from __future__ import annotations

import sys

import pytest

from attnres_search.cli import cli as attnres_cli
from attnres_search.cli.errors import run_guarded


def cli(args: list[str], monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture) -> tuple[int, str, str]:
    monkeypatch.setattr(sys, "argv", ["attnres-search", *args])
    try:
        run_guarded(attnres_cli)
        code = 0
    except SystemExit as exc:
        code = int(exc.code or 0)
    out, err = capsys.readouterr()
    return code, out, err


def sigint_default() -> None:
    """``preexec_fn`` for a process a test stops with SIGINT: a shell starts background jobs
    with SIGINT ignored and children inherit that (Python then installs no KeyboardInterrupt
    handler), so a suite run as ``make test &`` would see Ctrl-C ignored."""
    import signal

    signal.signal(signal.SIGINT, signal.SIG_DFL)
