"""``study extend --until-decided`` on a real study with a stubbed trainer: it runs, looks,
extends the undecided primary cells and the baseline by the design's step, and stops when
every primary comparison is decided or at its maximum. Killed and rerun, it continues at
the same look and never runs a seed twice. Reports show the design, the looks and the
verdicts; a study without a design is labelled fixed-n."""

from __future__ import annotations

import json
from collections import Counter
from pathlib import Path
from typing import Any

import optuna
import pytest
from optuna.trial import TrialState

from attnres_search.study.attrs import ATTR_CELL, ATTR_LOOKS
from attnres_search.training.config import RunConfig, RunResult
from tests.cli_runner import cli

optuna.logging.set_verbosity(optuna.logging.WARNING)

SPACE = """
name: seq
model: {n_layers: 1, d_model: 16, n_heads: 2, seq_len: 16}
train: {tokens: 2048, batch_size: 4, val_every: 16, val_windows: 2, diagnostics_every: 1000}
variants: [baseline, full, block-s2, full-sigmoid]
seeds: 3
design: {primary: [full, block-s2], max_seeds: 7, step: 1, futility: 0.0}
"""
# Paired differences by seed (variant − baseline). full: a steady gain of 0.05 with small
# spread, decided early; block-s2: alternating ±, never decided, so it runs to the maximum.
NOISE = [0.003, -0.002, 0.001, -0.003, 0.002, 0.0, -0.001, 0.002]
RUNS: Counter = Counter()


def stub_runner(cfg: RunConfig, **_: Any) -> RunResult:
    RUNS[(cfg.model.residual.kind, cfg.model.residual.score if hasattr(cfg.model.residual, "score") else "",
          cfg.seed)] += 1
    loss = 3.0 + 0.01 * cfg.seed
    kind = cfg.model.residual.kind
    if kind == "full":
        loss += -0.05 + NOISE[cfg.seed % len(NOISE)]
    elif kind == "block":
        loss += 0.02 if cfg.seed % 2 else -0.021
    return RunResult(config=cfg.to_dict(), params_total=10, params_non_embedding=5, flops_per_token=1.0,
                     flops_total=1.0, tokens=cfg.tokens, steps=2, tokens_per_s=1.0, wall_time_s=0.1,
                     final_val_loss=loss, best_val_loss=loss, val_curve=[(1, loss + 1), (2, loss)],
                     hardware={"cpu": "Test CPU 9000", "cpu_capability": "AVX2"})


def cells(url: str, states=(TrialState.COMPLETE,)) -> Counter:
    study = optuna.load_study(study_name="seq", storage=url)
    params = (t.params or json.loads(t.user_attrs[ATTR_CELL]) for t in study.get_trials(states=states))
    return Counter((p["variant"], p["seed"]) for p in params)  # queued trials carry their cell only


@pytest.fixture
def seq_study(tmp_path: Path, monkeypatch, capsys) -> str:
    import attnres_search.training.run as training_run

    monkeypatch.chdir(tmp_path)
    monkeypatch.setenv("ATTNRES_RUNS_DIR", str(tmp_path / "runs"))
    monkeypatch.setattr(training_run, "run", stub_runner)
    RUNS.clear()
    (tmp_path / "seq.yaml").write_text(SPACE)
    url = "sqlite:///studies.db"
    code, _, err = cli(["study", "start", "seq.yaml", "--quiet", "--n-trials", "0"], monkeypatch, capsys)
    assert code == 0, err
    return url


