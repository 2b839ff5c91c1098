"""``attnres-search study``: start, resume, list and inspect Optuna studies.

Input is checked before the storage is touched: a bad space file or an unopenable
storage URL exits with code 2 and leaves no database or study behind.
"""

from __future__ import annotations

import datetime
from typing import Any, Callable

import click

STORAGE_HELP = "SQLAlchemy URL of the study storage [default: $ATTNRES_STORAGE, else sqlite:///studies.db]"


def storage_option(func: Callable[..., Any]) -> Callable[..., Any]:
    return click.option("--storage", default=None, metavar="URL", help=STORAGE_HELP)(func)


def quiet_option(func: Callable[..., Any]) -> Callable[..., Any]:
    return click.option("--quiet", "-q", is_flag=True, help="No progress display or summary; errors only.")(func)


def stdout_console() -> Any:
    """A rich console on stdout; wide when piped, where rich would assume 80 columns."""
    import sys

    from rich.console import Console

    return Console() if sys.stdout.isatty() else Console(width=200)


def quiet_optuna() -> None:
    """Optuna logs every trial at INFO; our progress display says it better."""
    import optuna

    optuna.logging.set_verbosity(optuna.logging.WARNING)


@click.group()
def study() -> None:
    """Run the paper's ablations as Optuna studies (SQLite by default, any SQLAlchemy URL)."""


@study.command()
@click.argument("space")
@click.option("--name", default=None, help="Study name [default: the space's name].")
@storage_option
@click.option("--n-trials", type=click.IntRange(min=0), default=None,
              help="Run at most this many trials here (0: only create the study, for workers to run).")
@quiet_option
def start(space: str, name: str | None, storage: str | None, n_trials: int | None, quiet: bool) -> None:
    """Create a study from SPACE (a built-in name, see `spaces list`, or a .yaml file) and run it."""
    from attnres_search.study.space import load_space
    from attnres_search.study.storage import display_url, open_storage, resolve_url
    from attnres_search.study.core import create_study

    quiet_optuna()
    loaded = load_space(space)  # bad input fails here, before any storage exists
    url = resolve_url(storage)
    study_name = name or loaded.name
    create_study(loaded, study_name, open_storage(url, must_exist=False))
    if not quiet:
        runs = f"{len(loaded.cells())} runs" if loaded.is_grid else f"{loaded.n_trials} trials"
        click.echo(f"study {study_name} created in {display_url(url)}: {runs} ({loaded.kind}, {loaded.sampler} "
                   "sampler)", err=True)
    if n_trials == 0:
        click.echo(f"queued; run it with `attnres-search study resume {study_name}` on any machine", err=True)
        return
    run_and_summarize(study_name, url, n_trials=n_trials, quiet=quiet, requeue_failed=False)


@study.command()
@click.argument("name")
@storage_option
@click.option("--n-trials", type=click.IntRange(min=1), default=None, help="Run at most this many trials here.")
@quiet_option
def resume(name: str, storage: str | None, n_trials: int | None, quiet: bool) -> None:
    """Finish study NAME: run its missing cells (failed ones again), leave finished ones alone.

    Trials left RUNNING by a killed process are failed once their heartbeat is older than
    the grace period ($ATTNRES_HEARTBEAT_GRACE, default 3 minutes) and then re-run here.
    """
    from attnres_search.study.storage import resolve_url

    quiet_optuna()
    run_and_summarize(name, resolve_url(storage), n_trials=n_trials, quiet=quiet, requeue_failed=True)


def run_and_summarize(name: str, url: str, *, n_trials: int | None, quiet: bool, requeue_failed: bool,
                      devices_per_trial: int = 1) -> None:
    """Run a worker with the rich display; exit 1 when trials failed."""
    from attnres_search.study.core import run_worker

    kwargs = dict(n_trials=n_trials, requeue_failed=requeue_failed, devices_per_trial=devices_per_trial)
    if quiet:
        summary = run_worker(name, url, **kwargs)
    else:
        from attnres_search.cli.study_progress import RichStudyProgress

        with RichStudyProgress(name) as progress:
            summary = run_worker(name, url, progress=progress, **kwargs)
    if not quiet:
        click.echo(f"study {name}: ran {summary.ran} trial(s) here ({summary.completed} complete, {summary.failed} "
                   f"failed, {summary.pruned} pruned, {summary.skipped} duplicate(s) skipped); "
                   f"{summary.missing} run(s) still missing", err=True)
    if summary.failed:
        raise click.ClickException(f"{summary.failed} trial(s) failed (their errors are in the trials' 'error' "
                                   f"attribute); `attnres-search study resume {name}` runs them again")


