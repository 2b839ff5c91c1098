"""Reports read back from storages filled with known synthetic trials (no training): the
numbers printed must be scipy's / a hand computation, in every format."""

from __future__ import annotations

import json
import math
from pathlib import Path
from typing import Any

import optuna
import pytest
from scipy import stats as sps

from attnres_search.study.attrs import ATTR_CELL, ATTR_KIND, ATTR_SPACE, ATTR_SPACE_NAME
from attnres_search.study.cells import cell_key
from attnres_search.study.space import Space
from attnres_search.study.space_file import parse_space
from tests.cli_runner import cli
from tests.report_synth import json_report, optima_by_variant

optuna.logging.set_verbosity(optuna.logging.WARNING)
T_975_DF3 = 3.182446305284263

ABLATION = """
name: synth
model: {n_layers: 2, d_model: 32, n_heads: 2, seq_len: 32}
train: {tokens: 10k, batch_size: 4}
variants: [baseline, full, mhc, block-s2]
seeds: 4
"""
LOSSES = {  # variant -> loss per seed 0..3
    "baseline": [3.00, 3.10, 2.95, 3.05],
    "full": [2.90, 3.02, 2.91, 2.96],  # better on every seed: the paper's direction
    "mhc": [3.10, 3.20, 3.06, 3.14],  # worse on every seed: the opposite of the paper
    "block-s2": [2.90, 3.20, 2.85, 3.10],  # noise
}


def synthetic_study(url: str, space: Space, losses: dict[Any, list[float]], attrs: Any = None) -> None:
    """A study as `study start` leaves it, but with trials made up rather than trained."""
    st = optuna.create_study(study_name=space.name, storage=url)
    st.set_user_attr(ATTR_SPACE, space.source)
    st.set_user_attr(ATTR_SPACE_NAME, space.name)
    st.set_user_attr(ATTR_KIND, space.kind)
    choices = space.choices()
    dists = {k: optuna.distributions.CategoricalDistribution(list(v)) for k, v in choices.items()}
    for cell, values in losses.items():
        for seed, loss in enumerate(values):
            params = dict(cell if isinstance(cell, tuple) else (("variant", cell),), seed=seed)
            run = space.run_config(params)
            user = {ATTR_CELL: cell_key(params), "variant": params["variant"], "seed": seed, "config": run.to_dict(),
                    "final_val_loss": loss, "params_total": 1000 + seed, "flops_total": 5.0e9,
                    "tokens": run.tokens, "tokens_per_s": 2.0e4, "val_curve": [[10, loss + 0.5], [20, loss]]}
            user.update(attrs(run) if attrs else {})
            st.add_trial(optuna.trial.create_trial(params=params, distributions={k: dists[k] for k in params},
                                                   value=loss, user_attrs=user))


@pytest.fixture
def ablation_db(tmp_path: Path) -> str:
    url = f"sqlite:///{tmp_path / 'synth.db'}"
    synthetic_study(url, parse_space(ABLATION), LOSSES)
    return url


def test_report_json_numbers_are_scipys(ablation_db: str, monkeypatch, capsys) -> None:
    code, out, _ = cli(["report", "synth", "--format", "json", "--storage", ablation_db], monkeypatch, capsys)
    assert code == 0
    rows = {r["variant"]: r for r in json.loads(out)["tables"]["variants"]}
    assert list(rows) == ["baseline", "full", "mhc", "block-s2"]
    base = LOSSES["baseline"]
    for variant, values in LOSSES.items():
        row = rows[variant]
        mean = sum(values) / 4
        sd = math.sqrt(sum((v - mean) ** 2 for v in values) / 3)
        assert row["n"] == 4
        assert row["loss_mean"] == pytest.approx(mean, abs=1e-12)
        assert row["loss_ci_half"] == pytest.approx(T_975_DF3 * sd / 2, rel=1e-9)
        assert row["params"] == pytest.approx(1001.5) and row["tokens_per_s"] == pytest.approx(2.0e4)
        if variant != "baseline":
            assert row["p_value"] == pytest.approx(sps.ttest_rel(values, base).pvalue, rel=1e-12)
            assert row["delta_mean"] == pytest.approx(mean - sum(base) / 4, abs=1e-12)
    assert rows["full"]["paper_loss"] == 1.737 and rows["full"]["paper_delta"] == pytest.approx(1.737 - 1.766)
    assert [rows[v]["verdict"] for v in ("full", "mhc", "block-s2")] == ["reproduced", "opposite", "inconclusive"]


