"""``attnres-search study``: start, resume, list, inspect and delete Optuna studies.

Every command opens its study once (a :class:`~attnres_search.study.handle.StudyHandle`)
and hands it to the worker, the progress display and the tables. Input is checked before
the storage is touched: a bad space, study name or storage URL exits with code 2 and
leaves no database or study behind, and commands that only read never write.
"""

from __future__ import annotations

import datetime
from typing import TYPE_CHECKING, Any, Callable

import click

from attnres_search.cli.options import time_limit_option
from attnres_search.cli.terminal import stdout_console

if TYPE_CHECKING:
    from attnres_search.study.worker import WorkerSummary
    from attnres_search.study.handle import StudyHandle
    from attnres_search.study.storage import Mode

STORAGE_HELP = "SQLAlchemy URL of the study storage [default: $ATTNRES_STORAGE, else sqlite:///studies.db]"


def storage_option(func: Callable[..., Any]) -> Callable[..., Any]:
    return click.option("--storage", default=None, metavar="URL", help=STORAGE_HELP)(func)


def quiet_option(func: Callable[..., Any]) -> Callable[..., Any]:
    return click.option("--quiet", "-q", is_flag=True, help="No progress display or summary; errors only.")(func)


HEARTBEAT_HELP = ("Seconds between a running trial's heartbeats, stored with the study: every worker uses it "
                  "[default: $ATTNRES_HEARTBEAT_INTERVAL, else 60].")
GRACE_HELP = ("Seconds without a heartbeat after which a running trial counts as dead and is re-run, stored with "
              "the study; at least the interval [default: $ATTNRES_HEARTBEAT_GRACE, else 3 intervals].")


def quiet_optuna() -> None:
    """Optuna logs every trial at INFO; our progress display says it better."""
    import optuna

    optuna.logging.set_verbosity(optuna.logging.WARNING)


def open_handle(name: str, storage: str | None, mode: "Mode") -> "StudyHandle":
    """Open study ``name`` once: a missing storage or study is one ``error:`` line (exit 2)
    before anything is drawn or written."""
    from attnres_search.study.handle import open_study
    from attnres_search.study.storage import open_storage, resolve_url

    return open_study(name, open_storage(resolve_url(storage), mode=mode))


@click.group()
def study() -> None:
    """Run the paper's ablations as Optuna studies (SQLite by default, any SQLAlchemy URL)."""


@study.command()
@click.argument("space")
@click.option("--name", default=None, help="Study name: letters, digits, '.', '_', '-' [default: the space's name].")
@storage_option
@click.option("--n-trials", type=click.IntRange(min=0), default=None,
              help="Run at most this many trials here (0: only create the study, for workers to run).")
@click.option("--heartbeat-interval", type=click.IntRange(min=1), default=None, metavar="S", help=HEARTBEAT_HELP)
@click.option("--heartbeat-grace", type=click.IntRange(min=1), default=None, metavar="S", help=GRACE_HELP)
@quiet_option
def start(space: str, name: str | None, storage: str | None, n_trials: int | None, heartbeat_interval: int | None,
          heartbeat_grace: int | None, quiet: bool) -> None:
    """Create a study from SPACE (a built-in name, see `spaces list`, or a .yaml file) and run it.

    The heartbeat interval and grace are the study's: stored now, used by every worker
    whatever its environment, changed only with `study set`.
    """
    from attnres_search.study.handle import create_study
    from attnres_search.study.space_file import load_space
    from attnres_search.study.storage import resolve_url

    quiet_optuna()
    loaded = load_space(space)  # bad input fails here or in create_study, before the study exists
    handle = create_study(loaded, loaded.name if name is None else name, resolve_url(storage),
                          heartbeat_interval=heartbeat_interval, heartbeat_grace=heartbeat_grace)
    if not quiet:
        runs = f"{len(loaded.cells())} runs" if loaded.is_grid else f"{loaded.n_trials} trials"
        click.echo(f"study {handle.name} created in {handle.shown_url}: {runs} ({loaded.kind}, {loaded.sampler} "
                   "sampler)", err=True)
    if n_trials == 0:
        click.echo(f"queued; run it with `attnres-search study resume {handle.name}` on any machine", err=True)
        return
    run_and_summarize(handle, n_trials=n_trials, quiet=quiet)


@study.command()
@click.argument("name")
@storage_option
@click.option("--n-trials", type=click.IntRange(min=1), default=None, help="Run at most this many trials here.")
@time_limit_option
@quiet_option
def resume(name: str, storage: str | None, n_trials: int | None, time_limit: float | None, quiet: bool) -> None:
    """Finish study NAME: run its missing cells (failed ones again), leave finished ones alone.

    Interrupted trials (Ctrl-C, SIGTERM, a full disk) are re-run by any worker, from their
    last checkpoint; trials left RUNNING by a killed process are failed once their
    heartbeat is older than the study's grace period (`study set --heartbeat-grace`) and
    then re-run here. Unlike `worker` and `launch`, resume also re-runs failed runs.
    With --time-limit a study grows a window at a time and loses no step.
    """
    quiet_optuna()
    run_and_summarize(open_handle(name, storage, "write"), n_trials=n_trials, quiet=quiet, requeue_failed=True,
                      time_limit=time_limit)