@study.command(name="list")
@storage_option
def list_studies(storage: str | None) -> None:
    """The studies in the storage, with their progress."""
    import optuna
    from rich.table import Table

    from attnres_search.study.storage import display_url, open_storage, resolve_url, sqlite_path
    from attnres_search.study.core import ATTR_KIND, ATTR_SPACE_NAME, load_study, study_status

    url = resolve_url(storage)
    path = sqlite_path(url)
    if path is not None and not path.is_file():
        click.echo(f"no studies: there is no database at {path}")
        return
    st = open_storage(url)
    table = Table(title=f"Studies in {display_url(url)}", title_justify="left")
    for col in ("study", "space", "kind", "done", "running", "failed", "best loss", "started"):
        table.add_column(col)
    for summary in optuna.get_all_study_summaries(st, include_best_trial=True):
        attrs = summary.user_attrs
        done = running = failed = "—"
        if ATTR_SPACE_NAME in attrs:
            status = study_status(*load_study(summary.study_name, st))
            done = f"{status.done}/{status.total}" if status.total else str(status.done)
            running, failed = str(status.running), str(status.failed)
        best = f"{summary.best_trial.value:.4f}" if summary.best_trial and summary.best_trial.value is not None else "—"
        started = summary.datetime_start.strftime("%Y-%m-%d %H:%M") if summary.datetime_start else "—"
        table.add_row(summary.study_name, str(attrs.get(ATTR_SPACE_NAME, "—")), str(attrs.get(ATTR_KIND, "—")),
                      done, running, failed, best, started)
    stdout_console().print(table)


@study.command()
@click.argument("name")
@storage_option
def status(name: str, storage: str | None) -> None:
    """Cells done / running / failed in study NAME, per variant, and an ETA."""
    from rich.table import Table

    from attnres_search.study.storage import open_storage, resolve_url
    from attnres_search.study.core import load_study, study_status

    found, space = load_study(name, open_storage(resolve_url(storage)))
    st = study_status(found, space)
    eta = st.eta_s()
    eta_text = str(datetime.timedelta(seconds=round(eta))) if eta is not None else "unknown until a trial finishes"
    console = stdout_console()
    console.print(f"[bold]study {name}[/] (space {space.name}, {space.kind}, {space.sampler} sampler)")
    console.print(f"done {st.done}/{st.total if st.total is not None else '?'}   running {st.running}   "
                  f"waiting {st.waiting}   failed {st.failed}   duplicates skipped {st.skipped}")
    if st.remaining == 0:
        console.print("complete")
    elif st.mean_trial_s is not None:
        console.print(f"mean trial {st.mean_trial_s:.1f} s   ETA {eta_text}"
                      + ("" if st.running else "  (no worker running: `study resume` continues it)"))
    table = Table(title="Per variant", title_justify="left")
    for col in ("variant", "complete", "running", "waiting", "failed", "pruned"):
        table.add_column(col, justify="right" if col != "variant" else "left")
    for variant, counts in _per_variant(found, space).items():
        table.add_row(variant, *(str(counts[k]) for k in ("COMPLETE", "RUNNING", "WAITING", "FAIL", "PRUNED")))
    console.print(table)
    failures = _failures(found)
    if failures:
        failed = Table(title="Failed trials (why)", title_justify="left")
        for col in ("trial", "run", "reason"):
            failed.add_column(col, justify="right" if col == "trial" else "left", overflow="fold")
        for row in failures:
            failed.add_row(*row)
        console.print(failed)


def _failures(found: Any) -> list[tuple[str, str, str]]:
    """Failed trials with the reason the objective stored (a diverged loss, out of memory...);
    a trial killed with its worker has none and says so."""
    from optuna.trial import TrialState

    from attnres_search.study.core import ATTR_ERROR

    rows = []
    for trial in found.get_trials(deepcopy=False, states=(TrialState.FAIL,)):
        run = " ".join(f"{k}={v}" for k, v in trial.params.items())
        reason = trial.user_attrs.get(ATTR_ERROR, "worker died or was interrupted (no heartbeat)")
        rows.append((str(trial.number), run, reason))
    return rows


def _per_variant(found: Any, space: Any) -> dict[str, dict[str, int]]:
    from collections import Counter

    from attnres_search.study.core import ATTR_SKIPPED

    counts: dict[str, Counter] = {v.name: Counter() for v in space.variants}
    for trial in found.get_trials(deepcopy=False):
        variant = trial.params.get("variant") or trial.system_attrs.get("fixed_params", {}).get("variant")
        if variant in counts and ATTR_SKIPPED not in trial.user_attrs:
            counts[variant][trial.state.name] += 1
    return {k: {s: v[s] for s in ("COMPLETE", "RUNNING", "WAITING", "FAIL", "PRUNED")} for k, v in counts.items()}
