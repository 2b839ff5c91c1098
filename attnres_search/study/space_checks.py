"""The trainer's own checks applied to every run a space makes, before a study exists.

A space can be well-formed YAML and still make runs that cannot train: a token budget
below one batch, an unknown optimizer, a missing text file, a model too big for memory.
:func:`check_space_runs` passes each distinct run through
:func:`attnres_search.training.checks.check_run`, the gate ``train`` uses, so such a space
is a one-line error (exit 2) instead of a study whose every trial fails.
"""

from __future__ import annotations

from pathlib import Path

from attnres_search.errors import BadInput
from attnres_search.study.cells import cell_label, cell_slug, distinct_runs
from attnres_search.study.space import Space
from attnres_search.training.checks import check_run


def check_space_runs(space: Space, runs_root: Path) -> None:
    """Raise :class:`BadInput` naming the space, the cell and the field of the first run
    that :func:`check_run` refuses. ``runs_root`` is where the study's trials will write
    (its writability is part of the check; nothing is created there)."""
    for params in distinct_runs(space.representative_cells()):
        cfg = space.run_config(params, out_dir=str(runs_root / cell_slug(params)))
        try:
            check_run(cfg)
        except ValueError as exc:
            raise BadInput(f"search space {space.name}: cell {cell_label(params, seed=False)}: {exc}") from None
