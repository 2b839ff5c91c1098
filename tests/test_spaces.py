"""Search spaces: the built-in files load, expand and build every run; bad files fail on
load with a message naming the offending key."""

from __future__ import annotations

import textwrap
from pathlib import Path

import pytest

from attnres_search.model.flops import flops_per_token
from attnres_search.study.cells import cell_key
from attnres_search.study.space_file import builtin_names, load_space, parse_space

MINIMAL = """
model: {n_layers: 2, d_model: 32, n_heads: 2, seq_len: 32}
train: {tokens: 10k, batch_size: 4}
variants: [baseline, full]
seeds: 2
"""


def parse(text: str):
    return parse_space(textwrap.dedent(text), default_name="t", where="t.yaml")


def test_every_builtin_space_loads_and_builds_every_run() -> None:
    names = builtin_names()
    for kind in ("ablation", "block_count", "depth_width", "scaling"):
        assert kind in names and f"smoke_{kind}" in names
    for name in names:
        space = load_space(name)
        cells = space.cells()
        assert len({cell_key(c) for c in cells}) == len(cells)  # no cell x seed twice
        for params in cells:
            run = space.run_config(params)
            assert run.seed == params["seed"]
            assert run.model.residual == space.variant(params["variant"]).residual


def test_ablation_space_covers_table4_and_block_count_reaches_s32() -> None:
    ablation = load_space("ablation")
    assert {v.name for v in ablation.variants} >= {"baseline", "denseformer", "mhc", "full", "full-inputq",
                                                   "full-static", "full-sigmoid", "full-nokeynorm", "swa-8",
                                                   "block-s4", "block-mh16", "block-nokeynorm"}
    block = load_space("block-count")  # hyphen and underscore both name it
    sizes = {getattr(block.run_config({"variant": v.name, "seed": 0}).model.residual, "block_size", None)
             for v in block.variants}  # the baseline's rule has no blocks
    assert {2, 4, 8, 16, 32} <= sizes and "baseline" in {v.name for v in block.variants}
    assert block.model["n_layers"] * 2 >= 32


def test_smoke_ablation_is_small() -> None:
    space = load_space("smoke_ablation")
    assert len(space.cells()) <= 8
    run = space.run_config(space.cells()[0])
    assert run.model.d_model <= 64 and run.model.n_layers <= 2 and run.tokens <= 16 * 64 * 200


@pytest.mark.parametrize("name", ["depth_width", "smoke_depth_width"])
def test_depth_width_cells_spend_the_same_flops(name: str) -> None:
    space = load_space(name)
    flops = []
    shapes = set()
    for params in space.cells():
        run = space.run_config(params)
        flops.append(flops_per_token(run.model)["train"] * run.tokens)
        shapes.add((run.model.n_layers, run.model.d_model))
        assert run.tokens % (run.batch_size * run.model.seq_len) == 0  # whole batches
    assert len(shapes) == len(space.shapes.ratios)
    budget = space.budget_flops
    assert all(0.95 * budget <= f <= budget for f in flops)  # rounded down to whole batches


def test_minimal_space_defaults_and_suffixes() -> None:
    space = parse(MINIMAL)
    assert space.name == "t" and space.kind == "ablation" and space.sampler == "grid"
    assert space.baseline == "baseline" and space.seeds == (0, 1)
    assert space.run_config({"variant": "full", "seed": 1}).tokens == 10_000
    assert len(space.cells()) == 4


def test_axes_sizes_custom_variants_and_sampled_spaces() -> None:
    space = parse(MINIMAL + """
axes:
  lr: [1e-3, 3.0e-3]
  score: [softmax, sigmoid]
variants:
  - full
  - {name: full-h2, preset: full, heads: 2}
""")  # `score` is a field of the AttnRes rules only: see the test below for the baseline
    assert len(space.cells()) == 2 * 2 * 2 * 2
    run = space.run_config({"variant": "full-h2", "lr": 0.001, "score": "sigmoid", "seed": 0})
    assert run.lr == 0.001 and run.model.residual.heads == 2 and run.model.residual.score == "sigmoid"
    sampled = parse(MINIMAL.replace("seeds: 2", "seeds: [7]") + "axes: {lr: {low: 1e-4, high: 1e-2, log: true}}\nn_trials: 5\n")
    assert sampled.sampler == "tpe" and sampled.n_trials == 5 and sampled.seeds == (7,)


def test_a_rule_field_swept_over_a_rule_without_it_is_an_error_naming_the_field() -> None:
    """The baseline has no `score`: sweeping it there would make trials that differ in name only."""
    with pytest.raises(ValueError) as err:
        parse(MINIMAL + "axes: {score: [softmax, sigmoid]}\n")
    assert "cell variant=baseline score=softmax" in str(err.value) and "'score' is not a field" in str(err.value)


def test_user_file_by_path(tmp_path: Path) -> None:
    path = tmp_path / "mine.yaml"
    path.write_text(MINIMAL)
    assert load_space(str(path)).name == "mine"


@pytest.mark.parametrize("text, message", [
    ("model: {n_layers: 2\n", "malformed YAML at line"),
    (MINIMAL + "sedes: 3\n", "unknown key 'sedes'"),
    (MINIMAL.replace("[baseline, full]", "[baseline, fulll]"), "unknown preset 'fulll'"),
    (MINIMAL.replace("seq_len: 32", "seq_lenn: 32"), "model: unknown field 'seq_lenn'"),
    (MINIMAL.replace("tokens: 10k", "tokens: lots"), "train.tokens must be a number"),
    (MINIMAL.replace("batch_size: 4", "batch_size: 4.5"), "train.batch_size must be an integer"),
    (MINIMAL.replace("seeds: 2", "seeds: two"), "seeds must be"),
    (MINIMAL.replace("[baseline, full]", "[baseline, block-s8]"), "block_size=8 does not divide the 4 sublayers"),
    (MINIMAL + "axes: {lr: {low: 1, high: 2}}\nsampler: grid\n", "a grid sampler needs lists"),
    (MINIMAL + "axes: {lr: {low: 1, high: 2}}\n", "n_trials is required"),
    (MINIMAL + "axes: {nonsense: [1, 2]}\n", "unknown field 'nonsense'"),
    (MINIMAL + "axes: {seed: [1, 2]}\n", "'seed' is set by the space itself"),
    (MINIMAL + "train: {model: 3}\n", "train: unknown field 'model'"),
    (MINIMAL + "shapes: {ratios: [4, 12, 32], params: 100k}\n", "shapes needs budget.flops"),
    (MINIMAL + "shapes: {ratios: [30, 32], params: 100k}\nbudget: {flops: 1e9}\n", "give the same model"),
    (MINIMAL + "kind: ablations\n", "kind must be one of"),
    (MINIMAL + "pruner: {type: median, n_warmup: 3}\n", "unknown argument 'n_warmup'"),
    (MINIMAL + "baseline: mhc\n", "baseline 'mhc' is not one of the variants"),
    ("- just\n- a list\n", "must hold a mapping"),
])
def test_bad_spaces_name_the_problem(text: str, message: str) -> None:
    with pytest.raises(ValueError) as err:
        parse(text)
    assert message in str(err.value)
    assert str(err.value).startswith("search space t.yaml: ")
    assert "\n" not in str(err.value)


def test_unknown_builtin_lists_the_known_ones() -> None:
    with pytest.raises(ValueError, match="built-in: ablation, block_count"):
        load_space("ablashun")
