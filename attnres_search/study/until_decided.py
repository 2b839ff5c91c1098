"""``study extend --until-decided``: run, look, extend by the design's step, repeat, until
every primary comparison of a pre-registered sequential design is decided or at its maximum.

Nothing here is state that a kill could lose: the runs of a look are queued in the storage
(the extended space) before any of them starts, a look's decisions are recomputed from the
stored trials, and the look record is written once. Rerunning after a kill therefore runs
what was queued, takes the look it was about to take, and extends from there; seeds only
ever continue after the largest one used, so none is run twice.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import TYPE_CHECKING, Callable

from attnres_search.errors import BadInput
from attnres_search.study.cells import cell_label

if TYPE_CHECKING:
    from attnres_search.reports.sequential import ComparisonDecision
    from attnres_search.study.handle import StudyHandle


@dataclass(frozen=True)
class LoopEnd:
    handle: "StudyHandle"
    decisions: tuple["ComparisonDecision", ...]
    looks_done: int
    extensions: int  # extensions made by this call
    out_of_time: bool = False  # stopped by the time limit with runs of the current look left


def until_decided(handle: "StudyHandle", run_pending: Callable[["StudyHandle"], None],
                  echo: Callable[[str], None] = lambda _: None,
                  out_of_time: Callable[[], bool] = lambda: False) -> LoopEnd:
    """``run_pending(handle)`` runs every queued run of the study (in this process or with
    workers) and returns when none is left, or earlier when ``out_of_time()`` (a time limit:
    the running trial was checkpointed and re-queued); it raises when runs failed. A loop
    out of time returns with ``out_of_time`` set; rerunning continues at the same look."""
    from attnres_search.reports.design_rows import study_decisions
    from attnres_search.reports.records import load_records
    from attnres_search.reports.sequential import next_look_pairs
    from attnres_search.study.extend import extend_study
    from attnres_search.study.looks import record_looks

    design = handle.space.design
    if design is None:
        raise BadInput(f"study {handle.name!r} has no sequential design (a `design:` key in its space when it was "
                       "created); --until-decided needs one, or grow it with --seeds and read it as fixed-n")
    extensions = 0
    while True:
        handle.enqueue_missing(include_failed=True)
        if handle.status().remaining:
            if out_of_time():
                return _stopped(handle, extensions)
            run_pending(handle)
            left = handle.status().remaining
            if left and out_of_time():
                return _stopped(handle, extensions)
            if left:
                raise RuntimeError(f"study {handle.name}: {left} run(s) of look still missing after running; "
                                   "rerun to continue")
        records = load_records(handle.study, handle.space)
        for look in record_looks(handle.study, records, by="study extend --until-decided"):
            echo(f"look {look['look']} of {design.n_looks} ({look['pairs']} pairs): "
                 + ", ".join(f"{v} {s}" for v, s in look["decisions"].items()))
        found = study_decisions(records)
        assert found is not None
        decisions, looks_done = found
        open_ = [d for d in decisions if not d.decided]
        target = next_look_pairs(design, looks_done)
        if not open_ or target is None:
            return LoopEnd(handle, tuple(decisions), looks_done, extensions)
        variants = [d.variant for d in open_] + [handle.space.baseline]
        labels = [cell_label({"variant": v}, seed=False) for v in variants]
        have = min(len(seeds_of(handle, v)) for v in variants)
        if have >= target:  # pairs exist but a look could not be taken (a failed pair): nothing to add
            raise RuntimeError(f"study {handle.name}: look {looks_done + 1} needs {target} pairs and the cells hold "
                               f"{have} seeds, yet the look is not possible (failed runs?); see `study status`")
        ext = extend_study(handle, target - have, labels)
        extensions += 1
        echo(f"look {looks_done + 1} of {design.n_looks} needs {target} pairs: seeds "
             f"{', '.join(map(str, ext.seeds))} queued for {', '.join(variants)} ({ext.queued} run(s))")
        handle = ext.handle


def _stopped(handle: "StudyHandle", extensions: int) -> LoopEnd:
    from attnres_search.reports.design_rows import study_decisions
    from attnres_search.reports.records import load_records

    found = study_decisions(load_records(handle.study, handle.space))
    assert found is not None
    return LoopEnd(handle, tuple(found[0]), found[1], extensions, out_of_time=True)


def seeds_of(handle: "StudyHandle", variant: str) -> list[int]:
    """Every seed the space gives a variant's cell (common seeds plus its extra seeds)."""
    space = handle.space
    label = cell_label({"variant": variant}, seed=False)
    return list(space.seeds) + list(space.extra_seeds.get(label, ()))
