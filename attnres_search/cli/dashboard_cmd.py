"""``attnres-search dashboard``: optuna-dashboard on the same storage the studies use."""

from __future__ import annotations

import click

from attnres_search.cli.study_cmd import storage_option


@click.command()
@storage_option
@click.option("--host", default="127.0.0.1", show_default=True, help="Interface to listen on (0.0.0.0: all).")
@click.option("--port", type=click.IntRange(1, 65535), default=8080, show_default=True)
def dashboard(storage: str | None, host: str, port: int) -> None:
    """Browse studies, trials, loss curves and stored run attributes in optuna-dashboard."""
    from optuna_dashboard import run_server

    from attnres_search.study.artifacts import artifact_dir, artifact_store
    from attnres_search.study.storage import display_url, open_storage, resolve_url, runs_dir

    url = resolve_url(storage)
    opened = open_storage(url, mode="read")  # refuses a missing file or a database that holds no studies
    store = artifact_store(url, runs_dir(url), create=False)
    click.echo(f"optuna-dashboard for {display_url(url)} at http://{host}:{port}/ (Ctrl-C stops it)", err=True)
    if store is not None:
        click.echo(f"serving trial artifacts (run.json, figures) from {artifact_dir(url, runs_dir(url))}", err=True)
    run_server(opened, host=host, port=port, artifact_store=store)
