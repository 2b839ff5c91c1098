"""``bench step --json`` and ``bench kernels`` through the CLI at a tiny size: the commands
run and print what they promise (no timing is asserted: the numbers are whatever they are)."""

from __future__ import annotations

import json
import re

import pytest
import torch

from cli_runner import cli

TINY = ["--layers", "2", "--width", "16", "--heads", "2", "--seq-len", "8", "--batch-size", "2",
        "--warmup", "0", "--repeats", "1", "--threads", "1"]  # fmt: skip


def test_bench_step_json_rows_and_ratios(monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture) -> None:
    code, out, err = cli(["bench", "step", *TINY, "--no-loops", "--json"], monkeypatch, capsys)
    assert code == 0, err
    result = json.loads(out)
    assert set(result) == {"device", "shape", "warmup", "repeats", "rows", "loops", "compile_mode", "paths",
                           "peak_tflops", "peak_source"}
    assert result["loops"] is None and result["shape"]["width"] == 16 and result["compile_mode"] is None
    assert result["paths"] is None and result["peak_tflops"] is None  # a CPU has no peak unless given
    rows = {(r["preset"], r["compile"]): r for r in result["rows"]}
    assert set(rows) == {("baseline", False), ("block-s4", False), ("full", False), ("mhc", False)}
    base = rows["baseline", False]["ms"]
    for r in rows.values():
        assert set(r) == {"preset", "path", "compile", "ms", "vs_baseline", "vs_eager_baseline", "vs_baseline_rounds",
                          "tflops", "mfu"}
        assert r["path"] is None and r["mfu"] is None and r["tflops"] > 0
        p25, median, p75 = r["vs_baseline_rounds"]
        assert p25 <= median <= p75
        assert r["ms"] > 0 and r["vs_baseline"] == pytest.approx(r["ms"] / base)
    assert rows["baseline", False]["vs_baseline"] == 1.0


def test_variants_step_through_real_training_batches() -> None:
    """One repeated batch is memorised within a few steps and a faster-fitting variant then
    runs in another numerical regime; every variant instead draws the same first batches
    that ``train`` draws, a different one each step."""
    from attnres_search.bench.step import training_batches, run_config
    from attnres_search.training.data import LMDataModule, load_corpus

    cfg = run_config("baseline", layers=1, width=16, heads=2, seq_len=8, batch_size=2, steps=1)
    got = training_batches(cfg, 3, torch.device("cpu"))
    data = LMDataModule(load_corpus(cfg.data), seq_len=8, batch_size=2, seed=0, val_windows=1)
    want = [b for b, _ in zip(data.train_dataloader(), range(3))]
    assert len(got) == 3
    for (x, y), (wx, wy) in zip(got, want):
        assert x.shape == (2, 8) and torch.equal(x, wx) and torch.equal(y, wy)
    assert not torch.equal(got[0][0], got[1][0])


def test_compiled_rows_are_compared_with_the_compiled_baseline() -> None:
    from attnres_search.bench.step import COMPILED, variant_rows

    times = {"baseline": [10.0, 10.0, 20.0, 10.0, 10.0], "block-s4": [12.0, 11.0, 26.0, 13.0, 12.0],
             "baseline" + COMPILED: [5.0] * 5, "block-s4" + COMPILED: [6.0] * 5}
    rows = {(r["preset"], r["compile"]): r for r in variant_rows(times)}
    assert rows["block-s4", True]["vs_baseline"] == pytest.approx(1.2)
    assert rows["block-s4", True]["vs_eager_baseline"] == pytest.approx(0.6)
    assert rows["block-s4", False]["vs_baseline"] == pytest.approx(1.2)  # medians 12 / 10
    assert rows["baseline", True]["vs_baseline"] == 1.0
    # Paired by round: 1.2, 1.1, 1.3, 1.3, 1.2 -> quartiles (exclusive method) 1.15, 1.2, 1.3.
    assert rows["block-s4", False]["vs_baseline_rounds"] == pytest.approx([1.15, 1.2, 1.3])
    assert rows["baseline", False]["vs_baseline_rounds"] == [1.0, 1.0, 1.0]


