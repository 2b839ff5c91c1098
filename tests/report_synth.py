"""Synthetic study storages for the report tests: trials made up with known numbers (loss,
curves, timings, diagnostics) and stored as `study start` + a worker would leave them, so a
report's figures can be checked against a hand or scipy computation."""

from __future__ import annotations

import json
from typing import Any, Callable

import optuna

from attnres_search.study.attrs import ATTR_CELL, ATTR_KIND, ATTR_SPACE, ATTR_SPACE_NAME
from attnres_search.study.cells import cell_key
from attnres_search.study.space import Space
from tests.cli_runner import cli

optuna.logging.set_verbosity(optuna.logging.WARNING)

Attrs = Callable[[dict[str, Any], float], dict[str, Any]]  # (trial params, final loss) -> extra user attrs


def store_trials(url: str, space: Space, losses: dict[Any, list[float]], attrs: Attrs | None = None) -> None:
    """``losses`` maps a variant name, or a tuple of (param, value) pairs naming a cell, to
    the final loss of seeds 0, 1, ...; ``attrs`` adds or replaces stored user attributes."""
    st = optuna.create_study(study_name=space.name, storage=url)
    st.set_user_attr(ATTR_SPACE, space.source)
    st.set_user_attr(ATTR_SPACE_NAME, space.name)
    st.set_user_attr(ATTR_KIND, space.kind)
    dists = {k: optuna.distributions.CategoricalDistribution(list(v)) for k, v in space.choices().items()}
    for cell, values in losses.items():
        for seed, loss in enumerate(values):
            params = dict(cell if isinstance(cell, tuple) else (("variant", cell),), seed=seed)
            run = space.run_config(params)
            user = {ATTR_CELL: cell_key(params), "variant": params["variant"], "seed": seed, "config": run.to_dict(),
                    "final_val_loss": loss, "params_total": 1000, "flops_total": 5.0e9, "tokens": run.tokens,
                    "tokens_per_s": 2.0e4, "val_curve": [[10, loss + 0.5], [20, loss]]}
            user.update(attrs(params, loss) if attrs else {})
            st.add_trial(optuna.trial.create_trial(params=params, distributions={k: dists[k] for k in params},
                                                   value=loss, user_attrs=user))


def json_report(name: str, url: str, monkeypatch: Any, capsys: Any) -> dict[str, Any]:
    """``report NAME --format json`` through the CLI, which must succeed."""
    code, out, err = cli(["report", name, "--format", "json", "--storage", url], monkeypatch, capsys)
    assert code == 0, err
    return json.loads(out)


def optima_by_variant(doc: dict[str, Any]) -> dict[str, dict[str, Any]]:
    """A depth-width report's fitted-optimum rows, by variant."""
    return {r["variant"]: r for r in doc["tables"]["optima"]}
