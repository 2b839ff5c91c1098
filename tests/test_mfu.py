"""Issue 20, item 2: model FLOPs utilisation in ``bench step`` and ``train``: training
FLOPs per second over the device's dense bf16 peak (a table of common GPUs, or
``--peak-tflops``); a CPU reports it only with a given peak."""

from __future__ import annotations

import json

import pytest

from attnres_search.training.config import RunResult
from attnres_search.training.mfu import Peak, achieved_tflops, device_peak, mfu, mfu_text, run_mfu, table_peak
from cli_runner import cli


@pytest.mark.parametrize("name, label, tflops", [
    ("NVIDIA H100 80GB HBM3", "H100 SXM", 989.0), ("NVIDIA H100 PCIe", "H100 PCIe", 756.0),
    ("NVIDIA H100 NVL", "H100 NVL", 835.0), ("NVIDIA H200", "H200", 989.0), ("NVIDIA GH200 480GB", "GH200", 989.0),
    ("NVIDIA A100-SXM4-80GB", "A100", 312.0), ("NVIDIA A100 80GB PCIe", "A100", 312.0), ("NVIDIA A10G", "A10G", 70.0),
    ("NVIDIA A10", "A10", 125.0), ("NVIDIA L4", "L4", 121.0), ("NVIDIA L40S", "L40S", 362.0),
    ("NVIDIA GeForce RTX 4090", "RTX 4090", 165.2),
])
def test_known_gpus_get_their_dense_bf16_peak(name: str, label: str, tflops: float) -> None:
    assert table_peak(name) == Peak(tflops, f"table: {label}")


def test_the_peak_comes_from_the_flag_the_table_or_nowhere() -> None:
    assert device_peak("cuda", "NVIDIA H200", None) == Peak(989.0, "table: H200")
    assert device_peak("cuda", "NVIDIA H200", 500.0) == Peak(500.0, "--peak-tflops")
    assert device_peak("cuda", "Tesla K80", None) is None  # not in the table: no guess
    assert device_peak("cpu", "cpu", None) is None  # no datasheet figure for a CPU
    assert device_peak("cpu", "cpu", 2.0) == Peak(2.0, "--peak-tflops")


def test_mfu_arithmetic() -> None:
    assert achieved_tflops(1e9, 2e5) == pytest.approx(200.0)  # 1 GFLOP a token, 200k tokens/s
    assert mfu(1e9, 2e5, Peak(1000.0, "x")) == pytest.approx(0.2)
    assert mfu(1e9, 2e5, Peak(1000.0, "x"), devices=4) == pytest.approx(0.05)  # tokens/s counted over all ranks
    assert mfu_text(0.2022, Peak(989.0, "table: H200")) == "20.2% of 989 TFLOP/s (table: H200)"
    assert mfu_text(None, None) == ""
    assert run_mfu(1e9, 2e5, "NVIDIA H200", 1, None) == (Peak(989.0, "table: H200"), pytest.approx(200 / 989))
    assert run_mfu(1e9, 2e5, "cpu", 1, None) == (None, None)


def test_bench_rows_carry_tflops_and_mfu() -> None:
    from attnres_search.bench.step import variant_rows

    times = {"baseline": [10.0, 10.0, 10.0], "full": [20.0, 20.0, 20.0]}
    rows = {r["preset"]: r for r in variant_rows(times, {"baseline": 1e12, "full": 1.1e12}, Peak(1000.0, "x"))}
    assert rows["baseline"]["tflops"] == pytest.approx(100.0)  # 1e12 FLOPs in 10 ms
    assert rows["baseline"]["mfu"] == pytest.approx(0.1)
    assert rows["full"]["tflops"] == pytest.approx(55.0) and rows["full"]["mfu"] == pytest.approx(0.055)
    assert variant_rows(times, {"baseline": 1e12, "full": 1e12}, None)[0]["mfu"] is None


TINY = ["--layers", "2", "--width", "16", "--heads", "2", "--seq-len", "8", "--batch-size", "2",
        "--warmup", "0", "--repeats", "2", "--threads", "1", "--no-loops"]


