"""A throwaway PostgreSQL server for the multi-machine storage tests: initdb + pg_ctl on a
temporary directory and a free port on 127.0.0.1, torn down afterwards. Skips (with the
reason) where the server binaries are not installed; `.ci/run` installs Debian's package."""

from __future__ import annotations

import glob
import os
import pwd
import shutil
import socket
import subprocess
import tempfile
from collections.abc import Iterator
from pathlib import Path

import pytest


def _pg_bin() -> Path | None:
    found = sorted(glob.glob("/usr/lib/postgresql/*/bin/initdb"))
    if found:
        return Path(found[-1]).parent
    initdb = shutil.which("initdb")
    return Path(initdb).parent if initdb else None


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@pytest.fixture(scope="session")
def postgres_url() -> Iterator[str]:
    pg_bin = _pg_bin()
    if pg_bin is None:
        pytest.skip("PostgreSQL server binaries (initdb, pg_ctl) are not installed")
    pytest.importorskip("psycopg2")
    root = Path(tempfile.mkdtemp(prefix="attnres-pg-"))
    data = root / "data"
    prefix: list[str] = []
    if os.geteuid() == 0:  # initdb refuses to run as root: use the postgres system user
        try:
            user = pwd.getpwnam("postgres")
        except KeyError:
            pytest.skip("running as root and there is no 'postgres' user to run initdb")
        os.chown(root, user.pw_uid, user.pw_gid)
        prefix = ["runuser", "-u", "postgres", "--"]
    port = _free_port()
    run = lambda *args: subprocess.run(prefix + list(args), check=True, capture_output=True, text=True)  # noqa: E731
    run(str(pg_bin / "initdb"), "-D", str(data), "-U", "attnres", "--auth=trust", "-E", "UTF8")
    run(str(pg_bin / "pg_ctl"), "-D", str(data), "-w", "-t", "60", "-l", str(root / "log"),
        "-o", f"-h 127.0.0.1 -p {port} -k {root} -c max_connections=100", "start")
    try:
        run(str(pg_bin / "createdb"), "-h", "127.0.0.1", "-p", str(port), "-U", "attnres", "studies")
        yield f"postgresql+psycopg2://attnres@127.0.0.1:{port}/studies"
    finally:
        subprocess.run(prefix + [str(pg_bin / "pg_ctl"), "-D", str(data), "-m", "immediate", "stop"],
                       capture_output=True)
        shutil.rmtree(root, ignore_errors=True)
