"""check_run: every value a run would fail on later is a one-line BadInput naming the field,
raised before anything is allocated, read in full or written."""

from __future__ import annotations

import dataclasses
import math

import numpy as np
import pytest

from attnres_search.errors import BadInput
from attnres_search.model.config import ModelConfig
from attnres_search.training.checks import BYTES_PER_PARAM_TRAINING, check_run, estimated_params
from attnres_search.training.config import RunConfig
from attnres_search.training.data import write_shard


def tiny(**overrides) -> RunConfig:
    model = ModelConfig(vocab_size=256, n_layers=1, d_model=32, n_heads=2, seq_len=32)
    fields = dict(model=model, tokens=None, steps=30, batch_size=8, val_every=10, val_windows=8, diagnostics_every=10)
    fields.update(overrides)
    return RunConfig(**fields)


def test_a_good_config_passes():
    check_run(tiny())
    check_run(tiny(tokens=8 * 32, steps=None))  # exactly one batch


@pytest.mark.parametrize(
    ("overrides", "field"),
    [
        (dict(tokens=0), "tokens"),
        (dict(tokens=-5), "tokens"),
        (dict(tokens=100), "tokens"),  # fewer than one batch of 8 x 32
        (dict(tokens=math.inf), "tokens"),
        (dict(tokens=1e6), "tokens"),  # a float is not a token count
        (dict(tokens=None, steps=None), "tokens"),
        (dict(tokens=None, steps=0), "steps"),
        (dict(batch_size=0), "batch_size"),
        (dict(val_every=0), "val_every"),
        (dict(val_windows=0), "val_windows"),
        (dict(diagnostics_every=-1), "diagnostics_every"),
        (dict(devices=0), "devices"),
        (dict(seed=-1), "seed"),
        (dict(optimizer="sgd"), "optimizer"),
        (dict(schedule="linear"), "schedule"),
        (dict(lr=math.nan), "lr"),
        (dict(lr=math.inf), "lr"),
        (dict(lr=0.0), "lr"),
        (dict(lr=-1e-3), "lr"),
        (dict(muon_lr=math.nan), "muon_lr"),
        (dict(weight_decay=math.nan), "weight_decay"),
        (dict(grad_clip=-1.0), "grad_clip"),
        (dict(warmup_frac=0.9, decay_frac=0.5), "warmup_frac"),
        (dict(precision="fp8"), "precision"),
        (dict(accelerator="quantum"), "accelerator"),
        (dict(ckpt_every=5), "ckpt_every"),
        (dict(resume=True), "resume"),
        (dict(data="wikipedia"), "data"),
        (dict(data="text:/nonexistent/corpus.txt"), "data"),
        (dict(data="pystdlib?colour=blue"), "data"),
    ],
)
def test_bad_values_name_their_field(overrides, field):
    with pytest.raises(BadInput) as info:
        check_run(tiny(**overrides))
    message = str(info.value)
    assert field in message and "\n" not in message


def test_bad_input_is_a_value_error():
    assert issubclass(BadInput, ValueError)


def test_a_huge_model_is_refused_without_allocating():
    big = dataclasses.replace(tiny().model, d_model=10**9, n_heads=1)
    with pytest.raises(BadInput, match=r"d_model=1000000000.*GiB"):
        check_run(tiny(model=big))


def test_parameter_estimate_is_the_real_models_count():
    from attnres_search.model.decoder import AttnResLM

    for cfg in (tiny().model, dataclasses.replace(tiny().model, n_layers=3, d_model=64, tie_embeddings=True)):
        assert estimated_params(RunConfig(model=cfg)) == AttnResLM(cfg).num_params()
    assert BYTES_PER_PARAM_TRAINING == 16


def test_text_source_too_small_for_one_window(tmp_path):
    (tmp_path / "t.txt").write_text("x" * 300)  # 5% of 300 bytes is 15 < seq_len + 1
    with pytest.raises(BadInput, match="data: the validation split .* has 15 tokens"):
        check_run(tiny(data=f"text:{tmp_path / 't.txt'}"))
    (tmp_path / "t.txt").write_text("x" * 2000)
    check_run(tiny(data=f"text:{tmp_path / 't.txt'}"))


def test_empty_text_folder_and_unreadable_path(tmp_path):
    (tmp_path / "empty").mkdir()
    with pytest.raises(BadInput, match="has no files"):
        check_run(tiny(data=f"text:{tmp_path / 'empty'}"))
    (tmp_path / "file").write_text("x")
    with pytest.raises(BadInput, match="does not exist"):
        check_run(tiny(data=f"text:{tmp_path / 'file' / 'below-a-file.txt'}"))


def test_shard_vocabulary_larger_than_the_model(tmp_path):
    for name in ("a.bin", "b.bin"):
        write_shard(tmp_path / name, np.zeros(1000, dtype=np.uint16))
    with pytest.raises(BadInput, match="vocabulary 50304 but model.vocab_size is 256"):
        check_run(tiny(data=f"shards:{tmp_path}/*.bin"))
    check_run(tiny(data=f"shards:{tmp_path}/*.bin?vocab=256"))


def test_shard_token_id_at_or_above_the_vocabulary(tmp_path):
    tokens = np.zeros(1000, dtype=np.uint16)
    tokens[417] = 256
    write_shard(tmp_path / "a.bin", np.zeros(1000, dtype=np.uint16))
    write_shard(tmp_path / "b.bin", tokens)
    with pytest.raises(BadInput, match=r"b\.bin' holds token id 256 at position 417"):
        check_run(tiny(data=f"shards:{tmp_path}/*.bin?vocab=256"))


def test_out_dir_must_be_creatable(tmp_path):
    (tmp_path / "file").write_text("not a folder")
    with pytest.raises(BadInput, match="out_dir .* is not a folder"):
        check_run(tiny(out_dir=str(tmp_path / "file")))
    with pytest.raises(BadInput, match="out_dir .* cannot be created"):
        check_run(tiny(out_dir=str(tmp_path / "file" / "run")))
    check_run(tiny(out_dir=str(tmp_path / "new" / "run")))
    assert not (tmp_path / "new").exists()  # checked, not created
    assert sorted(p.name for p in tmp_path.iterdir()) == ["file"]
