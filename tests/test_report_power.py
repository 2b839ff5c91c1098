"""Every report row that compares with the baseline carries its power figures (SD of the
paired differences, MDE at 80% power, seeds to detect the observed Δ) and a Holm-adjusted p
that the verdict uses, in every format; `--adjust none` turns the adjustment off."""

from __future__ import annotations

import csv
import io
import json
from pathlib import Path

import numpy as np
import pytest
from scipy import stats as sps

from attnres_search.reports.stats import detectable_effect_size, paired_t_power, seeds_to_detect
from attnres_search.study.space_file import parse_space
from tests.cli_runner import cli
from tests.report_synth import store_trials

SPACE = """
name: pw
model: {n_layers: 2, d_model: 32, n_heads: 2, seq_len: 32}
train: {tokens: 10k, batch_size: 4}
variants: [baseline, full, mhc, block-s2]
seeds: 4
"""
BASE = [3.00, 3.10, 2.95, 3.05]
LOSSES = {
    "baseline": BASE,
    # differences -0.02 -0.05 -0.01 -0.04: t-test p ≈ 0.046, significant alone, not after Holm over 3
    "full": [b + d for b, d in zip(BASE, [-0.02, -0.05, -0.01, -0.04])],
    "mhc": [b + d for b, d in zip(BASE, [0.10, -0.10, 0.05, -0.06])],  # noise
    "block-s2": [b + d for b, d in zip(BASE, [0.02, -0.09, 0.08, -0.03])],  # noise
}


@pytest.fixture
def url(tmp_path: Path) -> str:
    url = f"sqlite:///{tmp_path / 'pw.db'}"
    store_trials(url, parse_space(SPACE), LOSSES)
    return url


def _rows(out: str) -> dict[str, dict]:
    return {r["variant"]: r for r in json.loads(out)["tables"]["variants"]}


def test_power_columns_match_scipy_and_holm_decides_the_verdict(url: str, monkeypatch, capsys) -> None:
    code, out, _ = cli(["report", "pw", "--format", "json", "--storage", url], monkeypatch, capsys)
    assert code == 0
    rows = _rows(out)
    raw = {v: sps.ttest_rel(LOSSES[v], BASE).pvalue for v in ("full", "mhc", "block-s2")}
    assert 0.04 < raw["full"] < 0.05
    # Holm by hand: the three p-values sorted, times 3, 2, 1, running maximum
    order = sorted(raw, key=raw.get)
    expected, running = {}, 0.0
    for rank, variant in enumerate(order):
        running = max(running, min(1.0, (3 - rank) * raw[variant]))
        expected[variant] = running
    level = 0.05 / 3
    for variant in ("full", "mhc", "block-s2"):
        row = rows[variant]
        diffs = np.array(LOSSES[variant]) - np.array(BASE)
        sd = float(np.std(diffs, ddof=1))
        assert row["p_value"] == pytest.approx(raw[variant], rel=1e-12)
        assert row["p_adjusted"] == pytest.approx(expected[variant], rel=1e-12)
        assert row["adjust"] == "holm" and row["power_alpha"] == pytest.approx(level)
        assert row["delta_sd"] == pytest.approx(sd, rel=1e-12)
        assert row["mde_80"] == pytest.approx(detectable_effect_size(4, level) * sd, rel=1e-12)
        assert paired_t_power(row["mde_80"] / sd, 4, level) == pytest.approx(0.8, abs=1e-9)
        n = row["seeds_needed"]
        assert n == seeds_to_detect(float(diffs.mean()), sd, level)
        assert paired_t_power(abs(diffs.mean()) / sd, n, level) >= 0.8 > paired_t_power(abs(diffs.mean()) / sd, n - 1, level)
    assert rows["full"]["p_adjusted"] > 0.05 and rows["full"]["verdict"] == "inconclusive"
    base = rows["baseline"]
    assert base["p_adjusted"] is None and base["mde_80"] is None and base["seeds_needed"] is None
    assert base["power_alpha"] is None
    notes = " ".join(json.loads(out)["notes"])
    assert "Holm" in notes and "scipy.stats.nct" in notes and "0.05/3" in notes


