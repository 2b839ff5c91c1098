"""optuna-dashboard over a study storage, read-only unless asked otherwise.

optuna-dashboard's page offers "delete study", note editing, renaming and artifact
uploads to anyone who can reach it. A researcher who opens the dashboard to *look* at a
finished study must not be one click from losing it, so ``dashboard`` serves optuna-dashboard's
own WSGI app (:func:`optuna_dashboard.wsgi`, its public API) behind a guard that answers
every request that could change something (any method but GET, HEAD and OPTIONS) with
403 and a reason the page shows, and opens the storage in read mode (SQLite transactions
without the write lock). ``--writable`` serves the app unguarded on a storage opened for
writing: deleting, renaming, editing notes from the UI.
"""

from __future__ import annotations

import json
from collections.abc import Callable, Iterable
from socketserver import ThreadingMixIn
from typing import Any
from wsgiref.simple_server import WSGIRequestHandler, WSGIServer, make_server

WSGIApp = Callable[[dict[str, Any], Callable[..., Any]], Iterable[bytes]]
SAFE_METHODS = ("GET", "HEAD", "OPTIONS")
READ_ONLY_REASON = ("this dashboard is read-only: nothing can be deleted or changed; "
                    "start it with `attnres-search dashboard --writable` to allow that")


def read_only(app: WSGIApp) -> WSGIApp:
    """``app`` with every state-changing request refused (403, JSON ``{"reason": ...}``,
    the shape optuna-dashboard's page shows in its error message)."""

    def guarded(environ: dict[str, Any], start_response: Callable[..., Any]) -> Iterable[bytes]:
        if environ.get("REQUEST_METHOD", "GET").upper() in SAFE_METHODS:
            return app(environ, start_response)
        body = json.dumps({"reason": READ_ONLY_REASON}).encode()
        start_response("403 Forbidden", [("Content-Type", "application/json"), ("Content-Length", str(len(body)))])
        return [body]

    return guarded


def dashboard_app(url: str, runs_root: Any, *, writable: bool = False) -> tuple[WSGIApp, Any]:
    """optuna-dashboard's WSGI app for storage ``url`` (and the trial artifact store beside
    it, when there is one), guarded by :func:`read_only` unless ``writable``. Returns the
    app and the artifact store (None without one). A missing file or a database that holds
    no studies is bad input (see :func:`attnres_search.study.storage.open_storage`)."""
    from optuna_dashboard import wsgi

    from attnres_search.study.artifacts import artifact_store
    from attnres_search.study.storage import open_storage

    storage = open_storage(url, mode="write" if writable else "read")
    store = artifact_store(url, runs_root, create=False)
    app = wsgi(storage, artifact_store=store)
    return (app if writable else read_only(app)), store


class _ThreadingServer(ThreadingMixIn, WSGIServer):
    """A browser loads the page's API calls in parallel: one thread per request."""

    daemon_threads = True


class _QuietHandler(WSGIRequestHandler):
    def log_message(self, format: str, *args: Any) -> None:  # noqa: A002 - the base class's name
        pass  # no line per request on the terminal


def serve(app: WSGIApp, host: str, port: int) -> None:
    """Serve ``app`` on ``host:port`` until interrupted."""
    with make_server(host, port, app, server_class=_ThreadingServer, handler_class=_QuietHandler) as server:
        server.serve_forever()