def test_report_table_prints_every_variant_with_its_numbers(ablation_db: str, monkeypatch, capsys) -> None:
    code, out, _ = cli(["report", "synth", "--storage", ablation_db], monkeypatch, capsys)
    assert code == 0
    base = LOSSES["baseline"]
    for variant, values in LOSSES.items():
        line = next(line for line in out.splitlines() if line.startswith(f"│ {variant} "))
        mean = sum(values) / 4
        half = sps.t.ppf(0.975, 3) * sps.sem(values)
        assert f"{mean:.4f} ± {half:.4f}" in line
        if variant != "baseline":
            assert f"{sps.ttest_rel(values, base).pvalue:.4f}" in line
    assert "reproduced" in out and "opposite" in out and "inconclusive" in out and "1.737" in out


def test_report_wilcoxon_markdown_and_csv(ablation_db: str, monkeypatch, capsys) -> None:
    code, out, _ = cli(["report", "synth", "--test", "wilcoxon", "--format", "markdown", "--storage", ablation_db],
                       monkeypatch, capsys)
    assert code == 0 and out.startswith("## ablation report") and "| full |" in out
    p = sps.wilcoxon(LOSSES["full"], LOSSES["baseline"]).pvalue
    assert f"{p:.4f}" in out and "Wilcoxon" in out
    code, out, _ = cli(["report", "synth", "--format", "csv", "--storage", ablation_db], monkeypatch, capsys)
    header, *lines = out.strip().splitlines()
    assert code == 0 and header.startswith("variant,") and len(lines) == 4
    assert float(lines[1].split(",")[header.split(",").index("loss_mean")]) == pytest.approx(sum(LOSSES["full"]) / 4)


def test_block_count_kind_and_plots(ablation_db: str, tmp_path: Path, monkeypatch, capsys) -> None:
    code, out, err = cli(["report", "synth", "block-count", "--plots", str(tmp_path / "figs"),
                          "--storage", ablation_db], monkeypatch, capsys)
    assert code == 0 and "Block size S" in out
    assert (tmp_path / "figs" / "variants.png").stat().st_size > 0
    assert (tmp_path / "figs" / "block_size.png").stat().st_size > 0
    assert (tmp_path / "figs" / "runs" / "full" / "loss.png").exists()  # each variant's run figures
    assert "figure(s)" in err


DEPTH_WIDTH = """
name: dw
model: {seq_len: 32}
train: {batch_size: 4}
variants: [baseline, full]
shapes: {ratios: [4, 8, 16, 32, 64], params: 200k, head_dim: 4}
budget: {flops: 1.0e11}
seeds: 2
"""


def test_depth_width_report_finds_the_optimum_and_equal_flops(tmp_path: Path, monkeypatch, capsys) -> None:
    space = parse_space(DEPTH_WIDTH)
    actual = {}
    for ratio in space.shapes.ratios:
        m = space.run_config({"variant": "baseline", "ratio": ratio, "seed": 0}).model
        actual[ratio] = m.d_model / m.n_layers
    optimum = {"baseline": 20.0, "full": 10.0}
    losses = {}
    for variant, opt in optimum.items():
        for ratio in space.shapes.ratios:
            loss = 2.0 + 0.05 * (math.log(actual[ratio]) - math.log(opt)) ** 2
            losses[(("variant", variant), ("ratio", ratio))] = [loss, loss + 0.01]
    url = f"sqlite:///{tmp_path / 'dw.db'}"
    from attnres_search.model.flops import flops_per_token

    synthetic_study(url, space, losses, attrs=lambda run: {
        "flops_total": flops_per_token(run.model)["train"] * run.tokens, "params_non_embedding": 1})
    doc = json_report("dw", url, monkeypatch, capsys)
    optima = optima_by_variant(doc)
    assert optima["baseline"]["optimum_ratio"] == pytest.approx(20.0, rel=1e-6)
    assert optima["full"]["optimum_ratio"] == pytest.approx(10.0, rel=1e-6)
    assert optima["baseline"]["paper_optimum"] == 60 and optima["full"]["paper_optimum"] == 45
    notes = " ".join(doc["notes"])
    assert "every cell used the same training FLOPs" in notes and "(paper: baseline 60 → AttnRes 45)" in notes
    code, out, _ = cli(["report", "dw", "--plots", str(tmp_path / "p"), "--storage", url], monkeypatch, capsys)
    assert code == 0 and (tmp_path / "p" / "depth_width.png").exists() and "same training FLOPs" in out
    assert {r["variant"]: r["bracketed"] for r in optima.values()} == {"baseline": "yes", "full": "yes"}
    assert "does not bracket" not in notes