# Inductor compiles 4 models for --compile: minutes of CPU on a 2-core machine, seconds on a GPU.
@pytest.mark.slow
@pytest.mark.skipif(not torch.cuda.is_available(), reason="--compile rows are exercised on a GPU (CPU Inductor takes minutes)")
def test_bench_step_json_with_compile_and_loops(monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture) -> None:
    args = ["bench", "step", *TINY, "--block", "block-s2", "--compile", "--loop-steps", "3", "--rounds", "1", "--json"]
    code, out, err = cli(args, monkeypatch, capsys)
    assert code == 0, err
    result = json.loads(out)
    rows = {(r["preset"], r["compile"]): r for r in result["rows"]}
    assert set(rows) == {(p, c) for p in ("baseline", "block-s2", "full", "mhc") for c in (False, True)}
    compiled_base = rows["baseline", True]["ms"]
    for (preset, compiled), r in rows.items():
        assert r["vs_baseline"] == pytest.approx(r["ms"] / (compiled_base if compiled else rows["baseline", False]["ms"]))
    assert set(result["loops"]) == {"bare_ms", "lightning_ms", "lightning_vs_bare", "lightning_vs_bare_rounds"}


def test_bench_step_loops_json_and_table(monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture) -> None:
    """The loop comparison through the CLI: JSON medians, ratio and per-round quartiles
    (one round: one paired ratio), and the table's per-round column."""
    args = ["bench", "step", *TINY, "--loop-steps", "3", "--rounds", "1"]
    code, out, err = cli([*args, "--json"], monkeypatch, capsys)
    assert code == 0, err
    loops = json.loads(out)["loops"]
    assert loops["lightning_vs_bare"] == pytest.approx(loops["lightning_ms"] / loops["bare_ms"])
    p25, median, p75 = loops["lightning_vs_bare_rounds"]
    assert p25 == median == p75 == pytest.approx(loops["lightning_vs_bare"])
    code, out, err = cli(args, monkeypatch, capsys)
    assert code == 0, err
    cells = [c.strip() for c in next(line for line in out.splitlines() if "Lightning" in line).split("│")]
    ratio, rounds = cells[3], cells[4]  # the second run's own figures
    assert rounds.split(" / ") == [ratio.rstrip("x")] * 3


def test_bench_step_bad_input_is_exit_2(monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture) -> None:
    code, _, err = cli(["bench", "step", *TINY, "--loop-steps", "3", "--warmup", "5"], monkeypatch, capsys)
    assert code == 2 and "--loop-steps" in err


def test_bench_step_compiles_in_the_mode_asked(monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture) -> None:
    """``--compile-mode reduce-overhead`` (CUDA graphs) reaches ``torch.compile`` for every
    compiled row; compiling itself is stubbed (CPU Inductor takes minutes)."""
    modes: list[str | None] = []
    monkeypatch.setattr(torch.nn.Module, "compile", lambda self, *a, **k: modes.append(k.get("mode")))
    args = ["bench", "step", *TINY, "--no-loops", "--json", "--compile", "--compile-mode", "reduce-overhead"]
    code, out, err = cli(args, monkeypatch, capsys)
    assert code == 0, err
    assert modes == ["reduce-overhead"] * 4
    assert json.loads(out)["compile_mode"] == "reduce-overhead"
    code, _, err = cli(["bench", "step", *TINY, "--compile-mode", "fast"], monkeypatch, capsys)
    assert code == 2 and "fast" in err


def test_loop_summary_medians_and_per_round_ratios() -> None:
    """Medians over every round's steps, and the quartiles of each round's paired ratio
    (Lightning's median over the bare loop's median in the same round)."""
    from attnres_search.bench.step import loop_summary

    bare = [[10.0, 10.0, 12.0], [20.0, 20.0, 20.0], [10.0, 11.0, 10.0], [10.0, 10.0, 10.0]]
    lightning = [[11.0, 11.0, 11.0], [20.0, 22.0, 22.0], [10.0, 10.0, 10.0], [13.0, 13.0, 13.0]]
    s = loop_summary({"bare": bare, "lightning": lightning})
    assert s["bare_ms"] == 10.0 and s["lightning_ms"] == 12.0 and s["lightning_vs_bare"] == 1.2
    # per round: 1.1, 1.1, 1.0, 1.3; quartiles (exclusive method) 1.025 / 1.1 / 1.25
    assert s["lightning_vs_bare_rounds"] == pytest.approx([1.025, 1.1, 1.25])


