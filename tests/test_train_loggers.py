"""Lightning loggers: ``train --logger ...`` and ``train.logger`` in a space write runs that
TensorBoard, a CSV reader, W&B (offline) and MLflow (a local store) read back with the
run's hyperparameters, loss curves, throughput, diagnostics and summary. W&B and MLflow are
optional extras: their tests skip, saying so, where the packages are not installed."""

from __future__ import annotations

import csv
import importlib.util
import json
import os
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import yaml
from click.testing import CliRunner

from attnres_search.cli.train_cmd import train
from attnres_search.errors import BadInput
from attnres_search.training.config import RunConfig, RunResult
from attnres_search.training.loggers import check_loggers
from tests.cli_runner import cli

TINY = ["--layers", "1", "--width", "32", "--heads", "2", "--seq-len", "32", "--batch-size", "8",
        "--val-every", "10", "--val-windows", "8", "--diagnostics-every", "10"]
EXTRAS = [name for name in ("wandb", "mlflow") if importlib.util.find_spec(name) is not None]
RUN = "block-s2-seed3"


def _isolated_env(root: Path) -> dict[str, str | None]:
    """W&B and MLflow settings a developer's shell may carry are hidden from the run; W&B's
    caches go under ``root``. Returns what was there, for :func:`_restore`."""
    names = ("WANDB_MODE", "WANDB_API_KEY", "WANDB_BASE_URL", "MLFLOW_TRACKING_URI", "WANDB_DIR",
             "WANDB_CONFIG_DIR", "WANDB_CACHE_DIR", "WANDB_DATA_DIR")
    saved = {name: os.environ.pop(name, None) for name in names}
    for name in ("WANDB_CONFIG_DIR", "WANDB_CACHE_DIR", "WANDB_DATA_DIR"):
        os.environ[name] = str(root / name.lower())
    return saved


def _restore(saved: dict[str, str | None]) -> None:
    for name, value in saved.items():
        if value is None:
            os.environ.pop(name, None)
        else:
            os.environ[name] = value


@pytest.fixture(scope="module")
def logged_run(tmp_path_factory: pytest.TempPathFactory) -> Iterator[tuple[Path, dict[str, Any]]]:
    """One real 30-step run logging to every logger installed here: (its folder, run.json)."""
    root = tmp_path_factory.mktemp("logged")
    saved = _isolated_env(root)
    try:
        loggers = [arg for name in ["tensorboard", "csv", *EXTRAS] for arg in ("--logger", name)]
        result = CliRunner().invoke(train, [*TINY, "--preset", "block-s2", "--steps", "30", "--seed", "3",
                                            "--out", str(root / "run"), "--json", *loggers])
        assert result.exit_code == 0, result.output
        yield root / "run", json.loads((root / "run" / "run.json").read_text())
    finally:
        _restore(saved)


def _csv_rows(path: Path) -> list[dict[str, float]]:
    with path.open(newline="") as f:
        return [{k: float(v) for k, v in row.items() if v != ""} for row in csv.DictReader(f)]


def test_csv_logger_holds_the_curves_throughput_diagnostics_and_summary(logged_run) -> None:
    out, record = logged_run
    folder = out / "logs" / "csv" / RUN
    rows = _csv_rows(folder / "metrics.csv")
    # Lightning logs at the index of the step just taken: global step s is logged at s - 1.
    val = {int(r["step"]) + 1: r["val_loss"] for r in rows if "val_loss" in r}
    assert val == pytest.approx(dict(map(tuple, record["val_curve"])), rel=1e-6)
    train_curve = dict(map(tuple, record["train_curve"]))
    logged_train = {int(r["step"]): r["train_loss"] for r in rows if "train_loss" in r}
    assert sorted(logged_train) == [9, 19, 29]
    for step, loss in logged_train.items():  # the loss of that very step, not a stale one
        assert loss == pytest.approx(train_curve[step], rel=1e-6)
    rates = [r["train/device/items_per_sec"] for r in rows if "train/device/items_per_sec" in r]
    assert rates and all(rate > 0 for rate in rates)
    diag = [r for r in rows if "diagnostics/output_rms/attn1" in r]
    assert [int(r["step"]) + 1 for r in diag] == [10, 20, 30]
    assert diag[-1]["diagnostics/grad_norm/mlp1"] == pytest.approx(record["diagnostics_summary"]["grad_norm"][1])
    assert diag[-1]["diagnostics/alpha_head/b0"] + diag[-1]["diagnostics/alpha_head/b1"] == pytest.approx(1.0)
    summary = next(r for r in rows if "summary/final_val_loss" in r)
    assert summary["summary/final_val_loss"] == pytest.approx(record["final_val_loss"])
    assert summary["summary/tokens_per_s"] == pytest.approx(record["tokens_per_s"])
    assert summary["summary/params_total"] == record["params_total"]
    params = yaml.safe_load((folder / "hparams.yaml").read_text())
    assert params["model.residual.kind"] == "block" and params["seed"] == 3 and params["run_name"] == RUN


