"""How a running study shows itself: the rich display (one bar for the study, trial i of
n and the last loss; one for the trial in flight, its steps and latest validation loss);
off a terminal (a CI log, ``nohup``, ``| tee``), where rich draws its bars only when they
stop, plain timestamped lines instead; or, quiet, nothing but one line per failed trial.
All draw on stderr so that stdout keeps only what a script may want to read (reports)."""

from __future__ import annotations

import time
from types import TracebackType
from typing import TYPE_CHECKING, Callable

from rich.console import Console
from rich.progress import BarColumn, MofNCompleteColumn, Progress, TaskID, TextColumn, TimeElapsedColumn

from attnres_search.cli.terminal import stderr_console

if TYPE_CHECKING:
    from attnres_search.study.handle import StudyHandle
    from attnres_search.study.status import FailedTrial


def failure_line(failure: "FailedTrial") -> str:
    """One line per failed trial: which run, why, and where its traceback is."""
    reason = failure.reason.strip().splitlines()[0] if failure.reason.strip() else "no reason recorded"
    log = f" (log {failure.log})" if failure.log else ""
    return f"trial {failure.number} failed: {failure.run}: {reason}{log}"


class FailureLines:
    """The quiet display: implements :class:`attnres_search.study.objective.StudyProgress`
    by printing only failed trials, one line each."""

    def __init__(self, console: Console | None = None) -> None:
        self.console = console or stderr_console()

    def trial_started(self, number: int, position: int, total: int | None, cell: str) -> None:
        pass

    def step(self, step: int, total: int, val_loss: float | None) -> None:
        pass

    def trial_finished(self, number: int, state: str, value: float | None) -> None:
        pass

    def trial_failed(self, failure: "FailedTrial") -> None:
        self.console.print(failure_line(failure), markup=False, highlight=False, soft_wrap=True)

    def waiting(self, running: int) -> None:
        pass


class ProgressLines:
    """The display off a terminal: one line when a trial starts and when it ends, and the
    step of the trial in flight at most every ``every_s`` seconds, so a log that is read
    while the study runs (``tail -f``) shows it alive. Implements
    :class:`attnres_search.study.objective.StudyProgress`."""

    def __init__(self, console: Console | None = None, *, every_s: float = 30.0,
                 clock: Callable[[], float] = time.monotonic) -> None:
        self.console = console or stderr_console()
        self.every_s, self.clock = every_s, clock
        self.started_at = self.last_line_at = clock()
        self.trial_started_at = self.started_at
        self.running: int | None = None

    def _line(self, text: str) -> None:
        self.last_line_at = self.clock()
        stamp = time.strftime("%H:%M:%S")
        self.console.print(f"{stamp} {text}", markup=False, highlight=False, soft_wrap=True)

    def trial_started(self, number: int, position: int, total: int | None, cell: str) -> None:
        self.trial_started_at, self.running = self.clock(), None
        self._line(f"trial {position}/{total or '?'} started: #{number} {cell}")

    def step(self, step: int, total: int, val_loss: float | None) -> None:
        if self.clock() - self.last_line_at < self.every_s:
            return
        loss = f"  val loss {val_loss:.4f}" if val_loss is not None else ""
        self._line(f"  step {step}/{total}{loss}  ({self.clock() - self.trial_started_at:.0f} s)")

    def trial_finished(self, number: int, state: str, value: float | None) -> None:
        if state == "fail":
            return  # its failure line said so, with the reason
        loss = f": loss {value:.4f}" if value is not None and state == "complete" else ""
        self._line(f"trial #{number} {state}{loss} ({self.clock() - self.trial_started_at:.0f} s)")

    def trial_failed(self, failure: "FailedTrial") -> None:
        # The same line, unstamped, as every other display prints: scripts grep for it.
        self.last_line_at = self.clock()
        self.console.print(failure_line(failure), markup=False, highlight=False, soft_wrap=True)

    def waiting(self, running: int) -> None:
        if running != self.running:
            self.running = running
            self._line(f"waiting for {running} running trial(s) (another worker's, or a dead one until its "
                       "heartbeat grace ends)")


class RichStudyProgress:
    """Implements :class:`attnres_search.study.objective.StudyProgress`; use as a context manager."""

    def __init__(self, handle: "StudyHandle", console: Console | None = None) -> None:
        self.progress = Progress(
            TextColumn("[bold]{task.description}"), BarColumn(), MofNCompleteColumn(), TimeElapsedColumn(),
            TextColumn("{task.fields[info]}"), console=console or stderr_console(), transient=False,
        )
        self.study_name = handle.name
        self.study_task: TaskID | None = None
        self.trial_task: TaskID | None = None
        self.last_loss: float | None = None

    def __enter__(self) -> "RichStudyProgress":
        self.progress.start()
        self.study_task = self.progress.add_task(f"study {self.study_name}", total=None, info="")
        self.trial_task = self.progress.add_task("starting", total=None, info="")
        return self

    def __exit__(self, exc_type: type[BaseException] | None, exc: BaseException | None,
                 tb: TracebackType | None) -> None:
        self.progress.stop()

    def trial_started(self, number: int, position: int, total: int | None, cell: str) -> None:
        assert self.study_task is not None and self.trial_task is not None
        label = f"trial {position}/{total}" if total else f"trial {position}"
        self.progress.update(self.study_task, description=f"study {self.study_name}: {label}", total=total,
                             completed=position - 1)
        self.progress.reset(self.trial_task, description=f"#{number} {cell}", total=None, info="")

    def step(self, step: int, total: int, val_loss: float | None) -> None:
        assert self.trial_task is not None
        info = f"val loss {val_loss:.4f}" if val_loss is not None else ""
        self.progress.update(self.trial_task, completed=step, total=total, info=info)

    def trial_finished(self, number: int, state: str, value: float | None) -> None:
        assert self.study_task is not None
        if value is not None and state == "complete":
            self.last_loss = value
        last = f"last loss {self.last_loss:.4f}" if self.last_loss is not None else ""
        self.progress.update(self.study_task, advance=1, info=f"#{number} {state}  {last}".rstrip())

    def trial_failed(self, failure: "FailedTrial") -> None:
        self.progress.console.print(failure_line(failure), markup=False, highlight=False, soft_wrap=True)

    def waiting(self, running: int) -> None:
        assert self.trial_task is not None
        self.progress.update(self.trial_task, description=f"waiting for {running} running trial(s)",
                             info="another worker's, or a dead one until its heartbeat grace ends")
