"""The looks of a sequential design, recorded in the study's storage.

A look's decisions are a deterministic function of the design and the stored trials
(:func:`attnres_search.reports.design_rows.decisions_as_of`), so the record is an audit
trail rather than state: when each look was taken, with which pairs, what it decided, by
which command and commit. Reports warn when a recorded look no longer matches the trials.
Recording is idempotent: a look already recorded is never written again, so re-rendering a
finished study never changes its storage.
"""

from __future__ import annotations

import datetime as dt
from typing import TYPE_CHECKING, Any

from attnres_search.study.attrs import ATTR_LOOKS

if TYPE_CHECKING:
    import optuna

    from attnres_search.reports.records import StudyRecords


def recorded_looks(study: "optuna.Study") -> list[dict[str, Any]]:
    """The looks stored so far (reports read the same attribute through their records)."""
    looks = study.user_attrs.get(ATTR_LOOKS, [])
    return [dict(look) for look in looks] if isinstance(looks, list) else []


def due_looks(study: "optuna.Study", records: "StudyRecords") -> list[int]:
    """Looks the data has reached that the storage does not record yet."""
    from attnres_search.reports.design_rows import study_decisions

    found = study_decisions(records)
    if found is None:
        return []
    done = len(recorded_looks(study))
    return list(range(done + 1, found[1] + 1))


def record_looks(study: "optuna.Study", records: "StudyRecords", by: str) -> list[dict[str, Any]]:
    """Append every due look (``by``: the command that took it) and return the new entries."""
    from attnres_search.reports.design_rows import decisions_as_of
    from attnres_search.training.provenance import git_commit

    design = records.space.design
    due = due_looks(study, records)
    if design is None or not due:
        return []
    looks = recorded_looks(study)
    now = dt.datetime.now(dt.timezone.utc).isoformat(timespec="seconds")
    new = [{"look": k, "pairs": design.schedule[k - 1], "decisions": decisions_as_of(records, k),
            "recorded_at": now, "by": by, "git_commit": git_commit()} for k in due]
    study.set_user_attr(ATTR_LOOKS, looks + new)
    return new