def test_tensorboard_logger_holds_the_same_numbers(logged_run) -> None:
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    out, record = logged_run
    folder = out / "logs" / "tensorboard" / RUN
    events = EventAccumulator(str(folder))
    events.Reload()
    tags = set(events.Tags()["scalars"])
    assert {"train_loss", "val_loss", "train/device/items_per_sec", "diagnostics/output_rms/attn1",
            "summary/final_val_loss", "summary/tokens_per_s"} <= tags
    val = {e.step + 1: e.value for e in events.Scalars("val_loss")}
    assert val == pytest.approx(dict(map(tuple, record["val_curve"])), rel=1e-6)
    assert events.Scalars("summary/final_val_loss")[0].value == pytest.approx(record["final_val_loss"], rel=1e-6)
    params = yaml.safe_load((folder / "hparams.yaml").read_text())
    assert params["model.d_model"] == 32 and params["optimizer"] == "adamw"


def _near(blob: bytes, key: str, value: Any) -> bool:
    """W&B's offline transaction log stores each config item or metric as its key followed
    by the value as JSON: ``value`` is written right after ``key``."""
    at = blob.find(key.encode())
    return at >= 0 and 0 < blob.find(json.dumps(value).encode(), at) - at < len(key) + 16


def test_wandb_offline_run_holds_config_and_summary(logged_run) -> None:
    if "wandb" not in EXTRAS:
        pytest.skip("wandb is not installed (pip install 'attnres-search[wandb]')")
    out, record = logged_run
    runs = list((out / "logs" / "wandb").glob("offline-run-*"))
    assert len(runs) == 1, "W&B must run offline unless WANDB_MODE=online is set"
    (log,) = runs[0].glob("run-*.wandb")
    blob = log.read_bytes()
    assert _near(blob, "model.residual.kind", "block") and _near(blob, "seed", 3)
    assert RUN.encode() in blob
    assert _near(blob, "summary/final_val_loss", record["final_val_loss"])
    assert _near(blob, "val_loss", record["val_curve"][0][1])


def test_mlflow_local_store_holds_params_and_loss_history(logged_run) -> None:
    if "mlflow" not in EXTRAS:
        pytest.skip("mlflow is not installed (pip install 'attnres-search[mlflow]')")
    from mlflow.tracking import MlflowClient

    out, record = logged_run
    client = MlflowClient(tracking_uri=f"sqlite:///{out / 'logs' / 'mlflow.db'}")
    experiment = client.get_experiment_by_name("attnres-search")
    (run,) = client.search_runs([experiment.experiment_id])
    assert run.info.run_name == RUN and run.info.status == "FINISHED"
    assert run.data.params["model.residual.kind"] == "block"
    history = {m.step + 1: m.value for m in client.get_metric_history(run.info.run_id, "val_loss")}
    assert history == pytest.approx(dict(map(tuple, record["val_curve"])), rel=1e-6)
    assert run.data.metrics["summary/final_val_loss"] == pytest.approx(record["final_val_loss"], rel=1e-6)


def test_a_resumed_run_keeps_the_earlier_csv(tmp_path: Path) -> None:
    args = [*TINY, "--steps", "20", "--out", str(tmp_path / "run"), "--logger", "csv", "--quiet",
            "--ckpt-every", "10"]
    assert CliRunner().invoke(train, args).exit_code == 0
    first = (tmp_path / "run" / "logs" / "csv" / "baseline-seed0" / "metrics.csv").read_bytes()
    result = CliRunner().invoke(train, [*args[:-2], "--resume", "--steps", "20", "--ckpt-every", "10"])
    assert result.exit_code == 0, result.output
    assert (tmp_path / "run" / "logs" / "csv" / "baseline-seed0" / "metrics.csv").read_bytes() == first
    assert (tmp_path / "run" / "logs" / "csv" / "baseline-seed0.2" / "metrics.csv").is_file()


