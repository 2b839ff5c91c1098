"""Data sources, shard format and the (seed, step) -> batch contract."""

from __future__ import annotations

import sys

import numpy as np
import pytest
import torch

from attnres_search.training import data
from attnres_search.training.data import (
    LMDataModule,
    TrainBatches,
    load_corpus,
    read_shard,
    source_vocab_size,
    train_batch,
    write_shard,
)


@pytest.fixture(scope="module")
def stdlib():
    return load_corpus("pystdlib")


def test_pystdlib_is_a_byte_corpus_with_a_stable_hash(stdlib):
    assert stdlib.vocab_size == 256 and stdlib.byte_level
    assert stdlib.train.n_tokens > 1_000_000
    assert 0.02 < stdlib.val.n_tokens / (stdlib.train.n_tokens + stdlib.val.n_tokens) < 0.1  # 1 file in 20
    assert len(stdlib.data_hash) == 64
    data._load_pystdlib.cache_clear()
    assert load_corpus("pystdlib").data_hash == stdlib.data_hash


def test_max_mb_caps_the_corpus_and_changes_the_hash(stdlib):
    small = load_corpus("pystdlib?max_mb=1")
    assert small.train.n_tokens + small.val.n_tokens == 2**20
    assert small.data_hash != stdlib.data_hash


def test_batch_is_a_pure_function_of_seed_and_step(stdlib):
    a_in, a_tgt = train_batch(stdlib.train, seed=3, step=7, batch_size=4, seq_len=16)
    b_in, _ = train_batch(stdlib.train, seed=3, step=7, batch_size=4, seq_len=16)
    assert a_in.shape == (4, 16) and a_in.dtype == torch.int64
    assert torch.equal(a_in, b_in)
    assert torch.equal(a_in[:, 1:], a_tgt[:, :-1])  # targets are the inputs shifted by one
    assert not torch.equal(a_in, train_batch(stdlib.train, seed=3, step=8, batch_size=4, seq_len=16)[0])
    assert not torch.equal(a_in, train_batch(stdlib.train, seed=4, step=7, batch_size=4, seq_len=16)[0])


def test_train_stream_started_mid_run_matches_the_steps(stdlib):
    stream = iter(TrainBatches(stdlib.train, seed=1, batch_size=2, seq_len=8, start_step=5))
    for step in (5, 6):
        assert torch.equal(next(stream)[0], train_batch(stdlib.train, 1, step, 2, 8)[0])


def test_validation_windows_do_not_depend_on_the_seed(stdlib):
    a = LMDataModule(stdlib, seq_len=32, batch_size=4, seed=0, val_windows=10)
    b = LMDataModule(stdlib, seq_len=32, batch_size=4, seed=1, val_windows=10)
    assert a.val_inputs.shape == (10, 32)
    assert torch.equal(a.val_inputs, b.val_inputs)
    assert len(a.val_dataloader()) == 3


def test_shards_round_trip_and_name_the_validation_shard(tmp_path):
    rng = np.random.default_rng(0)
    tokens = {name: rng.integers(0, 1000, size=n).astype(np.uint16) for name, n in
              (("train_000.bin", 500), ("train_001.bin", 300), ("val_000.bin", 200))}
    for name, toks in tokens.items():
        write_shard(tmp_path / name, toks)
    assert np.array_equal(read_shard(tmp_path / "train_001.bin"), tokens["train_001.bin"])
    corpus = load_corpus(f"shards:{tmp_path}/*.bin?vocab=1000")
    assert corpus.vocab_size == 1000 and not corpus.byte_level
    assert corpus.train.n_tokens == 800 and corpus.val.n_tokens == 200
    assert np.array_equal(corpus.val.arrays[0], tokens["val_000.bin"])
    windows = corpus.train.sample(np.random.default_rng(1), 64, 50)
    assert windows.max() < 1000
    # windows never straddle two shards: each is a contiguous slice of one of them
    joined = {name: toks.astype(np.int64).tobytes() for name, toks in tokens.items() if "train" in name}
    assert all(any(w.tobytes() in blob for blob in joined.values()) for w in windows)


def test_last_shard_is_validation_without_a_val_name(tmp_path):
    for i in range(3):
        write_shard(tmp_path / f"s{i}.bin", np.full(100, i, dtype=np.uint16))
    corpus = load_corpus(f"shards:{tmp_path}/s*.bin")
    assert corpus.vocab_size == data.DEFAULT_SHARD_VOCAB
    assert set(np.unique(corpus.val.arrays[0])) == {2}


