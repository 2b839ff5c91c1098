"""One open study: the Optuna study, the space it was created from, and its storage.

The CLI opens a study once and passes the :class:`StudyHandle` down to the worker, the
progress display, status and the report; nothing below it reopens the storage or parses
the space again.

How a grid never runs a cell twice, even with many workers on one storage, starts here:
:func:`create_study` stores the whole validated space in the study's user attributes (so
a resume never re-reads a file that may have changed) and enqueues every cell x seed
exactly once as a WAITING trial carrying its ``cell`` key. The rest is in
:mod:`attnres_search.study.worker` and :mod:`attnres_search.study.objective`.

A study also stores, at creation, its heartbeat interval and grace (every worker uses
them, whatever its environment) and a random identity that keys its run folders, so that
a study reusing a name in another storage never resumes the old one's checkpoints.
"""

from __future__ import annotations

import re
import uuid
import warnings
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING

from attnres_search import __version__
from attnres_search.errors import BadInput
from attnres_search.study.attrs import (ATTR_BASELINE, ATTR_CELL, ATTR_CELLS, ATTR_HEARTBEAT_GRACE,
                                        ATTR_HEARTBEAT_INTERVAL, ATTR_KIND, ATTR_SPACE, ATTR_SPACE_NAME,
                                        ATTR_STUDY_ID, ATTR_VERSION)
from attnres_search.study.cells import cell_key
from attnres_search.study.pruners import make_pruner
from attnres_search.study.samplers import make_sampler
from attnres_search.study.space import Space
from attnres_search.study.space_checks import check_space_runs
from attnres_search.study.space_file import space_from_dict
from attnres_search.study.storage import (DEFAULT_HEARTBEAT_S, apply_heartbeat, check_heartbeat, display_url,
                                          heartbeat_settings, open_storage, runs_dir)

if TYPE_CHECKING:
    import optuna

    from attnres_search.study.status import CellStatus

_NAME = re.compile(r"[A-Za-z0-9._-]+")


@dataclass(frozen=True)
class StudyHandle:
    """An open study. ``study`` is the Optuna study (loaded with the space's sampler and
    pruner), ``space`` the validated space it stores, ``storage`` the open ``RDBStorage``
    (beating at the study's heartbeat interval), ``identity`` the study's stored random id
    (older studies without one: the storage URL and study id)."""

    study: "optuna.Study"
    space: Space
    storage: "optuna.storages.RDBStorage"
    identity: str = ""

    @property
    def name(self) -> str:
        return self.study.study_name

    @property
    def url(self) -> str:
        return self.storage.url

    @property
    def shown_url(self) -> str:
        """The storage URL with any password masked, for messages."""
        return display_url(self.url)

    @property
    def runs_dir(self) -> Path:
        """Where this study's trials write their run folders."""
        return runs_dir(self.url) / self.name

    @property
    def logs_dir(self) -> Path:
        """Worker and trial logs."""
        return self.runs_dir / "logs"

    @property
    def heartbeat_interval_s(self) -> int:
        """Seconds between a running trial's heartbeats (the study's setting)."""
        return int(self.storage.heartbeat_interval or DEFAULT_HEARTBEAT_S)

    @property
    def grace_s(self) -> float:
        """Seconds without a heartbeat after which a running trial counts as dead (the study's setting)."""
        return float(self.storage.grace_period or 3 * self.heartbeat_interval_s)

    def sync_heartbeat(self) -> tuple[int, int]:
        """Re-read the study's heartbeat settings (``study set`` may have changed them) and
        apply them to the storage; returns (interval, grace)."""
        interval, grace = stored_heartbeat(self.study.user_attrs)
        apply_heartbeat(self.storage, interval, grace)
        return interval, grace

    def trials(self, states: "tuple[optuna.trial.TrialState, ...] | None" = None) -> list["optuna.trial.FrozenTrial"]:
        return self.study.get_trials(deepcopy=False, states=states)

    def status(self) -> "CellStatus":
        from attnres_search.study.status import study_status

        return study_status(self)

    def enqueue_missing(self, *, include_failed: bool = False) -> int:
        """Queue the grid cells x seeds that are left to run (the one rule of
        :func:`attnres_search.study.status.left_to_run`, shared by ``worker``, ``launch`` and
        ``study resume``): trials of dead workers are failed and re-queued first. With
        ``include_failed`` (``study resume``), cells whose runs failed are queued again too.
        Returns how many were queued."""
        if not self.space.is_grid:
            return 0
        from attnres_search.study.heartbeats import fail_stale_trials
        from attnres_search.study.status import left_to_run

        fail_stale_trials(self)
        queued = 0
        for params in left_to_run(self, include_failed=include_failed):
            self.study.enqueue_trial(params, user_attrs={ATTR_CELL: cell_key(params)})
            queued += 1
        return queued


def stored_heartbeat(attrs: dict) -> tuple[int, int]:
    """A study's (interval, grace) from its user attributes; studies made before they
    were stored get the defaults."""
    interval = int(attrs.get(ATTR_HEARTBEAT_INTERVAL, DEFAULT_HEARTBEAT_S))
    return interval, int(attrs.get(ATTR_HEARTBEAT_GRACE, 3 * interval))