def test_adjust_none_keeps_the_raw_p_and_its_verdict(url: str, monkeypatch, capsys) -> None:
    code, out, _ = cli(["report", "pw", "--format", "json", "--adjust", "none", "--storage", url], monkeypatch, capsys)
    assert code == 0
    rows = _rows(out)
    for variant in ("full", "mhc", "block-s2"):
        assert rows[variant]["p_adjusted"] == rows[variant]["p_value"] and rows[variant]["adjust"] == "none"
        assert rows[variant]["power_alpha"] == 0.05
    assert rows["full"]["verdict"] == "reproduced"  # the paper's sign, raw p < 0.05
    sd = float(np.std(np.array(LOSSES["full"]) - BASE, ddof=1))
    assert rows["full"]["mde_80"] == pytest.approx(detectable_effect_size(4, 0.05) * sd, rel=1e-12)
    code, _, err = cli(["report", "pw", "--adjust", "bonferroni", "--storage", url], monkeypatch, capsys)
    assert code == 2 and "bonferroni" in err


def test_power_columns_in_table_csv_and_markdown(url: str, monkeypatch, capsys) -> None:
    code, out, _ = cli(["report", "pw", "--format", "json", "--storage", url], monkeypatch, capsys)
    full = _rows(out)["full"]
    code, table, _ = cli(["report", "pw", "--storage", url], monkeypatch, capsys)
    assert code == 0
    for header in ("p adj. (Holm)", "SD of diffs", "MDE (80%)", "seeds for Δ", "Δ equal FLOPs", "Δ equal time"):
        assert header in table
    power_line = [line for line in table.splitlines() if line.startswith("│ full ")][1]  # the second (power) table
    assert f"{full['delta_sd']:.4f}" in power_line and f"{full['mde_80']:.4f}" in power_line
    assert f" {full['seeds_needed']:,} " in power_line
    main_line = next(line for line in table.splitlines() if line.startswith("│ full "))
    assert f"{full['p_adjusted']:.4f}" in main_line and "inconclusive" in main_line

    code, md, _ = cli(["report", "pw", "--format", "markdown", "--storage", url], monkeypatch, capsys)
    assert code == 0 and "| p adj. (Holm) |" in md and "| SD of diffs | MDE (80%) | seeds for Δ |" in md
    assert any(line.startswith("| full |") and f"{full['mde_80']:.4f}" in line for line in md.splitlines())

    code, text, _ = cli(["report", "pw", "--format", "csv", "--storage", url], monkeypatch, capsys)
    assert code == 0
    rows = list(csv.DictReader(io.StringIO(text)))
    assert len(rows) == 4  # the power view is not a second CSV table: its keys are on the same rows
    got = next(r for r in rows if r["variant"] == "full")
    for name in ("p_adjusted", "delta_sd", "mde_80", "power_alpha"):
        assert float(got[name]) == pytest.approx(full[name], rel=1e-12)
    assert int(got["seeds_needed"]) == full["seeds_needed"] and got["adjust"] == "holm"


def test_one_seed_has_no_power_figures(tmp_path: Path, monkeypatch, capsys) -> None:
    url = f"sqlite:///{tmp_path / 'one.db'}"
    store_trials(url, parse_space(SPACE.replace("seeds: 4", "seeds: 1")), {v: l[:1] for v, l in LOSSES.items()})
    code, out, _ = cli(["report", "pw", "--format", "json", "--storage", url], monkeypatch, capsys)
    assert code == 0
    full = _rows(out)["full"]
    assert full["n_pairs"] == 1 and full["mde_80"] is None and full["seeds_needed"] is None
    assert full["p_adjusted"] is None and full["verdict"] == "inconclusive"
    assert "NaN" not in out  # JSON carries None, never NaN