def _parse_cli_call(args: list[str]) -> str:
    """Parse ``attnres-search ARGS`` as click would (command names; options' names, types,
    choices: ``click.UsageError`` otherwise) without running it; returns the command path.
    The groups on the way take no options of their own."""
    import click

    from attnres_search.cli import cli

    command: click.Command = cli
    path: list[str] = []
    while isinstance(command, click.Group):
        name, *args = args
        command = command.commands[name]
        path.append(name)
    command.make_context(path[-1], list(args))
    return " ".join(path)


CHECKS = ["env", "kernel_tests", "bench_eager", "profile", "bench_cudagraphs", "two_workers_study", "two_workers",
          "ddp_gloo_study", "ddp_gloo", "ddp_one_gpu", "multi_summary"]
CHECK_CALLS = ["bench step", "bench profile", "bench step", "study start", "worker", "worker", "study start", "worker", "train"]
STUDY = ["study_start", "study_grow", "study_status", "report", "report_json"]
STUDY_CALLS = ["study start", "study extend", "study status", "report", "report"]


@pytest.mark.parametrize("mode", [{"QUICK": "0"}, {"QUICK": "1"}, {"STUDY": "1"}, {"STUDY": "only"},
                                  {"QUICK": "1", "STUDY": "1"}], ids=["gpu", "quick", "study", "study-only", "quick-study"])
def test_gpu_check_script_calls_the_cli_with_options_it_accepts(tmp_path, mode: dict[str, str]) -> None:
    """``scripts/gpu_check.sh`` runs only on lent GPUs, where a renamed option would waste the
    loan: run it with a stand-in interpreter that records its arguments, then let click
    parse every CLI call the script made (names, types, choices, durations)."""
    import os
    import subprocess
    import sys
    from pathlib import Path

    root = Path(__file__).resolve().parents[1]
    log = tmp_path / "calls.jsonl"
    fake = tmp_path / "python"
    fake.write_text(f"#!/bin/sh\nexec {sys.executable} -c 'import json, sys; "
                    f"open(sys.argv[1], \"a\").write(json.dumps(sys.argv[2:]) + \"\\n\")' {log} \"$@\"\n")
    fake.chmod(0o755)
    env = {**os.environ, "PYTHON": str(fake), "OUT": str(tmp_path / "out"), "COMMITTED": "/nonexistent", **mode}
    done = subprocess.run(["bash", str(root / "scripts" / "gpu_check.sh")], env=env, capture_output=True, text=True,
                          timeout=120)
    assert done.returncode == 0, done.stderr
    calls = [json.loads(line) for line in log.read_text().splitlines()]
    commands = [_parse_cli_call(c[2:]) for c in calls if c[:2] == ["-m", "attnres_search"]]
    log_lines = (tmp_path / "out" / "log.txt").read_text().splitlines()
    steps = [line.split(":")[0] for line in log_lines if re.match(r"\w+: rc \d+ in \d+ s", line)]
    checks = mode.get("STUDY") != "only"
    study = mode.get("STUDY") in ("1", "only")
    assert commands == (CHECK_CALLS if checks else []) + (STUDY_CALLS if study else [])
    assert steps == (CHECKS if checks else ["env"]) + (STUDY if study else [])
    assert any(c[:2] == ["-m", "pytest"] for c in calls) == checks
    name = "quick_design" if mode.get("QUICK") == "1" else "gpu_study"
    grows = [c for c in calls if c[2:6] == ["study", "extend", name, "--until-decided"]]
    assert len(grows) == (1 if study else 0)
    for grow in grows:  # the time left, in seconds, never more than the window
        limit = grow[grow.index("--time-limit") + 1]
        assert limit.endswith("s") and 0 < int(limit[:-1]) <= 540
    if study:
        assert "study: checkpoints kept for the next window: 0" in log_lines


