"""Training data, split by concern:

- :mod:`.sources`: the named data sources (``pystdlib``, ``text:``, ``shards:``, ``hf:``),
  loading and the no-read :func:`check_source`;
- :mod:`.shards`: the nanoGPT ``.bin`` token-shard format;
- :mod:`.corpus`: :class:`Corpus` and :class:`TokenStore`, what every source loads into;
- :mod:`.batches`: reproducible ``(seed, step, rank)`` batches and the fixed validation windows;
- :mod:`.datamodule`: the LightningDataModule.

The names other modules and tests import are re-exported here; the DataModule lazily,
so that checking a run (:func:`check_source`) never pays for importing Lightning.
"""

from attnres_search.training.data.batches import TrainBatches, fixed_val_windows, train_batch
from attnres_search.training.data.corpus import Corpus, TokenStore
from attnres_search.training.data.shards import (
    DEFAULT_SHARD_VOCAB,
    SHARD_HEADER_INTS,
    SHARD_MAGIC,
    SHARD_VERSION,
    check_token_ids,
    read_shard,
    write_shard,
)
from attnres_search.training.data.sources import (
    DEFAULT_MAX_MB,
    _load_hf,
    _load_pystdlib,
    check_source,
    check_vocab,
    load_corpus,
    source_vocab_size,
)

from typing import Any


def __getattr__(name: str) -> Any:
    if name == "LMDataModule":
        from attnres_search.training.data.datamodule import LMDataModule

        return LMDataModule
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")


__all__ = [
    "DEFAULT_MAX_MB",
    "DEFAULT_SHARD_VOCAB",
    "SHARD_HEADER_INTS",
    "SHARD_MAGIC",
    "SHARD_VERSION",
    "Corpus",
    "LMDataModule",
    "TokenStore",
    "TrainBatches",
    "_load_hf",
    "_load_pystdlib",
    "check_source",
    "check_token_ids",
    "check_vocab",
    "fixed_val_windows",
    "load_corpus",
    "read_shard",
    "source_vocab_size",
    "train_batch",
    "write_shard",
]
