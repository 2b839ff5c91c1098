"""The rich display of a running study: one bar for the study (trial i of n, last loss)
and one for the trial in flight (its steps and latest validation loss). It draws on
stderr so that stdout keeps only what a script may want to read (reports)."""

from __future__ import annotations

from types import TracebackType

from rich.console import Console
from rich.progress import BarColumn, MofNCompleteColumn, Progress, TaskID, TextColumn, TimeElapsedColumn


class RichStudyProgress:
    """Implements :class:`attnres_search.study.core.StudyProgress`; use as a context manager."""

    def __init__(self, study_name: str, console: Console | None = None) -> None:
        self.progress = Progress(
            TextColumn("[bold]{task.description}"), BarColumn(), MofNCompleteColumn(), TimeElapsedColumn(),
            TextColumn("{task.fields[info]}"), console=console or Console(stderr=True), transient=False,
        )
        self.study_name = study_name
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

    def waiting(self, running: int) -> None:
        assert self.trial_task is not None
        self.progress.update(self.trial_task, description=f"waiting for {running} running trial(s)",
                             info="another worker's, or a dead one until its heartbeat grace ends")
