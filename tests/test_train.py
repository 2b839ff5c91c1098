"""End-to-end training runs on CPU: determinism, learning, resume, divergence, contract."""

from __future__ import annotations

import json
import math

import lightning as L
import pytest
import torch

from attnres_search.model.config import ModelConfig, preset
from attnres_search.model.decoder import AttnResLM
from attnres_search.training.optim import CombinedOptimizer, Schedule, build_optimizer
from attnres_search.training.config import RunConfig, RunResult
from attnres_search.training.run import NonFiniteLoss, resolve_steps, run


def tiny(residual: str = "baseline", **overrides) -> RunConfig:
    model = ModelConfig(vocab_size=256, n_layers=1, d_model=32, n_heads=2, seq_len=32, residual=preset(residual))
    fields = dict(model=model, tokens=None, steps=30, batch_size=8, val_every=10, val_windows=8, diagnostics_every=10)
    fields.update(overrides)
    return RunConfig(**fields)


def test_same_seed_is_bit_identical_and_a_new_seed_is_not():
    a, b = run(tiny("block-s2")), run(tiny("block-s2"))
    assert a.val_curve == b.val_curve and a.final_val_loss == b.final_val_loss
    assert run(tiny("block-s2", seed=1)).final_val_loss != a.final_val_loss
    # Bit-identical holds on the same hardware, so the run names it: the CPU model as the OS
    # reports it and the instruction set torch dispatched to.
    from pathlib import Path

    cpuinfo = Path("/proc/cpuinfo")
    if cpuinfo.exists():
        names = {line.split(":", 1)[1].strip() for line in cpuinfo.read_text().splitlines()
                 if line.split(":", 1)[0].strip() == "model name"}
        assert a.hardware["cpu"] in names
    assert a.hardware["cpu"] and a.hardware["cpu"] != "unknown"
    assert a.hardware["cpu_capability"] == torch.backends.cpu.get_cpu_capability()
    assert "gpu" not in a.hardware
    assert RunResult.from_dict(json.loads(json.dumps(a.to_dict()))).hardware == a.hardware


@pytest.mark.slow
@pytest.mark.parametrize("residual", ["baseline", "block-s2"])
def test_tiny_model_learns_python_bytes(residual):
    model = ModelConfig(vocab_size=256, n_layers=2, d_model=64, n_heads=4, seq_len=64, residual=preset(residual))
    cfg = RunConfig(model=model, tokens=None, steps=300, batch_size=16, lr=1e-2, val_every=100, diagnostics_every=300)
    result = run(cfg)
    assert result.val_curve[0][1] > result.final_val_loss
    assert result.final_val_loss < 3.5 < math.log(256)
    assert result.final_val_bpb == pytest.approx(result.final_val_loss / math.log(2))


def test_resume_mid_run_matches_an_uninterrupted_run(tmp_path):
    """Muon + AdamW, so the combined optimizer's state and schedule survive the restart."""

    class Crash(L.Callback):
        def on_train_batch_end(self, trainer, *args):
            if trainer.global_step == 25:
                raise RuntimeError("simulated preemption")

    cfg = dict(optimizer="muon", out_dir=str(tmp_path / "run"), ckpt_every=10)
    straight = run(tiny("block-s2", optimizer="muon"))
    with pytest.raises(RuntimeError, match="preemption"):
        run(tiny("block-s2", **cfg), callbacks=[Crash()])
    assert (tmp_path / "run" / "checkpoints" / "last.ckpt").exists()
    resumed = run(tiny("block-s2", resume=True, **cfg))
    assert resumed.resumed_from_step == 20
    assert resumed.val_curve == straight.val_curve  # including the step-20 point Lightning skips
    assert resumed.final_val_loss == straight.final_val_loss
    snapshots = json.loads((tmp_path / "run" / "diagnostics.json").read_text())["snapshots"]
    assert [s["step"] for s in snapshots] == [10, 20, 30]


def test_resume_with_a_different_model_is_refused(tmp_path):
    out = str(tmp_path / "run")
    run(tiny(out_dir=out, ckpt_every=10, steps=10))
    with pytest.raises(ValueError, match="different model"):
        run(tiny("block-s2", out_dir=out, ckpt_every=10, steps=10, resume=True))


def test_non_finite_loss_raises_with_the_step():
    class Poison(L.Callback):
        def on_train_batch_start(self, trainer, pl_module, batch, batch_idx):
            if trainer.global_step == 3:
                with torch.no_grad():
                    pl_module.model.head.weight.fill_(float("nan"))

    with pytest.raises(NonFiniteLoss, match=r"nan at step 3") as info:
        run(tiny(), callbacks=[Poison()])
    assert isinstance(info.value, ValueError) and info.value.step == 3


