"""Growing a study until it decides: more seeds for every cell, or for some cells only.

A study stores its space; extending rewrites that stored space (more ``seeds``, or
``extra_seeds`` for the named cells) and queues exactly the new cell x seed runs, so
workers, ``study status`` and reports pick them up as if they had been there from the
start. New seeds continue after the largest seed the study has used, so a seed is never
run twice for one cell and every cell that gets seed k gets the same seed k as its
baseline (the pairing the paired tests rely on).
"""

from __future__ import annotations

import copy
from dataclasses import dataclass, replace
from typing import TYPE_CHECKING, Sequence

from attnres_search.errors import BadInput
from attnres_search.study.attrs import ATTR_SPACE
from attnres_search.study.cells import cell_label, distinct_runs
from attnres_search.study.space_file import space_from_dict

if TYPE_CHECKING:
    from attnres_search.study.handle import StudyHandle


@dataclass(frozen=True)
class Extension:
    handle: "StudyHandle"  # the same study with the extended space
    seeds: tuple[int, ...]  # the seeds added
    cells: tuple[str, ...]  # labels of the cells that got them
    queued: int  # runs queued


def seed_is_categorical(handle: "StudyHandle") -> bool:
    """Studies created before seeds could grow stored the seed as a categorical parameter,
    whose choices Optuna cannot change afterwards."""
    import optuna

    for trial in handle.trials():
        dist = trial.distributions.get("seed")
        if dist is not None:
            return isinstance(dist, optuna.distributions.CategoricalDistribution)
    return False


def cell_labels(handle: "StudyHandle") -> list[str]:
    return [cell_label(p, seed=False) for p in distinct_runs(handle.space.base_cells())]


def extend_study(handle: "StudyHandle", n_seeds: int, cells: Sequence[str] | None = None) -> Extension:
    """Add ``n_seeds`` new seeds to every cell (``cells=None``) or to the labelled cells."""
    space = handle.space
    if not space.is_grid:
        raise BadInput(f"study {handle.name!r} samples with {space.sampler}: only grid studies run cells over seeds; "
                       "raise n_trials instead")
    if n_seeds < 1:
        raise BadInput(f"--seeds must be at least 1, got {n_seeds}")
    if seed_is_categorical(handle):
        raise BadInput(f"study {handle.name!r} was created by an older attnres-search that stored seeds as a fixed "
                       "list; start a new study with more seeds instead")
    known = cell_labels(handle)
    if cells is not None:
        unknown = [c for c in cells if c not in known]
        if unknown:
            raise BadInput(f"no cell {unknown[0]!r} in study {handle.name!r}; cells: {', '.join(known)}")
        if not cells:
            return Extension(handle, (), (), 0)
    start = max(space.all_seeds()) + 1
    new = tuple(range(start, start + n_seeds))
    source = copy.deepcopy(space.source)
    if cells is None:
        source["seeds"] = list(space.seeds) + list(new)
        chosen = tuple(known)
    else:
        extra = source.setdefault("extra_seeds", {})
        for label in cells:
            extra[label] = list(extra.get(label, [])) + list(new)
        chosen = tuple(cells)
    extended = space_from_dict(source)
    handle.study.set_user_attr(ATTR_SPACE, extended.source)
    grown = replace(handle, space=extended)
    queued = grown.enqueue_missing()
    return Extension(grown, new, chosen, queued)