def test_bad_shards_give_clear_errors(tmp_path):
    good = tmp_path / "good.bin"
    write_shard(good, np.arange(100, dtype=np.uint16))
    bad_magic = tmp_path / "magic.bin"
    raw = bytearray(good.read_bytes())
    raw[:4] = np.int32(12345).tobytes()
    bad_magic.write_bytes(bytes(raw))
    with pytest.raises(ValueError, match=r"magic.bin.*magic number 12345"):
        read_shard(bad_magic)
    truncated = tmp_path / "short.bin"
    truncated.write_bytes(good.read_bytes()[:-10])
    with pytest.raises(ValueError, match=r"short.bin.*truncated"):
        read_shard(truncated)
    tiny = tmp_path / "tiny.bin"
    tiny.write_bytes(b"\0" * 10)
    with pytest.raises(ValueError, match="shorter than its"):
        read_shard(tiny)
    with pytest.raises(ValueError, match="one shard"):
        load_corpus(f"shards:{good}")
    with pytest.raises(ValueError, match="no token shards"):
        load_corpus(f"shards:{tmp_path}/none*.bin")


def test_text_file_and_folder(tmp_path):
    (tmp_path / "a.txt").write_text("hello world " * 200)
    (tmp_path / ".hidden").write_text("secret")
    (tmp_path / "sub").mkdir()
    (tmp_path / "sub" / "b.txt").write_text("more text " * 100)
    single = load_corpus(f"text:{tmp_path / 'a.txt'}")
    assert single.train.n_tokens + single.val.n_tokens == 2400
    folder = load_corpus(f"text:{tmp_path}")
    assert folder.train.n_tokens + folder.val.n_tokens == 2400 + 1000  # hidden file skipped
    assert folder.data_hash != single.data_hash
    assert source_vocab_size(f"text:{tmp_path}") == 256


def test_bad_sources_are_value_errors(tmp_path):
    for source, message in [
        ("wikipedia", "unknown data source"),
        (f"text:{tmp_path}/missing.txt", "does not exist"),
        ("pystdlib?colour=blue", "unknown data option"),
        ("pystdlib?max_mb=x", "must be an integer"),
        ("shards:", "needs a glob"),
    ]:
        with pytest.raises(ValueError, match=message):
            load_corpus(source)


def test_hf_without_datasets_installed(monkeypatch):
    monkeypatch.setitem(sys.modules, "datasets", None)  # makes `import datasets` fail
    data._load_hf.cache_clear()
    with pytest.raises(ValueError, match=r"needs the 'datasets' package.*\[hf\]"):
        load_corpus("hf:roneneldan/TinyStories")


def test_too_short_validation_split_is_rejected(tmp_path):
    (tmp_path / "t.txt").write_text("x" * 300)
    with pytest.raises(ValueError, match="validation split"):
        LMDataModule(load_corpus(f"text:{tmp_path / 't.txt'}"), seq_len=64, batch_size=2, seed=0, val_windows=2)


def test_check_source_split_arithmetic_matches_the_loaded_corpus(tmp_path):
    """check_source decides from file sizes alone; its split must be the one loading makes."""
    from attnres_search.training.data.sources import _stdlib_lengths, _text_lengths, split_lengths

    small = load_corpus("pystdlib?max_mb=1")
    assert split_lengths(_stdlib_lengths(2**20)) == (small.train.n_tokens, small.val.n_tokens)
    folder = tmp_path / "docs"
    folder.mkdir()
    for i in range(25):  # 20 or more documents: every 20th is validation
        (folder / f"{i:02d}.txt").write_bytes(bytes([65 + i]) * (100 + i))
    for source, path in ((f"text:{folder}", folder), (f"text:{folder / '03.txt'}", folder / "03.txt")):
        corpus = load_corpus(source)
        assert split_lengths(_text_lengths(path, 64 * 2**20)) == (corpus.train.n_tokens, corpus.val.n_tokens)


def test_rewritten_shard_is_checked_again(tmp_path):
    from attnres_search.errors import BadInput

    write_shard(tmp_path / "a.bin", np.zeros(500, dtype=np.uint16))
    write_shard(tmp_path / "b.bin", np.full(500, 9, dtype=np.uint16))
    assert load_corpus(f"shards:{tmp_path}/*.bin?vocab=10").val.n_tokens == 500
    write_shard(tmp_path / "b.bin", np.full(600, 10, dtype=np.uint16))  # new size: not the cached scan
    with pytest.raises(BadInput, match="token id 10 at position 0"):
        load_corpus(f"shards:{tmp_path}/*.bin?vocab=10")
