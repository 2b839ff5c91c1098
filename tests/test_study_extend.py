"""``study extend``: a study grows by seeds until it decides, instead of starting over.
New seeds are queued once, continue after the largest seed used, keep the pairing with
the baseline, and reports and status pick them up."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import optuna
import pytest
from optuna.trial import TrialState

from attnres_search.study.attrs import ATTR_CELL
from attnres_search.training.config import RunConfig, RunResult
from tests.cli_runner import cli

optuna.logging.set_verbosity(optuna.logging.WARNING)

TINY = """
name: grow
model: {n_layers: 1, d_model: 16, n_heads: 2, seq_len: 16}
train: {tokens: 2048, batch_size: 4, val_every: 16, val_windows: 2, diagnostics_every: 1000}
variants: [baseline, block-s2]
seeds: 2
"""


def seeds_of(url: str, name: str, states=(TrialState.COMPLETE,)) -> dict[str, list[int]]:
    study = optuna.load_study(study_name=name, storage=url)
    out: dict[str, list[int]] = {}
    for t in study.get_trials(states=states):
        params = t.params or json.loads(t.user_attrs[ATTR_CELL])  # queued trials carry their cell only
        out.setdefault(params["variant"], []).append(params["seed"])
    return {k: sorted(v) for k, v in out.items()}


@pytest.mark.slow
def test_extend_a_real_study_queues_new_seeds_once_and_reports_use_them(tmp_path: Path, monkeypatch, capsys) -> None:
    monkeypatch.chdir(tmp_path)
    monkeypatch.setenv("ATTNRES_RUNS_DIR", str(tmp_path / "runs"))
    (tmp_path / "grow.yaml").write_text(TINY)
    url = f"sqlite:///{tmp_path / 'studies.db'}"
    code, _, err = cli(["study", "start", "grow.yaml", "--storage", url, "--quiet"], monkeypatch, capsys)
    assert code == 0, err
    assert seeds_of(url, "grow") == {"baseline": [0, 1], "block-s2": [0, 1]}

    code, _, err = cli(["study", "extend", "grow", "--seeds", "1", "--storage", url], monkeypatch, capsys)
    assert code == 0, err
    assert "seeds 2 queued for 2 cell(s), 2 run(s)" in err
    waiting = seeds_of(url, "grow", states=(TrialState.WAITING,))
    assert waiting == {"baseline": [2], "block-s2": [2]}
    # Extending again continues after the largest seed; nothing is queued twice.
    code, _, err = cli(["study", "extend", "grow", "--seeds", "1", "--storage", url], monkeypatch, capsys)
    assert code == 0 and "seeds 3 queued" in err
    assert seeds_of(url, "grow", states=(TrialState.WAITING,)) == {"baseline": [2, 3], "block-s2": [2, 3]}

    code, _, err = cli(["study", "resume", "grow", "--storage", url, "--quiet"], monkeypatch, capsys)
    assert code == 0, err
    assert seeds_of(url, "grow") == {"baseline": [0, 1, 2, 3], "block-s2": [0, 1, 2, 3]}
    code, out, err = cli(["report", "grow", "--storage", url, "--format", "json"], monkeypatch, capsys)
    assert code == 0, err
    rows = {r["variant"]: r for r in json.loads(out)["tables"]["variants"]}
    assert rows["baseline"]["n"] == 4 and rows["block-s2"]["n_pairs"] == 4
    code, out, _ = cli(["study", "status", "grow", "--storage", url], monkeypatch, capsys)
    assert "done 8/8" in out


def fake_runner(cfg: RunConfig, **_: Any) -> RunResult:
    """block-s2 is always 0.05 better (decided); full is better or worse by seed (undecided)."""
    loss = 3.0 + 0.001 * cfg.seed
    if cfg.model.residual.kind == "block":
        loss -= 0.05 + 0.0001 * (cfg.seed % 2)
    elif cfg.model.residual.kind == "full":
        loss += 0.05 if cfg.seed % 2 else -0.04
    return RunResult(config=cfg.to_dict(), params_total=10, params_non_embedding=5, flops_per_token=1.0,
                     flops_total=1.0, tokens=cfg.tokens, steps=2, tokens_per_s=1.0, wall_time_s=0.1,
                     final_val_loss=loss, best_val_loss=loss, val_curve=[(1, loss + 1), (2, loss)])


def test_extend_inconclusive_grows_only_undecided_cells_and_their_baseline(tmp_path: Path, monkeypatch,
                                                                          capsys) -> None:
    import attnres_search.training.run as training_run

    monkeypatch.chdir(tmp_path)
    monkeypatch.setenv("ATTNRES_RUNS_DIR", str(tmp_path / "runs"))
    monkeypatch.setattr(training_run, "run", fake_runner)
    (tmp_path / "s.yaml").write_text(TINY.replace("[baseline, block-s2]", "[baseline, block-s2, full]")
                                     .replace("seeds: 2", "seeds: 4").replace("name: grow", "name: s"))
    url = "sqlite:///studies.db"
    assert cli(["study", "start", "s.yaml", "--quiet"], monkeypatch, capsys)[0] == 0
    code, _, err = cli(["study", "extend", "s", "--seeds", "2", "--inconclusive"], monkeypatch, capsys)
    assert code == 0, err
    waiting = seeds_of(url, "s", states=(TrialState.WAITING,))
    assert waiting == {"baseline": [4, 5], "full": [4, 5]}, "block-s2 is decided; full and its baseline grow"
    code, out, _ = cli(["study", "status", "s"], monkeypatch, capsys)
    assert "done 12/16" in out
    # A named cell, and bad names.
    code, _, err = cli(["study", "extend", "s", "--seeds", "1", "--cell", "variant=block-s2"], monkeypatch, capsys)
    assert code == 0 and seeds_of(url, "s", states=(TrialState.WAITING,))["block-s2"] == [6]
    code, _, err = cli(["study", "extend", "s", "--seeds", "1", "--cell", "variant=nope"], monkeypatch, capsys)
    assert code == 2 and "no cell 'variant=nope'" in err and len(err.strip().splitlines()) == 1


def test_extend_refuses_sampled_studies(tmp_path: Path, monkeypatch, capsys) -> None:
    monkeypatch.chdir(tmp_path)
    (tmp_path / "t.yaml").write_text(TINY.replace("name: grow", "name: t").replace("seeds: 2", "seeds: 1")
                                     + "axes: {lr: {low: 0.001, high: 0.01}}\nn_trials: 2\n")
    assert cli(["study", "start", "t.yaml", "--n-trials", "0"], monkeypatch, capsys)[0] == 0
    before = (tmp_path / "studies.db").read_bytes()
    code, _, err = cli(["study", "extend", "t", "--seeds", "1"], monkeypatch, capsys)
    assert code == 2 and "only grid studies" in err
    assert (tmp_path / "studies.db").read_bytes() == before