def test_depth_width_report_says_when_the_grid_does_not_bracket_an_optimum(tmp_path: Path, monkeypatch,
                                                                          capsys) -> None:
    """A pilot's range is right only when every arm's curve turns up on both sides of its lowest
    shape; an arm still falling at an edge gets a bound ("≥ 64.0"), not an estimate, and a note."""
    space = parse_space(DEPTH_WIDTH)
    ratios = space.shapes.ratios
    falling = {r: 2.0 - 0.01 * i for i, r in enumerate(ratios)}  # still improving at the widest shape
    rising = {r: 2.0 + 0.01 * i + 0.002 * i * i for i, r in enumerate(ratios)}  # best at the deepest
    losses = {(("variant", "baseline"), ("ratio", r)): [rising[r], rising[r] + 0.01] for r in ratios}
    losses.update({(("variant", "full"), ("ratio", r)): [falling[r], falling[r] + 0.013] for r in ratios})
    url = f"sqlite:///{tmp_path / 'dw.db'}"
    synthetic_study(url, space, losses)
    doc = json_report("dw", url, monkeypatch, capsys)
    optima = optima_by_variant(doc)
    assert optima["baseline"]["bracketed"] == "deepest" and optima["full"]["bracketed"] == "widest"
    assert not optima["full"]["interior"] and not optima["baseline"]["interior"]
    widest = max(r["actual_ratio"] for r in doc["tables"]["cells"])
    deepest = min(r["actual_ratio"] for r in doc["tables"]["cells"])
    notes = doc["notes"]
    assert f"optimum d_model/L_b: baseline ≤ {deepest:.1f} → full ≥ {widest:.1f} (paper: baseline 60 → AttnRes 45)" \
        in " ".join(notes)
    assert sum("does not bracket its optimum" in n for n in notes) == 2
    assert any(n.startswith("full is lowest at the widest shape measured") and "needs wider shapes" in n
               for n in notes)
    assert any(n.startswith("baseline is lowest at the deepest shape measured") and "needs deeper shapes" in n
               for n in notes)
    code, table, _ = cli(["report", "dw", "--format", "markdown", "--storage", url], monkeypatch, capsys)
    assert code == 0
    assert f"| full | ≥ {widest:.1f} |" in table and f"| baseline | ≤ {deepest:.1f} |" in table
    assert "no: lowest at the widest shape" in table and "no: lowest at the deepest shape" in table


SCALING = """
name: sc
model: {seq_len: 32}
train: {batch_size: 4, tokens: 10k}
variants: [baseline, block-s2]
sizes:
  s: {n_layers: 1, d_model: 16, n_heads: 2}
  m: {n_layers: 2, d_model: 32, n_heads: 2}
  l: {n_layers: 4, d_model: 64, n_heads: 2}
seeds: 1
"""


def test_scaling_report_recovers_power_laws_and_multiplier(tmp_path: Path, monkeypatch, capsys) -> None:
    space = parse_space(SCALING)
    pfd = 8.64e19
    compute = {"s": 1e-3, "m": 1e-2, "l": 1e-1}
    laws = {"baseline": (1.891, 0.057), "block-s2": (1.870, 0.058)}
    losses = {(("size", s), ("variant", v)): [a * c ** -al] for v, (a, al) in laws.items() for s, c in compute.items()}
    by_size = {k: c * pfd for k, c in compute.items()}
    url = f"sqlite:///{tmp_path / 'sc.db'}"

    def attrs(run):
        size = next(k for k, v in space.sizes.items() if v["model"]["d_model"] == run.model.d_model)
        return {"flops_total": by_size[size]}

    synthetic_study(url, space, losses, attrs=attrs)
    code, out, _ = cli(["report", "sc", "--format", "json", "--storage", url], monkeypatch, capsys)
    assert code == 0
    doc = json.loads(out)
    fits = {r["variant"]: r for r in doc["tables"]["fits"]}
    for variant, (a, alpha) in laws.items():
        assert fits[variant]["A"] == pytest.approx(a, rel=1e-9) and fits[variant]["alpha"] == pytest.approx(alpha, rel=1e-9)
    mult = doc["tables"]["multiplier"][0]
    expected = (1.891 / (1.870 * 0.1 ** -0.058)) ** (1 / 0.057) / 0.1
    assert mult["variant"] == "block-s2" and mult["multiplier"] == pytest.approx(expected, rel=1e-9)
    assert mult["paper_multiplier"] == 1.25
    code, out, _ = cli(["report", "sc", "--plots", str(tmp_path / "p"), "--storage", url], monkeypatch, capsys)
    assert code == 0 and (tmp_path / "p" / "scaling.png").exists() and "1.25x" in out


def test_report_bad_input_leaves_storage_alone(tmp_path: Path, ablation_db: str, monkeypatch, capsys) -> None:
    missing = tmp_path / "nope.db"
    code, _, err = cli(["report", "synth", "--storage", f"sqlite:///{missing}"], monkeypatch, capsys)
    assert code == 2 and "no study database" in err and len(err.strip().splitlines()) == 1
    assert not missing.exists()
    code, _, err = cli(["report", "nosuch", "--storage", ablation_db], monkeypatch, capsys)
    assert code == 2 and "no study named 'nosuch'" in err and "synth" in err
    code, _, err = cli(["report", "synth", "ablation", "--kind", "scaling", "--storage", ablation_db], monkeypatch, capsys)
    assert code == 2