def test_callbacks_see_val_loss_at_global_steps():
    """What an Optuna pruning callback relies on."""

    class Spy(L.Callback):
        seen: list[tuple[int, float]] = []

        def on_validation_end(self, trainer, pl_module):
            self.seen.append((trainer.global_step, float(trainer.callback_metrics["val_loss"])))

    spy = Spy()
    result = run(tiny(steps=25), callbacks=[spy])
    assert [s for s, _ in spy.seen] == [10, 20, 25]  # the last step is always validated
    assert [pytest.approx(v) for _, v in spy.seen] == [v for _, v in result.val_curve]


def test_result_fields_and_run_json(tmp_path):
    cfg = tiny("block-s2", tokens=8 * 32 * 12, steps=None, out_dir=str(tmp_path))
    result = run(cfg)
    assert result.steps == 12 and result.tokens == 12 * 8 * 32
    assert result.params_total > result.params_non_embedding > 0
    assert result.flops_total == pytest.approx(result.flops_per_token * result.tokens)
    assert result.tokens_per_s > 0 and result.wall_time_s > 0
    assert result.best_val_loss <= result.final_val_loss
    assert result.val_curve[-1][0] == 12 and len(result.train_curve) == 12
    assert {"torch", "lightning", "python"} <= set(result.versions)
    assert result.device_name == "cpu" and result.resumed_from_step is None
    saved = json.loads((tmp_path / "run.json").read_text())
    assert RunResult.from_dict(saved).final_val_loss == result.final_val_loss
    assert RunConfig.from_dict(saved["config"]) == cfg
    assert (tmp_path / "diagnostics.json").exists() and result.diagnostics_path == str(tmp_path / "diagnostics.json")


def test_run_leaves_global_torch_flags_alone():
    before = torch.are_deterministic_algorithms_enabled()
    run(tiny(steps=2, val_every=2))
    assert torch.are_deterministic_algorithms_enabled() == before


@pytest.mark.parametrize(
    ("overrides", "message"),
    [
        (dict(optimizer="sgd"), "optimizer must be one of"),
        (dict(schedule="linear"), "schedule must be one of"),
        (dict(data="text:/nonexistent/file.txt"), "does not exist"),
        (dict(data="unknown-source"), "unknown data source"),
        (dict(tokens=10), "less than one step"),
        (dict(steps=None), "token budget"),
        (dict(warmup_frac=0.9, decay_frac=0.5), "sum to at most 1"),
        (dict(ckpt_every=5), "out_dir"),
        (dict(val_every=0), "val_every"),
    ],
)
def test_bad_input_is_a_value_error(overrides, message):
    with pytest.raises(ValueError, match=message):
        run(tiny(**overrides))


def test_model_vocab_must_cover_the_data(tmp_path):
    import numpy as np

    from attnres_search.training.data import write_shard

    for name in ("a.bin", "b.bin"):
        write_shard(tmp_path / name, np.zeros(1000, dtype=np.uint16))
    with pytest.raises(ValueError, match="vocabulary 50304"):
        run(tiny(data=f"shards:{tmp_path}/*.bin"))


def test_token_budget_wins_over_steps():
    assert resolve_steps(tiny(tokens=8 * 32 * 7, steps=100)) == 7


def test_schedules():
    wsd = Schedule("wsd", total_steps=100, warmup_steps=10, decay_steps=20)
    assert wsd(0) == pytest.approx(0.1) and wsd(9) == 1.0 and wsd(50) == 1.0
    assert wsd(80) == 1.0 and 0 < wsd(99) < wsd(90) < 1.0
    cos = Schedule("cosine", total_steps=100, warmup_steps=10, decay_steps=0)
    assert cos(10) == 1.0 and cos(55) == pytest.approx(0.5) and cos(99) < 0.01


def test_muon_takes_matrices_and_adamw_the_rest():
    model = AttnResLM(tiny("block-s2").model)
    opt = build_optimizer(model, tiny("block-s2", optimizer="muon"))
    muon, adamw = opt.parts
    assert isinstance(opt, CombinedOptimizer) and isinstance(muon, torch.optim.Muon)
    hidden = {id(p) for p in model.param_kinds()["hidden"]}
    assert {id(p) for g in muon.param_groups for p in g["params"]} == hidden
    no_decay = [g for g in adamw.param_groups if g["weight_decay"] == 0.0][0]
    residual = {id(p) for p in model.residual.parameters()}
    assert residual and residual <= {id(p) for p in no_decay["params"]}
    n_params = sum(1 for _ in model.parameters())
    assert sum(len(g["params"]) for g in opt.param_groups) == n_params