def test_bench_step_mfu_with_a_given_peak_and_none_on_a_cpu_without(monkeypatch: pytest.MonkeyPatch,
                                                                  capsys: pytest.CaptureFixture) -> None:
    from attnres_search.model.config import ModelConfig, preset
    from attnres_search.model.flops import flops_per_token

    code, out, err = cli(["bench", "step", *TINY, "--json", "--peak-tflops", "0.5"], monkeypatch, capsys)
    assert code == 0, err
    result = json.loads(out)
    assert (result["peak_tflops"], result["peak_source"]) == (0.5, "--peak-tflops")
    for row in result["rows"]:
        model = ModelConfig(vocab_size=256, n_layers=2, d_model=16, n_heads=2, seq_len=8, residual=preset(row["preset"]))
        flops = flops_per_token(model)["train"] * 2 * 8  # per step: B x T tokens
        assert row["tflops"] == pytest.approx(flops / (row["ms"] / 1e3) / 1e12)
        assert row["mfu"] == pytest.approx(row["tflops"] / 0.5)
    code, out, err = cli(["bench", "step", *TINY, "--peak-tflops", "0.5"], monkeypatch, capsys)
    assert code == 0, err
    assert "MFU (peak 0.5, --peak-tflops)" in out and "baseline MFU: " in out
    line = next(line for line in out.splitlines() if line.startswith("baseline MFU: "))
    assert line.endswith("% of 0.5 TFLOP/s (--peak-tflops)")
    code, out, err = cli(["bench", "step", *TINY], monkeypatch, capsys)
    assert code == 0, err
    assert "MFU" not in out and "TFLOP/s" in out
    code, _, err = cli(["bench", "step", *TINY, "--peak-tflops", "0"], monkeypatch, capsys)
    assert code == 2 and "--peak-tflops" in err


def _result(device_name: str, tokens_per_s: float = 2e5, flops_per_token: float = 1e9) -> RunResult:
    return RunResult(config={"devices": 1}, params_total=10, params_non_embedding=8, flops_per_token=flops_per_token,
                     flops_total=0.0, tokens=0, steps=0, tokens_per_s=tokens_per_s, wall_time_s=1.0,
                     final_val_loss=1.0, best_val_loss=1.0, device_name=device_name)


def _rows(table: object) -> dict[str, str]:
    """The table as printed: name -> value."""
    import io

    from rich.console import Console

    buffer = io.StringIO()
    Console(file=buffer, width=200).print(table)
    cells = [[c.strip() for c in line.split("│")[1:-1]] for line in buffer.getvalue().splitlines() if "│" in line]
    return {c[0]: c[1] for c in cells}


def test_train_table_prints_mfu_for_a_known_gpu_and_a_given_peak_only() -> None:
    from attnres_search.cli.train_cmd import _summary_table

    rows = _rows(_summary_table(_result("NVIDIA H200")))
    assert rows["training TFLOP/s"] == "200" and rows["MFU"] == "20.2% of 989 TFLOP/s (table: H200)"
    assert "MFU" not in _rows(_summary_table(_result("cpu")))
    assert _rows(_summary_table(_result("cpu"), 0.4))["MFU"] == "50000.0% of 0.4 TFLOP/s (--peak-tflops)"


def test_train_json_mfu(monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture) -> None:
    args = ["train", "--layers", "1", "--width", "16", "--heads", "2", "--seq-len", "16", "--batch-size", "4",
            "--steps", "4", "--val-every", "4", "--val-windows", "2", "--json"]
    code, out, err = cli([*args, "--peak-tflops", "0.001"], monkeypatch, capsys)
    assert code == 0, err
    result = json.loads(out)
    assert result["tflops"] == pytest.approx(result["flops_per_token"] * result["tokens_per_s"] / 1e12)
    assert result["mfu"] == pytest.approx(result["tflops"] / 0.001)
    assert (result["peak_tflops"], result["peak_source"]) == (0.001, "--peak-tflops")
    code, out, err = cli(args, monkeypatch, capsys)
    assert code == 0, err
    result = json.loads(out)
    assert result["mfu"] is None and result["peak_tflops"] is None and result["tflops"] > 0
