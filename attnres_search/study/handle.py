"""One open study: the Optuna study, the space it was created from, and its storage.

The CLI opens a study once and passes the :class:`StudyHandle` down to the worker, the
progress display, status and the report; nothing below it reopens the storage or parses
the space again.

How a grid never runs a cell twice, even with many workers on one storage, starts here:
:func:`create_study` stores the whole validated space in the study's user attributes (so
a resume never re-reads a file that may have changed) and enqueues every cell x seed
exactly once as a WAITING trial carrying its ``cell`` key. The rest is in
:mod:`attnres_search.study.worker` and :mod:`attnres_search.study.objective`.
"""

from __future__ import annotations

import re
import warnings
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING

from attnres_search import __version__
from attnres_search.errors import BadInput
from attnres_search.study.attrs import (ATTR_BASELINE, ATTR_CELL, ATTR_CELLS, ATTR_KIND, ATTR_SPACE, ATTR_SPACE_NAME,
                                        ATTR_VERSION)
from attnres_search.study.cells import cell_key
from attnres_search.study.pruners import make_pruner
from attnres_search.study.samplers import make_sampler
from attnres_search.study.space import Space
from attnres_search.study.space_checks import check_space_runs
from attnres_search.study.space_file import space_from_dict
from attnres_search.study.storage import display_url, open_storage, runs_dir

if TYPE_CHECKING:
    import optuna

    from attnres_search.study.status import CellStatus

_NAME = re.compile(r"[A-Za-z0-9._-]+")


@dataclass(frozen=True)
class StudyHandle:
    """An open study. ``study`` is the Optuna study (loaded with the space's sampler and
    pruner), ``space`` the validated space it stores, ``storage`` the open ``RDBStorage``."""

    study: "optuna.Study"
    space: Space
    storage: "optuna.storages.RDBStorage"

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
    def grace_s(self) -> float:
        """Seconds without a heartbeat after which a running trial counts as dead."""
        return float(self.storage.grace_period or 2 * (self.storage.heartbeat_interval or 60))

    def trials(self, states: "tuple[optuna.trial.TrialState, ...] | None" = None) -> list["optuna.trial.FrozenTrial"]:
        return self.study.get_trials(deepcopy=False, states=states)

    def status(self) -> "CellStatus":
        from attnres_search.study.status import study_status

        return study_status(self)

    def enqueue_missing(self) -> int:
        """Re-queue grid cells x seeds that have no finished, running or waiting trial (those
        whose trials all failed). Returns how many were queued."""
        if not self.space.is_grid:
            return 0
        from optuna.trial import TrialState

        from attnres_search.study.status import counts_as_done

        taken = {t.user_attrs.get(ATTR_CELL) for t in self.trials()
                 if t.state in (TrialState.WAITING, TrialState.RUNNING) or counts_as_done(t)}
        queued = 0
        for params in self.space.cells():
            key = cell_key(params)
            if key not in taken:
                self.study.enqueue_trial(params, user_attrs={ATTR_CELL: key})
                queued += 1
        return queued


def check_study_name(name: str) -> str:
    """Study names become folder names under ``runs/``: letters, digits, ``.``, ``_`` and
    ``-`` only, and not only dots (``..`` would leave ``runs/``)."""
    if not _NAME.fullmatch(name) or set(name) == {"."}:
        raise BadInput(f"study name {name!r}: use letters, digits, '.', '_' and '-' only "
                       "(it names the study's folder under runs/); pick another with --name")
    return name


def create_study(space: Space, name: str, url: str) -> StudyHandle:
    """A new study for ``space`` in the storage at ``url``. Everything that can be bad
    input (the name, the runs, the URL, a name already taken) is checked before the study
    is written; only opening the storage creates its tables when it has none."""
    check_study_name(name)
    check_space_runs(space, runs_dir(url) / name)
    storage = open_storage(url, mode="create")
    return new_study(space, name, storage)


def open_or_create_study(space: Space, name: str, url: str) -> tuple[StudyHandle, bool]:
    """The study ``name`` if the storage has it, else a new one for ``space``
    (``demo``). Returns the handle and whether it was created."""
    check_study_name(name)
    check_space_runs(space, runs_dir(url) / name)
    storage = open_storage(url, mode="create")
    if name in study_names(storage):
        return open_study(name, storage), False
    return new_study(space, name, storage), True


def new_study(space: Space, name: str, storage: "optuna.storages.RDBStorage") -> StudyHandle:
    """Create study ``name`` in an open storage, with every grid cell x seed enqueued once."""
    import optuna

    check_study_name(name)
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
    if space.is_grid:
        cells = space.cells()
        study.set_user_attr(ATTR_CELLS, len(cells))
        for params in cells:
            study.enqueue_trial(params, user_attrs={ATTR_CELL: cell_key(params)})
    return StudyHandle(study, space, storage)


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
    return StudyHandle(study, space, storage)


def delete_study(handle: StudyHandle) -> None:
    """Remove the study and its trials from the storage. Run folders on disk are kept."""
    import optuna

    optuna.delete_study(study_name=handle.name, storage=handle.storage)
