"""What a study shows off a terminal (a CI log, ``nohup``, ``| tee``), where rich would draw
its bars only when they stop: a line per trial start and end, the step of the trial in
flight at most every ``every_s`` seconds, and one line per change of what it waits for."""

from __future__ import annotations

import io
import re

from rich.console import Console

from attnres_search.cli.study_progress import ProgressLines
from attnres_search.study.status import FailedTrial


def test_lines_are_throttled_by_the_clock_and_name_trial_step_and_loss() -> None:
    now = {"t": 100.0}
    out = io.StringIO()
    lines = ProgressLines(Console(file=out, width=200), every_s=30.0, clock=lambda: now["t"])
    lines.trial_started(7, 2, 6, "variant=full seed=1")
    for step in range(1, 101):
        now["t"] += 1.0  # one step a second: a line at 30 s, 60 s, 90 s of the trial
        lines.step(step, 100, 3.5 - step / 1000 if step % 10 == 0 else None)
    lines.trial_finished(7, "complete", 3.4)
    lines.waiting(1)
    lines.waiting(1)  # polled again: nothing new to say
    lines.trial_started(8, 3, 6, "variant=baseline seed=2")
    lines.trial_failed(FailedTrial(8, "variant=baseline seed=2", "loss became nan at step 3\ntraceback", "l.log"))
    lines.trial_finished(8, "fail", None)  # the failure line said it already
    text = [re.sub(r"^\d\d:\d\d:\d\d ", "", line) for line in out.getvalue().splitlines()]
    assert out.getvalue().splitlines()[-1].startswith("trial 8 failed:"), "failure lines are never stamped"
    assert text == [
        "trial 2/6 started: #7 variant=full seed=1",
        "  step 30/100  val loss 3.4700  (30 s)",
        "  step 60/100  val loss 3.4400  (60 s)",
        "  step 90/100  val loss 3.4100  (90 s)",
        "trial #7 complete: loss 3.4000 (100 s)",
        "waiting for 1 running trial(s) (another worker's, or a dead one until its heartbeat grace ends)",
        "trial 3/6 started: #8 variant=baseline seed=2",
        "trial 8 failed: variant=baseline seed=2: loss became nan at step 3 (log l.log)",
    ]