def test_until_decided_grows_look_by_look_and_survives_a_kill(seq_study: str, monkeypatch, capsys) -> None:
    import attnres_search.study.until_decided as loop

    # Kill the loop right after its second extension was queued (before those runs ran).
    real_extend = __import__("attnres_search.study.extend", fromlist=["extend_study"]).extend_study
    calls = {"n": 0}

    def extend_then_die(*args: Any, **kwargs: Any):
        out = real_extend(*args, **kwargs)
        calls["n"] += 1
        if calls["n"] == 2:
            raise KeyboardInterrupt
        return out

    monkeypatch.setattr("attnres_search.study.extend.extend_study", extend_then_die)
    code, _, err = cli(["study", "extend", "seq", "--until-decided", "--quiet"], monkeypatch, capsys)
    assert code != 0
    assert loop is not None
    monkeypatch.setattr("attnres_search.study.extend.extend_study", real_extend)
    queued = cells(seq_study, states=(TrialState.WAITING,))
    assert queued == Counter({("baseline", 4): 1, ("block-s2", 4): 1}), "the kill left look 3's runs queued"

    code, _, err = cli(["study", "extend", "seq", "--until-decided", "--quiet"], monkeypatch, capsys)
    assert code == 0, err
    done = cells(seq_study)
    assert max(done.values()) == 1, "no cell x seed ran twice"
    assert max(RUNS.values()) == 1, "the trainer never ran a cell x seed twice"
    # full crossed at look 2 (4 pairs) and stopped; block-s2 and the baseline grew to the maximum (7);
    # the exploratory variant kept the first look's seeds.
    seeds = {v: sorted(s for (w, s) in done if w == v) for v in ("baseline", "full", "block-s2", "full-sigmoid")}
    assert seeds == {"baseline": list(range(7)), "full": [0, 1, 2, 3], "block-s2": list(range(7)),
                     "full-sigmoid": [0, 1, 2]}
    assert "look 5 of 5" in err and "full efficacy: variant better" in err and "block-s2 max reached" in err

    study = optuna.load_study(study_name="seq", storage=seq_study)
    looks = study.user_attrs[ATTR_LOOKS]
    assert [x["look"] for x in looks] == [1, 2, 3, 4, 5] and [x["pairs"] for x in looks] == [3, 4, 5, 6, 7]
    assert looks[0]["decisions"] == {"full": "continue", "block-s2": "continue"}
    assert looks[1]["decisions"]["full"] == "efficacy: variant better"
    assert looks[-1]["decisions"] == {"full": "efficacy: variant better", "block-s2": "max reached"}

    # Rerunning a finished loop changes nothing.
    before = Path("studies.db").read_bytes()
    code, _, err = cli(["study", "extend", "seq", "--until-decided", "--quiet"], monkeypatch, capsys)
    assert code == 0 and "look 5 of 5" in err

    # The report: roles, the sequential table, verdicts; re-rendering writes nothing.
    code, out, err = cli(["report", "seq", "--format", "json"], monkeypatch, capsys)
    assert code == 0, err
    report = json.loads(out)
    rows = {r["variant"]: r for r in report["tables"]["variants"]}
    assert rows["full"]["role"] == "primary" and rows["full"]["verdict"] == "reproduced"
    assert rows["full"]["seq_look"] == 2 and rows["full"]["seq_pairs"] == 4
    assert rows["block-s2"]["verdict"] == "no effect detectable (max reached)" and rows["block-s2"]["seq_look"] == 5
    assert rows["full-sigmoid"]["role"] == "exploratory" and rows["full-sigmoid"]["verdict"] == "exploratory"
    assert rows["full-sigmoid"]["p_adjusted"] is None and rows["full-sigmoid"]["p_value"] is not None
    assert rows["block-s2"]["mde_80"] is not None
    assert any("5 look(s) taken from the data, 5 recorded" in n for n in report["notes"])
    assert not any("warning" in n for n in report["notes"])
    code, out, _ = cli(["report", "seq", "--format", "markdown"], monkeypatch, capsys)
    assert "Sequential design: look 5 of 5" in out and "| full | 4 | 2 of 5 |" in out
    assert Path("studies.db").read_bytes() == before, "rerunning a finished loop and reporting wrote nothing"


def test_a_report_records_the_look_it_gives_a_verdict_at(seq_study: str, monkeypatch, capsys) -> None:
    code, _, err = cli(["study", "resume", "seq", "--quiet"], monkeypatch, capsys)
    assert code == 0, err
    code, out, _ = cli(["study", "status", "seq"], monkeypatch, capsys)
    assert "hardware: Test CPU 9000 [AVX2] (12 runs)" in out, "status names the hardware the runs used"
    code, out, err = cli(["report", "seq", "--format", "json"], monkeypatch, capsys)
    assert code == 0 and "recorded look 1 of 5 (3 pairs)" in err
    notes = json.loads(out)["notes"]  # the report it prints already counts the look it recorded
    assert any("1 look(s) taken from the data, 1 recorded" in n for n in notes), notes
    study = optuna.load_study(study_name="seq", storage=seq_study)
    assert [x["look"] for x in study.user_attrs[ATTR_LOOKS]] == [1]
    code, out, err = cli(["report", "seq"], monkeypatch, capsys)
    assert code == 0 and "recorded look" not in err, "a look is recorded once"


def test_until_decided_needs_a_design_and_refuses_other_growth(tmp_path: Path, monkeypatch, capsys) -> None:
    monkeypatch.chdir(tmp_path)
    (tmp_path / "plain.yaml").write_text(SPACE.replace("name: seq", "name: plain").split("design:")[0])
    assert cli(["study", "start", "plain.yaml", "--n-trials", "0", "--quiet"], monkeypatch, capsys)[0] == 0
    code, _, err = cli(["study", "extend", "plain", "--until-decided"], monkeypatch, capsys)
    assert code == 2 and "has no sequential design" in err and len(err.strip().splitlines()) == 1
    (tmp_path / "seq.yaml").write_text(SPACE)
    assert cli(["study", "start", "seq.yaml", "--n-trials", "0", "--quiet"], monkeypatch, capsys)[0] == 0
    code, _, err = cli(["study", "extend", "seq", "--seeds", "2", "--inconclusive"], monkeypatch, capsys)
    assert code == 2 and "--until-decided" in err
    code, _, err = cli(["study", "extend", "seq", "--until-decided", "--seeds", "1"], monkeypatch, capsys)
    assert code == 2
    # A bad design is refused before anything is written.
    (tmp_path / "bad.yaml").write_text(SPACE.replace("name: seq", "name: bad").replace("max_seeds: 7", "max_seeds: 2"))
    before = Path("studies.db").read_bytes()
    code, _, err = cli(["study", "start", "bad.yaml", "--n-trials", "0"], monkeypatch, capsys)
    assert code == 2 and "design.max_seeds (2) is below the 3 seeds" in err
    assert Path("studies.db").read_bytes() == before