def test_bench_step_times_the_training_paths_side_by_side(monkeypatch: pytest.MonkeyPatch,
                                                          capsys: pytest.CaptureFixture) -> None:
    """``--path fused`` trains AttnRes through the fused kernel and ``--path block-cache``
    through the block cache, whatever backend is in force; each row is compared with the
    baseline on its own path."""
    from attnres_search.kernels import block_cache, fused

    calls = {"fused": 0, "cache": 0}
    real_fused, real_open = fused.fused_depth_attention, block_cache.BlockCache.open_block

    def counted_fused(*args: object, **kwargs: object) -> object:
        calls["fused"] += 1
        return real_fused(*args, **kwargs)

    def counted_open(self: object, *args: object, **kwargs: object) -> object:
        calls["cache"] += 1
        return real_open(self, *args, **kwargs)

    monkeypatch.setattr(fused, "fused_depth_attention", counted_fused)
    monkeypatch.setattr(block_cache.BlockCache, "open_block", counted_open)
    seen = {}
    for path in ("block-cache", "fused"):  # the fused kernel runs in Triton's interpreter here (conftest)
        calls.update(fused=0, cache=0)
        code, out, err = cli(["bench", "step", *TINY, "--no-loops", "--json", "--path", path], monkeypatch, capsys)
        assert code == 0, err
        seen[path] = dict(calls)
        result = json.loads(out)
        assert result["paths"] == [path]
        rows = {(r["preset"], r["path"]): r for r in result["rows"]}
        assert set(rows) == {(p, path) for p in ("baseline", "block-s4", "full", "mhc")}
        for r in rows.values():
            assert r["vs_baseline"] == pytest.approx(r["ms"] / rows["baseline", path]["ms"]) and not r["compile"]
    assert seen["block-cache"]["cache"] > 0 and seen["block-cache"]["fused"] == 0
    assert seen["fused"]["fused"] > 0 and seen["fused"]["cache"] == 0


def test_bench_step_cudagraphs_path_compiles_with_cuda_graphs(monkeypatch: pytest.MonkeyPatch,
                                                              capsys: pytest.CaptureFixture) -> None:
    modes: list[str | None] = []
    monkeypatch.setattr(torch.nn.Module, "compile", lambda self, *a, **k: modes.append(k.get("mode")))
    code, out, err = cli(["bench", "step", *TINY, "--no-loops", "--json", "--path", "cudagraphs", "--path",
                          "block-cache"], monkeypatch, capsys)
    assert code == 0, err
    assert modes == ["reduce-overhead"] * 4
    rows = {(r["preset"], r["path"]): r for r in json.loads(out)["rows"]}
    assert rows["full", "cudagraphs"]["compile"] and not rows["full", "block-cache"]["compile"]
    assert rows["full", "cudagraphs"]["vs_baseline"] == pytest.approx(
        rows["full", "cudagraphs"]["ms"] / rows["baseline", "cudagraphs"]["ms"])
    # The eager baseline of the block-cache path is what "vs eager baseline" divides by.
    assert rows["full", "cudagraphs"]["vs_eager_baseline"] == pytest.approx(
        rows["full", "cudagraphs"]["ms"] / rows["baseline", "block-cache"]["ms"])


def test_bench_step_fused_path_needs_a_kernel_runtime(monkeypatch: pytest.MonkeyPatch,
                                                      capsys: pytest.CaptureFixture) -> None:
    if torch.cuda.is_available():
        pytest.skip("CUDA runs the kernel")
    monkeypatch.delenv("TRITON_INTERPRET", raising=False)
    code, out, err = cli(["bench", "step", *TINY, "--no-loops", "--path", "fused"], monkeypatch, capsys)
    assert code == 2 and out == "" and err.strip().splitlines() == [
        "error: --path fused runs the Triton kernel: it needs CUDA (or TRITON_INTERPRET=1 on a CPU)"]
    code, _, err = cli(["bench", "step", *TINY, "--no-loops", "--path", "block-cache", "--compile"], monkeypatch, capsys)
    assert code == 2 and "--path or --compile" in err


