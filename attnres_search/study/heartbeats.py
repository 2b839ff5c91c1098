"""Heartbeats of running trials, read with SQL on Optuna's documented tables.

Optuna's public API fails stale trials (``optuna.storages.fail_stale_trials``) but says
nothing about a trial's last beat, nor about a trial that never beat at all. Both are
answered here from the ``trials`` and ``trial_heartbeats`` tables, reflected with
SQLAlchemy (no private Optuna module), against the database's own clock, the one the
beats are written with.
"""

from __future__ import annotations

import datetime
from dataclasses import dataclass
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from attnres_search.study.handle import StudyHandle


@dataclass(frozen=True)
class RunningTrial:
    """A RUNNING trial as its heartbeat shows it."""

    trial_id: int
    number: int
    started_s: float | None  # seconds since it was claimed (local clock, as Optuna writes it)
    beat_age_s: float | None  # seconds since its last heartbeat; None: it never beat
    stale: bool  # older than the grace period: its worker is presumably dead


def running_trials(handle: "StudyHandle") -> list[RunningTrial]:
    """Every RUNNING trial of the study with its heartbeat age, in trial order."""
    import sqlalchemy

    storage = handle.storage
    meta = sqlalchemy.MetaData()
    trials = sqlalchemy.Table("trials", meta, autoload_with=storage.engine)
    beats = sqlalchemy.Table("trial_heartbeats", meta, autoload_with=storage.engine)
    study_id = storage.get_study_id_from_name(handle.name)
    query = (sqlalchemy.select(trials.c.trial_id, trials.c.number, trials.c.datetime_start, beats.c.heartbeat,
                               sqlalchemy.func.now())
             .select_from(trials.outerjoin(beats, beats.c.trial_id == trials.c.trial_id))
             .where(trials.c.study_id == study_id, trials.c.state == "RUNNING")
             .order_by(trials.c.number))
    with storage.engine.connect() as conn:
        rows = conn.execute(query).all()
    grace = handle.grace_s
    local_now = datetime.datetime.now()  # the clock datetime_start was written with
    out = []
    for trial_id, number, started, beat, db_now in rows:
        started_s = (local_now - started).total_seconds() if started is not None else None
        beat_age = None
        if beat is not None and db_now is not None:
            beat_age = (_naive(db_now) - _naive(beat)).total_seconds()
        stale = (beat_age if beat_age is not None else started_s or 0.0) > grace
        out.append(RunningTrial(trial_id, number, started_s, beat_age, stale))
    return out


def _naive(moment: datetime.datetime | str) -> datetime.datetime:
    if isinstance(moment, str):  # SQLite hands back func.now() as text
        moment = datetime.datetime.fromisoformat(moment)
    return moment.replace(tzinfo=None)


def fail_trials_without_heartbeat(handle: "StudyHandle") -> list[int]:
    """Fail and re-queue RUNNING trials that never recorded a heartbeat and are older than
    the grace period: their worker died between claiming them and its first beat, and
    Optuna's stale check, which only looks at recorded beats, would wait for them forever."""
    import optuna
    from optuna.trial import TrialState

    storage = handle.storage
    failed = []
    for trial in running_trials(handle):
        if trial.beat_age_s is not None or not trial.stale:
            continue
        try:
            if not storage.set_trial_state_values(trial.trial_id, state=TrialState.FAIL):
                continue
        except optuna.exceptions.UpdateFinishedTrialError:
            continue  # it finished (or another worker failed it) meanwhile
        callback = storage.get_heartbeat_stale_trial_callback()
        if callback is not None:
            callback(handle.study, storage.get_trial(trial.trial_id))
        failed.append(trial.number)
    return failed


def fail_stale_trials(handle: "StudyHandle") -> None:
    """Fail and re-queue every trial whose worker is presumably dead, by the study's own
    grace period: those whose heartbeat is stale (Optuna's public check) and those that
    never beat (:func:`fail_trials_without_heartbeat`)."""
    import warnings

    import optuna

    with warnings.catch_warnings():
        warnings.simplefilter("ignore", optuna.exceptions.ExperimentalWarning)
        optuna.storages.fail_stale_trials(handle.study)
    fail_trials_without_heartbeat(handle)