def run_and_summarize(handle: "StudyHandle", *, n_trials: int | None, quiet: bool, requeue_failed: bool = False,
                      devices_per_trial: int = 1, runner: Callable[..., Any] | None = None,
                      time_limit: float | None = None) -> "WorkerSummary":
    """Run a worker on ``handle`` with the rich display (off a terminal, timestamped lines;
    quiet, failure lines only);
    exit 1 when trials failed; return the worker's summary. ``runner``: see :func:`attnres_search.study.worker.run_worker`.
    ``time_limit`` (seconds): a worker stopped by it ends with its one line on what is
    left, printed even when quiet (it is why the worker stopped)."""
    from attnres_search.cli.study_progress import FailureLines, ProgressLines, RichStudyProgress
    from attnres_search.cli.terminal import stderr_console
    from attnres_search.study.time_limit import TimeLimit
    from attnres_search.study.worker import DiskFull, run_worker

    kwargs = dict(n_trials=n_trials, requeue_failed=requeue_failed, devices_per_trial=devices_per_trial,
                  runner=runner, time_limit=TimeLimit(time_limit) if time_limit is not None else None)
    try:
        if quiet:
            summary = run_worker(handle, progress=FailureLines(), **kwargs)
        elif not stderr_console().is_terminal:
            summary = run_worker(handle, progress=ProgressLines(), **kwargs)
        else:
            with RichStudyProgress(handle) as progress:
                summary = run_worker(handle, progress=progress, **kwargs)
    except DiskFull as exc:
        raise click.ClickException(str(exc)) from None
    if not quiet:
        taken = f", {summary.taken} taken over by another worker" if summary.taken else ""
        click.echo(f"study {handle.name}: ran {summary.ran} trial(s) here ({summary.completed} complete, "
                   f"{summary.failed} failed, {summary.pruned} pruned, {summary.skipped} duplicate(s) skipped{taken}); "
                   f"{summary.missing} run(s) still missing", err=True)
    line = summary.time_limit_line()
    if line is not None:
        click.echo(line, err=True)
    if summary.completed and not summary.failed and summary.missing == 0:
        publish_finished(handle, quiet=quiet)
    if summary.failed:
        raise click.ClickException(f"{summary.failed} trial(s) failed (reasons above, tracebacks in "
                                   f"{handle.logs_dir}); `attnres-search study resume {handle.name}` runs them again")
    return summary


def publish_finished(handle: "StudyHandle", *, quiet: bool) -> None:
    """The study is complete: put its report (note) and figures on its optuna-dashboard page.
    Best effort: every result is stored already, so a failure here is a warning (``report
    NAME --note`` does it again)."""
    from attnres_search.reports.dashboard import publish_study
    from attnres_search.reports.records import load_records

    try:
        published = publish_study(handle.study, load_records(handle.study, handle.space), handle.name,
                                  handle.space.kind)
    except Exception as exc:  # noqa: BLE001 - the trials are safe; only the page misses its summary
        click.echo(f"warning: could not put the report of study {handle.name} on its dashboard page: "
                   f"{type(exc).__name__}: {exc} (`attnres-search report {handle.name} --note` retries)", err=True)
        return
    if not quiet:
        click.echo(f"study {handle.name} is complete: its report and {len(published.figures)} figure(s) are on its "
                   "page in `attnres-search dashboard`", err=True)


