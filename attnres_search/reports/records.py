"""Finished trials read back from a study as plain records, the only input of the reports."""

from __future__ import annotations

from collections import Counter
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

from attnres_search.residual import PRESETS
from attnres_search.study.space import Space

if TYPE_CHECKING:
    import optuna

from attnres_search.study.attrs import ATTR_LOOKS, ATTR_SKIPPED

Group = tuple[tuple[str, Any], ...]


@dataclass(frozen=True)
class TrialRecord:
    number: int
    variant: str
    seed: int
    group: Group  # the trial's parameters other than variant and seed (size, ratio, axes)
    loss: float  # final validation loss
    attrs: dict[str, Any] = field(default_factory=dict)  # every user attribute of the trial

    @property
    def model(self) -> dict[str, Any]:
        return self.attrs.get("config", {}).get("model", {})

    def get(self, name: str) -> Any:
        return self.attrs.get(name)


@dataclass
class StudyRecords:
    space: Space
    completed: list[TrialRecord]
    failed: Counter = field(default_factory=Counter)  # (variant, group) -> failed trials
    pruned: Counter = field(default_factory=Counter)
    looks: list[dict[str, Any]] = field(default_factory=list)  # a sequential design's recorded looks

    def groups(self) -> list[Group]:
        """Distinct non-variant cells, in first-seen order of the sorted trials."""
        return list(dict.fromkeys(r.group for r in self.completed))

    def variants(self) -> list[str]:
        """Variants in the space's order (those without any completed trial included)."""
        return [v.name for v in self.space.variants]

    def select(self, variant: str, group: Group) -> list[TrialRecord]:
        return sorted((r for r in self.completed if r.variant == variant and r.group == group), key=lambda r: r.seed)

    def paper_preset(self, variant: str) -> str | None:
        """The preset whose paper figure applies: only when the variant *is* that preset,
        not a preset with fields changed."""
        v = self.space.variant(variant)
        return v.preset if v.residual == PRESETS[v.preset][0] else None


def load_records(study: "optuna.Study", space: Space) -> StudyRecords:
    from optuna.trial import TrialState

    looks = study.user_attrs.get(ATTR_LOOKS, [])
    records = StudyRecords(space, [], looks=[dict(x) for x in looks] if isinstance(looks, list) else [])
    trials = sorted(study.get_trials(deepcopy=False), key=lambda t: t.number)
    retried = {n for t in trials for n in t.system_attrs.get("retry_history", [])}  # failed, then run again
    for t in trials:
        if "variant" not in t.params or ATTR_SKIPPED in t.user_attrs or t.number in retried:
            continue
        group = tuple(sorted((k, v) for k, v in t.params.items() if k not in ("variant", "seed")))
        cell = (t.params["variant"], group)
        if t.state == TrialState.COMPLETE and t.value is not None:
            records.completed.append(TrialRecord(t.number, t.params["variant"], int(t.params.get("seed", 0)), group,
                                                 float(t.value), dict(t.user_attrs)))
        elif t.state == TrialState.FAIL:
            records.failed[cell] += 1
        elif t.state == TrialState.PRUNED:
            records.pruned[cell] += 1
    return records