def test_a_study_without_a_design_is_reported_as_fixed_n(tmp_path: Path, monkeypatch, capsys) -> None:
    import attnres_search.training.run as training_run

    monkeypatch.chdir(tmp_path)
    monkeypatch.setenv("ATTNRES_RUNS_DIR", str(tmp_path / "runs"))
    monkeypatch.setattr(training_run, "run", stub_runner)
    (tmp_path / "plain.yaml").write_text(SPACE.replace("name: seq", "name: plain").split("design:")[0])
    assert cli(["study", "start", "plain.yaml", "--quiet"], monkeypatch, capsys)[0] == 0
    code, out, _ = cli(["report", "plain", "--format", "json"], monkeypatch, capsys)
    report = json.loads(out)
    assert any(n.startswith("fixed-n study") for n in report["notes"])
    assert "sequential" not in report["tables"]
    rows = {r["variant"]: r for r in report["tables"]["variants"]}
    assert all(r["role"] in ("primary", "baseline") for r in rows.values())
    assert rows["full-sigmoid"]["p_adjusted"] is not None, "without a design every comparison is in the family"


def test_out_of_time_stops_at_the_current_look_and_a_rerun_continues_it(seq_study: str, monkeypatch) -> None:
    """A time-limited loop returns with the look's runs left (nothing extended, nothing lost);
    the next loop finishes that look and goes on."""
    from attnres_search.study.handle import open_study
    from attnres_search.study.storage import open_storage
    from attnres_search.study.until_decided import until_decided
    from attnres_search.study.worker import run_worker

    handle = open_study("seq", open_storage(seq_study, mode="write"))
    end = until_decided(handle, lambda h: run_worker(h, n_trials=5), out_of_time=lambda: True)
    assert end.out_of_time and end.looks_done == 0 and end.extensions == 0
    with pytest.raises(RuntimeError, match="still missing"):  # runs left without a time limit: an error
        until_decided(handle, lambda h: run_worker(h, n_trials=5))
    calls = {"n": 0}

    def budget() -> bool:  # time runs out after two looks' runs
        return calls["n"] >= 2

    def run_all(h) -> None:
        calls["n"] += 1
        run_worker(h)

    end = until_decided(open_study("seq", open_storage(seq_study, mode="write")), run_all, out_of_time=budget)
    assert end.out_of_time and end.looks_done == 2 and end.extensions == 2
    assert cells(seq_study, states=(TrialState.WAITING,)) == Counter({("baseline", 4): 1, ("block-s2", 4): 1})
    done_before = sum(cells(seq_study).values())
    end = until_decided(open_study("seq", open_storage(seq_study, mode="write")), lambda h: run_worker(h))
    assert not end.out_of_time and {d.variant: d.state_name for d in end.decisions} == {
        "full": "efficacy: variant better", "block-s2": "max reached"}
    done = cells(seq_study)
    assert max(done.values()) == 1 and sum(done.values()) == 21 > done_before


def test_until_decided_time_limit_stops_cleanly_when_no_run_fits(seq_study: str, monkeypatch, capsys) -> None:
    """The GPU window's case: the worker refuses to start a run that would not finish in the
    time left, leaving runs of the look queued; the loop exits 0 with one line on what is
    left (it used to raise 'still missing'), and a rerun without a limit finishes the study."""
    import attnres_search.study.worker as worker

    real_may_claim = worker.may_claim
    claims = {"n": 0}

    def fits_four(estimate_s, left_s, limit_s, margin=1.1) -> bool:
        claims["n"] += 1
        return claims["n"] <= 4

    monkeypatch.setattr(worker, "may_claim", fits_four)
    code, _, err = cli(["study", "extend", "seq", "--until-decided", "--time-limit", "10m", "--quiet"], monkeypatch,
                       capsys)
    assert code == 0, err
    assert "time limit: look 1 of 5 has 8 run(s) left" in err and "error" not in err
    assert sum(cells(seq_study).values()) == 4
    monkeypatch.setattr(worker, "may_claim", real_may_claim)
    code, _, err = cli(["study", "extend", "seq", "--until-decided", "--quiet"], monkeypatch, capsys)
    assert code == 0 and "look 5 of 5" in err
    assert max(cells(seq_study).values()) == 1
