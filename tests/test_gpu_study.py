"""Issue 20, item 4: the pre-registered GPU study space keeps what it promises (at least
1e15 training FLOPs and 20 tokens per parameter per run, the three variants, seeds as a
grid axis so `study extend` grows it) and `spaces show` prints it."""

from __future__ import annotations

import pytest

from attnres_search.model.flops import count_params, flops_per_token
from attnres_search.study.space_file import load_space
from cli_runner import cli


def test_every_run_of_the_gpu_study_is_big_enough() -> None:
    space = load_space("gpu_study")
    assert {v.name for v in space.variants} == {"baseline", "full", "block-s4"} and space.is_grid
    for params in space.cells():
        run = space.run_config(params)
        assert flops_per_token(run.model)["train"] * run.tokens >= 1e15
        assert run.tokens >= 20 * count_params(run.model)["total"]  # every parameter counted, embedding included
        assert run.tokens % (run.batch_size * run.model.seq_len) == 0  # whole steps: the budget is what runs
        assert run.compile is False and run.ckpt_every  # the default eager path; preemption loses little
    assert sorted({c["seed"] for c in space.cells()}) == [400, 401]  # a grid axis: `study extend` adds 402, ...


def test_spaces_show_prints_the_gpu_study(monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture) -> None:
    code, out, err = cli(["spaces", "show", "gpu_study"], monkeypatch, capsys)
    assert code == 0, err
    assert "pre-registered" in out and "1.51e+15" in out and "67,108,864" in out
