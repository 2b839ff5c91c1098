"""``attnres-search dashboard``: optuna-dashboard on the same storage the studies use,
read-only unless ``--writable`` (see :mod:`attnres_search.study.dashboard_app`)."""

from __future__ import annotations

import click

from attnres_search.cli.study_cmd import storage_option


@click.command()
@storage_option
@click.option("--host", default="127.0.0.1", show_default=True, help="Interface to listen on (0.0.0.0: all).")
@click.option("--port", type=click.IntRange(1, 65535), default=8080, show_default=True)
@click.option("--writable", is_flag=True,
              help="Allow changes from the page (delete or rename studies, edit notes); read-only without it.")
def dashboard(storage: str | None, host: str, port: int, writable: bool) -> None:
    """Browse studies in optuna-dashboard: each study's report (its note) and figures, its
    trials with their variant, seed, loss curve, stored attributes and run artifacts."""
    from attnres_search.study import dashboard_app
    from attnres_search.study.artifacts import artifact_dir
    from attnres_search.study.storage import display_url, resolve_url, runs_dir

    url = resolve_url(storage)
    app, store = dashboard_app.dashboard_app(url, runs_dir(url), writable=writable)  # bad storage: exit 2 here
    mode = "writable: the page can delete and change studies" if writable else "read-only (--writable to change things)"
    click.echo(f"optuna-dashboard for {display_url(url)} at http://{host}:{port}/, {mode} (Ctrl-C stops it)", err=True)
    if store is not None:
        click.echo(f"serving trial artifacts (run.json, figures) from {artifact_dir(url, runs_dir(url))}", err=True)
    try:
        dashboard_app.serve(app, host, port)
    except OSError as exc:  # the port is taken, or the host is not ours
        raise click.ClickException(f"cannot serve on {host}:{port}: {exc.strerror or exc}") from None
    except KeyboardInterrupt:
        pass