def test_unknown_or_missing_logger_is_bad_input(monkeypatch: pytest.MonkeyPatch, capsys, tmp_path: Path) -> None:
    code, _, err = cli(["train", *TINY, "--steps", "2", "--logger", "neptune"], monkeypatch, capsys)
    assert code == 2 and "neptune" in err
    with pytest.raises(BadInput, match="given twice"):
        check_loggers(["csv", "csv"])
    real = importlib.util.find_spec
    monkeypatch.setattr(importlib.util, "find_spec", lambda name, *a: None if name == "wandb" else real(name, *a))
    code, _, err = cli(["train", *TINY, "--steps", "2", "--logger", "wandb", "--out", str(tmp_path / "r")],
                       monkeypatch, capsys)
    assert code == 2 and err.count("\n") == 1 and "pip install 'attnres-search[wandb]'" in err, err
    assert not (tmp_path / "r").exists()


def test_a_study_trial_logs_one_run_named_after_study_cell_and_seed(tmp_path: Path, monkeypatch, capsys) -> None:
    monkeypatch.chdir(tmp_path)
    (tmp_path / "lg.yaml").write_text(
        "model: {n_layers: 1, d_model: 16, n_heads: 2, seq_len: 16}\n"
        "train: {tokens: 640, batch_size: 4, val_every: 5, val_windows: 2, diagnostics_every: 5, logger: csv}\n"
        "variants: [baseline]\nseeds: [7]\n")
    code, _, err = cli(["study", "start", "lg.yaml", "--quiet"], monkeypatch, capsys)
    assert code == 0, err
    folder = tmp_path / "runs" / "lg" / "csv" / "lg-variant=baseline-seed=7"
    rows = _csv_rows(folder / "metrics.csv")
    assert [r["val_loss"] for r in rows if "val_loss" in r]
    params = yaml.safe_load((folder / "hparams.yaml").read_text())
    assert params["run_name"] == "lg variant=baseline seed=7" and params["experiment"] == "lg"
    assert params["seed"] == 7


def test_a_space_with_an_unknown_logger_fails_before_any_storage(tmp_path: Path, monkeypatch, capsys) -> None:
    monkeypatch.chdir(tmp_path)
    (tmp_path / "bad.yaml").write_text("model: {n_layers: 1, d_model: 16, n_heads: 2, seq_len: 16}\n"
                                       "train: {tokens: 640, batch_size: 4, logger: [csv, tensorbored]}\n"
                                       "variants: [baseline]\n")
    code, _, err = cli(["study", "start", "bad.yaml"], monkeypatch, capsys)
    assert code == 2 and "tensorbored" in err and err.count("\n") == 1, err
    assert not (tmp_path / "studies.db").exists()


def test_logger_fields_do_not_change_what_a_run_resumes_from() -> None:
    from attnres_search.study.attempts import fingerprint
    from attnres_search.training.lit_module import RESUME_FREE_FIELDS

    plain = RunConfig().to_dict()
    logged = RunConfig(logger=["csv"], run_name="x", experiment="y", log_dir="/tmp/z").to_dict()
    assert fingerprint("s", plain, RESUME_FREE_FIELDS) == fingerprint("s", logged, RESUME_FREE_FIELDS)


def test_summary_mfu_where_the_peak_is_known() -> None:
    from attnres_search.training import mfu as mfu_table
    from attnres_search.training.loggers import summary_metrics

    def result(device: str, **config: Any) -> RunResult:
        return RunResult(config={"devices": 2, **config}, params_total=1, params_non_embedding=1,
                         flops_per_token=6e9, flops_total=1.0, tokens=1, steps=1, tokens_per_s=5e4, wall_time_s=1.0,
                         final_val_loss=2.0, best_val_loss=2.0, device_name=device)

    peak = mfu_table.table_peak("NVIDIA H200")
    assert peak is not None
    on_gpu = summary_metrics(result("NVIDIA H200"))["summary/mfu"]
    assert on_gpu == pytest.approx(6e9 * 5e4 / (peak.tflops * 1e12 * 2))
    assert "summary/mfu" not in summary_metrics(result("cpu"))  # a CPU has no datasheet peak
    assert summary_metrics(result("cpu", peak_tflops=1.0))["summary/mfu"] == pytest.approx(6e9 * 5e4 / 2e12)
