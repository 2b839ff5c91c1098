"""SIGTERM (a scheduler's preemption) stops a run with status 143, never 0: the last completed
step is checkpointed when checkpointing is on, and run.json says the run was interrupted."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time

import lightning as L
import pytest
import torch

from attnres_search.model.config import ModelConfig
from attnres_search.training.config import RunConfig
from attnres_search.training.run import RunInterrupted, run


def tiny(**overrides) -> RunConfig:
    model = ModelConfig(vocab_size=256, n_layers=1, d_model=32, n_heads=2, seq_len=32)
    fields = dict(model=model, tokens=None, steps=40, batch_size=8, val_every=10, val_windows=8, diagnostics_every=10)
    fields.update(overrides)
    return RunConfig(**fields)


class SigtermAt(L.Callback):
    """Sends this process a real SIGTERM when the given global step has completed."""

    def __init__(self, step: int) -> None:
        self.step = step

    def on_train_batch_end(self, trainer, *args) -> None:
        if trainer.global_step == self.step:
            os.kill(os.getpid(), signal.SIGTERM)


def test_sigterm_checkpoints_marks_the_record_and_resumes_exactly(tmp_path):
    out = tmp_path / "run"
    cfg = dict(out_dir=str(out), ckpt_every=10)
    straight = run(tiny(), progress=False)
    previous = signal.getsignal(signal.SIGTERM)
    with pytest.raises(RunInterrupted) as info:
        run(tiny(**cfg), callbacks=[SigtermAt(25)], progress=False)
    assert signal.getsignal(signal.SIGTERM) == previous  # the handler is put back
    stopped = info.value
    assert isinstance(stopped, SystemExit) and stopped.code == 143
    assert stopped.step == 25 and stopped.total_steps == 40
    assert stopped.checkpoint == out / "checkpoints" / "last.ckpt"
    assert torch.load(stopped.checkpoint, weights_only=False)["global_step"] == 25  # not the step-20 one
    record = json.loads((out / "run.json").read_text())
    assert record["interrupted"] is True and record["steps"] == 25 and record["tokens"] == 25 * 8 * 32
    assert [s for s, _ in record["val_curve"]] == [10, 20]
    assert record["final_val_loss"] == record["val_curve"][-1][1]

    resumed = run(tiny(resume=True, **cfg), progress=False)
    assert resumed.resumed_from_step == 25 and not resumed.interrupted
    assert resumed.val_curve == straight.val_curve
    assert resumed.final_val_loss == straight.final_val_loss
    assert json.loads((out / "run.json").read_text())["interrupted"] is False


def test_sigterm_without_checkpointing_still_records_the_interruption(tmp_path):
    with pytest.raises(RunInterrupted) as info:
        run(tiny(out_dir=str(tmp_path)), callbacks=[SigtermAt(5)], progress=False)
    assert info.value.checkpoint is None and info.value.code == 143
    record = json.loads((tmp_path / "run.json").read_text())
    assert record["interrupted"] is True and record["steps"] == 5
    assert record["final_val_loss"] is None and record["val_curve"] == []  # nothing measured: null, not NaN
    assert not (tmp_path / "checkpoints").exists()


def test_train_command_exits_143_on_sigterm(tmp_path):
    out = tmp_path / "run"
    # ckpt-every beyond the run: the only checkpoint is the one SIGTERM writes.
    args = ["train", "--layers", "1", "--width", "32", "--heads", "2", "--seq-len", "32", "--batch-size", "8",
            "--val-every", "20", "--val-windows", "4", "--steps", "1000000", "--ckpt-every", "1000000",
            "--out", str(out)]
    proc = subprocess.Popen([sys.executable, "-m", "attnres_search", *args], stdout=subprocess.PIPE,
                            stderr=subprocess.PIPE, text=True)
    try:
        first = proc.stderr.readline()  # the first plain progress line: training is under way
        assert first.startswith("train "), first + proc.stderr.read()
        time.sleep(0.5)
        proc.send_signal(signal.SIGTERM)
        stdout, stderr = proc.communicate(timeout=120)
    finally:
        if proc.poll() is None:
            proc.kill()
    assert proc.returncode == 143, stderr
    assert stdout == ""
    error_lines = [line for line in stderr.splitlines() if line.startswith("error:")]
    assert len(error_lines) == 1 and "interrupted by SIGTERM after step" in error_lines[0]
    assert "Traceback" not in stderr
    record = json.loads((out / "run.json").read_text())
    assert record["interrupted"] is True and 1 <= record["steps"] < 1_000_000
    checkpoint = torch.load(out / "checkpoints" / "last.ckpt", weights_only=False)
    assert checkpoint["global_step"] == record["steps"]