@study.command(name="list")
@storage_option
def list_studies(storage: str | None) -> None:
    """The studies in the storage, with their progress."""
    import optuna
    from rich.table import Table

    from attnres_search.study.attrs import ATTR_KIND, ATTR_SPACE_NAME
    from attnres_search.study.handle import open_study
    from attnres_search.study.storage import display_url, open_storage, resolve_url, sqlite_path

    url = resolve_url(storage)
    path = sqlite_path(url)
    if path is not None and not path.is_file():
        click.echo(f"no studies: there is no database at {path}")
        return
    opened = open_storage(url, mode="read")
    table = Table(title=f"Studies in {display_url(url)}", title_justify="left")
    for col in ("study", "space", "kind", "done", "running", "failed", "best loss", "started"):
        table.add_column(col)
    for summary in optuna.get_all_study_summaries(opened, include_best_trial=True):
        attrs = summary.user_attrs
        done = running = failed = "—"
        if ATTR_SPACE_NAME in attrs:
            status = open_study(summary.study_name, opened).status()
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
    """Cells done / running / failed in study NAME, per variant, running trials' heartbeats, and an ETA."""
    from rich.table import Table

    from attnres_search.study.cells import cell_label
    from attnres_search.study.heartbeats import running_trials
    from attnres_search.study.status import STATES, failed_trials, hardware_counts, per_variant, trial_params

    handle = open_handle(name, storage, "read")
    space = handle.space
    st = handle.status()
    eta = st.eta_s()
    eta_text = str(datetime.timedelta(seconds=round(eta))) if eta is not None else "unknown until a trial finishes"
    console = stdout_console()
    console.print(f"[bold]study {name}[/] (space {space.name}, {space.kind}, {space.sampler} sampler)")
    console.print(f"heartbeat every {handle.heartbeat_interval_s} s, stale after {handle.grace_s:.0f} s "
                  f"(`study set {name}` changes them)")
    console.print(f"done {st.done}/{st.total if st.total is not None else '?'}   running {st.running}   "
                  f"waiting {st.waiting}   failed {st.failed}   duplicates skipped {st.skipped}")
    if st.remaining == 0:
        console.print("complete")
    elif st.mean_trial_s is not None:
        console.print(f"mean trial {st.mean_trial_s:.1f} s   ETA {eta_text}"
                      + ("" if st.running else "  (no worker running: `study resume` continues it)"))
    for label, n in hardware_counts(handle).items():
        console.print(f"hardware: {label} ({n} run{'s' if n != 1 else ''})")
    table = Table(title="Per variant", title_justify="left")
    for col in ("variant", "complete", "running", "waiting", "failed", "pruned"):
        table.add_column(col, justify="right" if col != "variant" else "left")
    for variant, counts in per_variant(handle).items():
        table.add_row(variant, *(str(counts[k]) for k in STATES))
    console.print(table)
    running = running_trials(handle)
    if running:
        beats = Table(title=f"Running trials (stale: no heartbeat for over {handle.grace_s:.0f} s)",
                      title_justify="left")
        for col in ("trial", "run", "last heartbeat", "state"):
            beats.add_column(col, justify="right" if col == "trial" else "left")
        trials = {t.number: t for t in handle.trials()}
        for r in running:
            age = f"{r.beat_age_s:.0f} s ago" if r.beat_age_s is not None else "never"
            state = "[red]stale: worker presumably dead; the next worker re-queues it[/]" if r.stale else "alive"
            beats.add_row(str(r.number), cell_label(trial_params(trials[r.number])), age, state)
        console.print(beats)
    _print_slurm_trials(handle, console)
    failures = failed_trials(handle)
    if failures:
        failed = Table(title="Failed trials (why)", title_justify="left")
        for col in ("trial", "run", "reason", "log"):
            failed.add_column(col, justify="right" if col == "trial" else "left", overflow="fold")
        for f in failures:
            failed.add_row(str(f.number), f.run, f.reason, f.log or "—")
        console.print(failed)


def _print_slurm_trials(handle: "StudyHandle", console: Any) -> None:
    """Which Slurm job / array task ran each trial (``+R``: after R requeues); nothing for
    a study that never ran under Slurm."""
    from rich.table import Table

    from attnres_search.study.slurm import slurm_trials

    rows = slurm_trials(handle)
    if not rows:
        return
    table = Table(title="Slurm array tasks (job_task, +requeues)", title_justify="left")
    for col in ("trial", "run", "state", "slurm job"):
        table.add_column(col, justify="right" if col == "trial" else "left")
    for r in rows:
        table.add_row(str(r.number), r.run, r.state, r.slurm_job)
    console.print(table)


@study.command(name="set")
@click.argument("name")
@storage_option
@click.option("--heartbeat-interval", type=click.IntRange(min=1), default=None, metavar="S",
              help="Seconds between a running trial's heartbeats.")
@click.option("--heartbeat-grace", type=click.IntRange(min=1), default=None, metavar="S",
              help="Seconds without a heartbeat after which a running trial counts as dead (at least the interval).")
def set_options(name: str, storage: str | None, heartbeat_interval: int | None, heartbeat_grace: int | None) -> None:
    """Change study NAME's heartbeat settings; every worker uses them from its next trial on.

    A grace not given is kept (or, if it would fall below the new interval, becomes three
    intervals). With no option, prints the current settings.
    """
    from attnres_search.study.handle import set_heartbeat

    handle = open_handle(name, storage, "read" if heartbeat_interval is None and heartbeat_grace is None else "write")
    if heartbeat_interval is not None or heartbeat_grace is not None:
        set_heartbeat(handle, heartbeat_interval, heartbeat_grace)
    click.echo(f"study {name}: heartbeat every {handle.heartbeat_interval_s} s, a running trial is stale after "
               f"{handle.grace_s:.0f} s without one")


@study.command()
@click.argument("name")
@storage_option
@click.option("--yes", "-y", is_flag=True, help="Do not ask for confirmation.")
def delete(name: str, storage: str | None, yes: bool) -> None:
    """Remove study NAME and all its trials from the storage (run folders on disk are kept)."""
    from attnres_search.study.handle import delete_study

    handle = open_handle(name, storage, "write")
    n_trials = len(handle.trials())
    question = f"delete study {name} and its {n_trials} trial(s) from {handle.shown_url}?"
    if not yes and not click.confirm(question, default=False, err=True):
        raise click.ClickException(f"study {name} not deleted")
    delete_study(handle)
    click.echo(f"deleted study {name} ({n_trials} trial(s)); its run folders in {handle.runs_dir} were kept",
               err=True)