def test_auto_trains_cuda_tensors_on_the_path_one_constant_names(monkeypatch: pytest.MonkeyPatch) -> None:
    """``AUTO_ON_CUDA`` switches what ``auto`` does with CUDA tensors (the fused kernel or the
    PyTorch path with its block cache); CPU tensors and explicit backends do not move."""
    from attnres_search.kernels import backend

    cuda, cpu = torch.device("cuda"), torch.device("cpu")
    assert backend.AUTO_ON_CUDA == "triton"
    assert not backend.reference_only(cuda, "auto") and backend.reference_only(cpu, "auto")
    with backend.use_backend("auto"):
        assert backend.kernel_chosen(cuda, lambda: None, "the fused kernel")
    monkeypatch.setattr(backend, "AUTO_ON_CUDA", "reference")
    assert backend.reference_only(cuda, "auto") and backend.reference_only(cpu, "auto")
    assert not backend.reference_only(cuda, "triton") and backend.reference_only(cuda, "reference")
    with backend.use_backend("auto"):
        assert not backend.kernel_chosen(cuda, lambda: None, "the fused kernel")


def test_busy_time_is_the_union_of_kernel_intervals() -> None:
    from attnres_search.bench.profile import busy_time

    assert busy_time([]) == 0.0
    assert busy_time([(5.0, 6.0), (0.0, 2.0), (1.0, 3.0), (5.5, 5.8), (2.5, 2.6)]) == pytest.approx(4.0)


def test_mixing_bytes_follow_the_source_plan() -> None:
    from attnres_search.bench.profile import STREAM_BYTES, mixing_bytes

    shape = dict(layers=2, width=16, heads=2, seq_len=8, batch_size=2)
    tensor = 2 * 8 * 16 * STREAM_BYTES
    # 4 sublayers + the head = 5 mixing points. Full reads 1..5 sources there (15), the
    # baseline one each (5); forward reads sources and writes each point's input, backward
    # reads sources, the gradient and the saved input, and writes the sources' gradients.
    assert mixing_bytes("full", shape) == (15 + 5) * tensor + (2 * 15 + 2 * 5) * tensor
    assert mixing_bytes("baseline", shape) == (5 + 5) * tensor + (2 * 5 + 2 * 5) * tensor


def test_bench_profile_counts_the_rules_extra_ops_and_writes_traces(tmp_path, monkeypatch: pytest.MonkeyPatch,
                                                                     capsys: pytest.CaptureFixture) -> None:
    import gzip

    args = ["bench", "profile", *TINY[:10], "--warmup", "0", "--steps", "1", "--threads", "1", "--preset", "block-s2",
            "--trace", str(tmp_path / "traces"), "--json"]
    code, out, err = cli(args, monkeypatch, capsys)
    assert code == 0, err
    result = json.loads(out)
    rows = {r["preset"]: r for r in result["rows"]}
    assert list(rows) == ["baseline", "block-s2"], "the baseline is always profiled first"
    base, block = rows["baseline"], rows["block-s2"]
    assert block["launches"] > base["launches"] > 0, "the rule's own ops are on top of the baseline's"
    assert block["extra_launches_per_sublayer"] == pytest.approx((block["launches"] - base["launches"]) / 4)
    assert base["extra_launches_per_sublayer"] == 0
    assert block["mixing_bytes"] > base["mixing_bytes"]
    for row in rows.values():  # a CPU has no device timeline and no copy bandwidth
        assert row["device_ms"] is None and row["idle_fraction"] is None and row["extra_bytes_floor_ms"] is None
        assert row["wall_ms"] > 0 and row["host_ms"] > 0 and row["top"] and row["top"][0]["calls"] > 0
        trace = json.loads(gzip.open(row["trace"]).read())
        assert any(e.get("name", "").startswith("aten::") for e in trace["traceEvents"])
    code, out, _ = cli([*args[:-1]], monkeypatch, capsys)  # the table
    assert code == 0 and "extra ATen calls/sublayer" in out and "block-s2 top ops by self CPU time" in out
    code, _, err = cli(["bench", "profile", "--preset", "nope"], monkeypatch, capsys)
    assert code == 2 and "unknown preset 'nope'" in err and len(err.strip().splitlines()) == 1


def test_bench_step_times_only_the_presets_asked(monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture) -> None:
    code, out, err = cli(["bench", "step", *TINY, "--no-loops", "--json", "--preset", "block-s2"], monkeypatch, capsys)
    assert code == 0, err
    assert [r["preset"] for r in json.loads(out)["rows"]] == ["baseline", "block-s2"]
    code, _, err = cli(["bench", "step", *TINY, "--no-loops", "--preset", "nope"], monkeypatch, capsys)
    assert code == 2 and "unknown preset 'nope'" in err and len(err.strip().splitlines()) == 1