def set_heartbeat(handle: StudyHandle, interval: int | None = None, grace: int | None = None) -> tuple[int, int]:
    """Change the study's heartbeat settings (``study set``); every worker picks them up
    before its next trial. A grace not given stays, unless it would no longer outlast the
    interval. Returns the new (interval, grace)."""
    old_interval, old_grace = stored_heartbeat(handle.study.user_attrs)
    new_interval = old_interval if interval is None else interval
    if grace is not None:
        new_grace = grace
    else:
        new_grace = old_grace if old_grace >= new_interval else 3 * new_interval
    check_heartbeat(new_interval, new_grace)
    handle.study.set_user_attr(ATTR_HEARTBEAT_INTERVAL, new_interval)
    handle.study.set_user_attr(ATTR_HEARTBEAT_GRACE, new_grace)
    apply_heartbeat(handle.storage, new_interval, new_grace)
    return new_interval, new_grace


def check_study_name(name: str) -> str:
    """Study names become folder names under ``runs/``: letters, digits, ``.``, ``_`` and
    ``-`` only, and not only dots (``..`` would leave ``runs/``)."""
    if not _NAME.fullmatch(name) or set(name) == {"."}:
        raise BadInput(f"study name {name!r}: use letters, digits, '.', '_' and '-' only "
                       "(it names the study's folder under runs/); pick another with --name")
    return name


def create_study(space: Space, name: str, url: str, *, heartbeat_interval: int | None = None,
                 heartbeat_grace: int | None = None) -> StudyHandle:
    """A new study for ``space`` in the storage at ``url``. Everything that can be bad
    input (the name, the runs, the heartbeat settings, the URL, a name already taken) is
    checked before the study is written; only opening the storage creates its tables when
    it has none."""
    check_study_name(name)
    heartbeat = heartbeat_settings(heartbeat_interval, heartbeat_grace)
    check_space_runs(space, runs_dir(url) / name)
    storage = open_storage(url, mode="create")
    return new_study(space, name, storage, heartbeat=heartbeat)


def open_or_create_study(space: Space, name: str, url: str) -> tuple[StudyHandle, bool]:
    """The study ``name`` if the storage has it, else a new one for ``space``
    (``demo``). Returns the handle and whether it was created."""
    check_study_name(name)
    heartbeat = heartbeat_settings()
    check_space_runs(space, runs_dir(url) / name)
    storage = open_storage(url, mode="create")
    if name in study_names(storage):
        return open_study(name, storage), False
    return new_study(space, name, storage, heartbeat=heartbeat), True


def new_study(space: Space, name: str, storage: "optuna.storages.RDBStorage", *,
              heartbeat: tuple[int, int] | None = None) -> StudyHandle:
    """Create study ``name`` in an open storage, with every grid cell x seed enqueued once.
    ``heartbeat`` is (interval, grace) in seconds, default :func:`heartbeat_settings`."""
    import optuna

    check_study_name(name)
    interval, grace = heartbeat if heartbeat is not None else heartbeat_settings()
    try:
        study = optuna.create_study(study_name=name, storage=storage, direction="minimize",
                                    sampler=make_sampler(space), pruner=make_pruner(space))
    except optuna.exceptions.DuplicatedStudyError:
        raise BadInput(f"a study named {name!r} already exists in {display_url(storage.url)}; continue it with "
                       f"`attnres-search study resume {name}`, remove it with `attnres-search study delete {name}`, "
                       "or pick another --name") from None
    study.set_user_attr(ATTR_SPACE, space.source)
    study.set_user_attr(ATTR_SPACE_NAME, space.name)
    study.set_user_attr(ATTR_KIND, space.kind)
    study.set_user_attr(ATTR_BASELINE, space.baseline)
    study.set_user_attr(ATTR_VERSION, __version__)
    identity = uuid.uuid4().hex
    study.set_user_attr(ATTR_STUDY_ID, identity)
    study.set_user_attr(ATTR_HEARTBEAT_INTERVAL, interval)
    study.set_user_attr(ATTR_HEARTBEAT_GRACE, grace)
    apply_heartbeat(storage, interval, grace)
    if space.is_grid:
        cells = space.cells()
        study.set_user_attr(ATTR_CELLS, len(cells))
        for params in cells:
            study.enqueue_trial(params, user_attrs={ATTR_CELL: cell_key(params)})
    return StudyHandle(study, space, storage, identity)


def study_names(storage: "optuna.storages.RDBStorage") -> list[str]:
    import optuna

    return optuna.get_all_study_names(storage)


def open_study(name: str, storage: "optuna.storages.RDBStorage") -> StudyHandle:
    """The existing study ``name``, with the space it stored and that space's sampler and pruner."""
    import optuna

    try:
        study_id = storage.get_study_id_from_name(name)
    except KeyError:
        names = study_names(storage)
        known = ", ".join(names) if names else "none"
        raise BadInput(f"no study named {name!r} in {display_url(storage.url)} (studies: {known})") from None
    attrs = storage.get_study_user_attrs(study_id)
    if ATTR_SPACE not in attrs:
        raise BadInput(f"study {name!r} was not created by attnres-search (it records no search space)")
    space = space_from_dict(attrs[ATTR_SPACE])
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", optuna.exceptions.ExperimentalWarning)
        study = optuna.load_study(study_name=name, storage=storage, sampler=make_sampler(space),
                                  pruner=make_pruner(space))
    apply_heartbeat(storage, *stored_heartbeat(attrs))
    identity = str(attrs.get(ATTR_STUDY_ID) or f"{display_url(storage.url)}#{study_id}")
    return StudyHandle(study, space, storage, identity)


def delete_study(handle: StudyHandle) -> None:
    """Remove the study and its trials from the storage. Run folders on disk are kept."""
    import optuna

    optuna.delete_study(study_name=handle.name, storage=handle.storage)
