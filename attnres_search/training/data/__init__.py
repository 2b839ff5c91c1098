"""Training data: token corpora, reproducible batches and the Lightning data module.

A data source is named by one string (``RunConfig.data``), optionally followed by
``?key=value&...`` options:

- ``pystdlib`` (default): the ``.py`` files of the running Python's standard library, read
  as bytes (vocab 256). Works offline on every machine. Directories named ``site-packages``,
  ``dist-packages``, ``test``, ``tests``, ``idlelib`` and ``__pycache__`` are skipped: they
  are installed packages or huge test suites, not the library itself (about 11 MB remain on
  CPython 3.11). The corpus differs between Python versions; ``data_hash`` tells them apart.
- ``text:PATH``: one text file, or every non-hidden file under a folder, read as bytes.
- ``shards:GLOB``: nanoGPT / modded-nanogpt ``.bin`` token shards (a 256 x int32 header with
  magic 20240520, version 1 and the token count, then uint16 tokens), memory-mapped. Option
  ``vocab`` (default 50304, GPT-2 padded as in modded-nanogpt) is the data's vocabulary.
  Files with ``val`` in their name are validation; otherwise the last shard (sorted) is.
- ``hf:NAME[:CONFIG]``: the ``train`` split of a Hugging Face dataset (needs the optional
  ``datasets`` package), its text column read as UTF-8 bytes.

Byte sources take the option ``max_mb`` (default 64): documents are read in sorted order
until the cap, so memory stays small and a corpus is a prefix of the full one. With 20 or
more documents every 20th goes to validation (a split by file, so no validation window
shares a file with training); with fewer, the last 5% of the bytes do.

Reproducibility: the training batch of global step ``s`` is a pure function of
``(seed, s, rank)``, so a run resumed mid-way sees exactly the batches it would have seen.
Validation always uses the same ``val_windows`` windows, evenly spaced over the
validation split and independent of the seed, so all trials are scored on the same tokens.
"""

from __future__ import annotations

import functools
import glob
import hashlib
import os
import sysconfig
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import lightning as L
import numpy as np
import torch
from torch import Tensor
from torch.utils.data import DataLoader, IterableDataset, TensorDataset

SHARD_MAGIC = 20240520
SHARD_VERSION = 1
SHARD_HEADER_INTS = 256
DEFAULT_SHARD_VOCAB = 50304
DEFAULT_MAX_MB = 64
VAL_EVERY_NTH_FILE = 20
SMALL_CORPUS_VAL_FRACTION = 0.05
STDLIB_SKIP_DIRS = frozenset({"site-packages", "dist-packages", "test", "tests", "idlelib", "__pycache__"})


class TokenStore:
    """A list of 1-D token arrays (in-memory or memory-mapped) that windows never cross,
    so a window never spans two shards."""

    def __init__(self, arrays: list[np.ndarray]) -> None:
        self.arrays = [a for a in arrays if len(a)]
        self.n_tokens = int(sum(len(a) for a in self.arrays))

    def _starts(self, length: int) -> np.ndarray:
        """Cumulative count of valid window starts per array."""
        return np.cumsum([max(0, len(a) - length + 1) for a in self.arrays])

    def _gather(self, positions: np.ndarray, length: int) -> np.ndarray:
        cum = self._starts(length)
        which = np.searchsorted(cum, positions, side="right")
        out = np.empty((len(positions), length), dtype=np.int64)
        for row, (pos, i) in enumerate(zip(positions.tolist(), which.tolist())):
            offset = pos - (int(cum[i - 1]) if i else 0)
            out[row] = self.arrays[i][offset : offset + length]
        return out

    def n_windows(self, length: int) -> int:
        cum = self._starts(length)
        return int(cum[-1]) if len(cum) else 0

    def sample(self, rng: np.random.Generator, n: int, length: int) -> np.ndarray:
        """``n`` windows of ``length`` tokens at uniformly random positions."""
        return self._gather(rng.integers(0, self.n_windows(length), size=n), length)

    def evenly_spaced(self, n: int, length: int) -> np.ndarray:
        """``n`` windows spread evenly over the store: the fixed validation set."""
        total = self.n_windows(length)
        return self._gather(np.linspace(0, total - 1, n).round().astype(np.int64), length)


@dataclass(frozen=True)
class Corpus:
    """A loaded data source: train and validation tokens plus what identifies them."""

    source: str
    train: TokenStore
    val: TokenStore
    vocab_size: int
    byte_level: bool
    data_hash: str


# --------------------------------------------------------------------------- parsing
def _split_options(source: str) -> tuple[str, dict[str, str]]:
    base, _, query = source.partition("?")
    options: dict[str, str] = {}
    for item in filter(None, query.split("&")):
        key, eq, value = item.partition("=")
        if not eq:
            raise ValueError(f"bad data option {item!r} in {source!r}: expected key=value")
        options[key] = value
    return base, options


def _int_option(options: dict[str, str], key: str, default: int, source: str) -> int:
    try:
        value = int(options.pop(key, default))
    except ValueError:
        raise ValueError(f"data option {key} must be an integer in {source!r}") from None
    if value < 1:
        raise ValueError(f"data option {key} must be positive in {source!r}")
    return value


def load_corpus(source: str) -> Corpus:
    """Load the data source named by ``source`` (see the module docstring)."""
    base, options = _split_options(source)
    kind, _, arg = base.partition(":")
    if kind == "shards":
        if not arg:
            raise ValueError("shards: needs a glob, e.g. shards:data/fineweb_*.bin")
        vocab = _int_option(options, "vocab", DEFAULT_SHARD_VOCAB, source)
        _reject_unknown(options, source)
        return _load_shards(source, arg, vocab)
    max_bytes = _int_option(options, "max_mb", DEFAULT_MAX_MB, source) * 2**20
    _reject_unknown(options, source)
    if kind == "pystdlib" and not arg:
        return _load_pystdlib(source, max_bytes)
    if kind == "text":
        if not arg:
            raise ValueError("text: needs a path, e.g. text:corpus.txt or text:docs/")
        docs, digest = _read_text_path(Path(arg).expanduser(), max_bytes)
        return _byte_corpus(source, docs, digest)
    if kind == "hf":
        if not arg:
            raise ValueError("hf: needs a dataset name, e.g. hf:roneneldan/TinyStories")
        return _load_hf(source, arg, max_bytes)
    raise ValueError(f"unknown data source {source!r}; use pystdlib, text:PATH, shards:GLOB or hf:NAME[:CONFIG]")


def source_vocab_size(source: str) -> int:
    """The vocabulary a source's tokens come from, without loading it (256 for bytes)."""
    base, options = _split_options(source)
    if base.partition(":")[0] == "shards":
        return _int_option(options, "vocab", DEFAULT_SHARD_VOCAB, source)
    return 256


def _reject_unknown(options: dict[str, str], source: str) -> None:
    if options:
        raise ValueError(f"unknown data option(s) {', '.join(sorted(options))} in {source!r}")


# --------------------------------------------------------------------------- byte corpora
def _byte_corpus(source: str, docs: list[bytes], data_hash: str) -> Corpus:
    if not docs or not sum(map(len, docs)):
        raise ValueError(f"data source {source!r} is empty")
    if len(docs) >= VAL_EVERY_NTH_FILE:
        val_docs = docs[VAL_EVERY_NTH_FILE - 1 :: VAL_EVERY_NTH_FILE]
        train_docs = [d for i, d in enumerate(docs) if (i + 1) % VAL_EVERY_NTH_FILE]
        train, val = b"".join(train_docs), b"".join(val_docs)
    else:
        blob = b"".join(docs)
        cut = len(blob) - max(1, int(len(blob) * SMALL_CORPUS_VAL_FRACTION))
        train, val = blob[:cut], blob[cut:]
    train_store = TokenStore([np.frombuffer(train, dtype=np.uint8)])
    val_store = TokenStore([np.frombuffer(val, dtype=np.uint8)])
    return Corpus(source, train_store, val_store, 256, True, data_hash)


def _read_docs(root: Path, paths: list[Path], max_bytes: int) -> tuple[list[bytes], str]:
    """Read files in the given order until ``max_bytes``; hash names and contents."""
    digest = hashlib.sha256()
    docs: list[bytes] = []
    total = 0
    for path in paths:
        if total >= max_bytes:
            break
        data = path.read_bytes()[: max_bytes - total]
        rel = path.relative_to(root).as_posix() if path != root else path.name
        digest.update(rel.encode() + b"\0" + len(data).to_bytes(8, "little") + data)
        docs.append(data)
        total += len(data)
    return docs, digest.hexdigest()


def _stdlib_files(root: Path) -> list[Path]:
    found: list[Path] = []
    for dirpath, dirnames, filenames in os.walk(root):
        dirnames[:] = sorted(d for d in dirnames if d not in STDLIB_SKIP_DIRS)
        found.extend(Path(dirpath) / f for f in filenames if f.endswith(".py"))
    return sorted(found, key=lambda p: p.relative_to(root).as_posix())


@functools.lru_cache(maxsize=2)
def _load_pystdlib(source: str, max_bytes: int) -> Corpus:
    """Cached: a study worker runs many trials on the same immutable corpus."""
    root = Path(sysconfig.get_paths()["stdlib"])
    docs, digest = _read_docs(root, _stdlib_files(root), max_bytes)
    return _byte_corpus(source, docs, digest)


def _read_text_path(path: Path, max_bytes: int) -> tuple[list[bytes], str]:
    if path.is_file():
        return _read_docs(path, [path], max_bytes)
    if not path.is_dir():
        raise ValueError(f"text data path {str(path)!r} does not exist")
    files = sorted(
        (p for p in path.rglob("*") if p.is_file() and not any(part.startswith(".") for part in p.relative_to(path).parts)),
        key=lambda p: p.relative_to(path).as_posix(),
    )
    if not files:
        raise ValueError(f"text data folder {str(path)!r} has no files")
    return _read_docs(path, files, max_bytes)


@functools.lru_cache(maxsize=2)
def _load_hf(source: str, spec: str, max_bytes: int) -> Corpus:
    """Streams the train split so only ``max_bytes`` of text is ever downloaded."""
    try:
        import datasets  # type: ignore[import-not-found]
    except ImportError:
        raise ValueError(
            "the hf: data source needs the 'datasets' package: pip install 'attnres-search[hf]'"
        ) from None
    name, _, config = spec.partition(":")
    try:
        stream = datasets.load_dataset(name, config or None, split="train", streaming=True)
    except Exception as exc:  # noqa: BLE001 - any loading failure is a bad data source
        raise ValueError(f"could not load Hugging Face dataset {spec!r}: {exc}") from exc
    digest = hashlib.sha256(spec.encode())
    docs: list[bytes] = []
    total = 0
    for record in stream:
        text = record.get("text")
        if text is None:
            text = next((v for v in record.values() if isinstance(v, str)), None)
        if text is None:
            raise ValueError(f"Hugging Face dataset {spec!r} has no text column")
        data = text.encode("utf-8")[: max_bytes - total]
        digest.update(len(data).to_bytes(8, "little") + data)
        docs.append(data)
        total += len(data)
        if total >= max_bytes:
            break
    return _byte_corpus(source, docs, digest.hexdigest())


# --------------------------------------------------------------------------- token shards
def write_shard(path: str | os.PathLike[str], tokens: np.ndarray) -> None:
    """Write ``tokens`` (values < 65536) in the nanoGPT / modded-nanogpt shard format."""
    header = np.zeros(SHARD_HEADER_INTS, dtype=np.int32)
    header[:3] = (SHARD_MAGIC, SHARD_VERSION, len(tokens))
    with open(path, "wb") as f:
        f.write(header.tobytes())
        f.write(np.asarray(tokens, dtype=np.uint16).tobytes())


def read_shard(path: str | os.PathLike[str]) -> np.ndarray:
    """Memory-map one shard's tokens, checking its header and length."""
    name = str(path)
    size = os.path.getsize(name)
    header_bytes = SHARD_HEADER_INTS * 4
    if size < header_bytes:
        raise ValueError(f"shard {name!r} is {size} bytes, shorter than its {header_bytes}-byte header")
    header = np.fromfile(name, dtype=np.int32, count=SHARD_HEADER_INTS)
    if header[0] != SHARD_MAGIC:
        raise ValueError(f"shard {name!r} has magic number {header[0]}, expected {SHARD_MAGIC} (not a token shard?)")
    if header[1] != SHARD_VERSION:
        raise ValueError(f"shard {name!r} has version {header[1]}, expected {SHARD_VERSION}")
    count = int(header[2])
    expected = header_bytes + 2 * count
    if size != expected:
        raise ValueError(f"shard {name!r} is {size} bytes but its header promises {count} tokens ({expected} bytes): truncated or corrupt")
    return np.memmap(name, dtype=np.uint16, mode="r", offset=header_bytes, shape=(count,))


def _load_shards(source: str, pattern: str, vocab: int) -> Corpus:
    files = sorted(glob.glob(os.path.expanduser(pattern)))
    if not files:
        raise ValueError(f"no token shards match {pattern!r}")
    val_files = [f for f in files if "val" in os.path.basename(f)]
    if not val_files:
        if len(files) < 2:
            raise ValueError(f"{pattern!r} matches one shard; need a second one (the last is validation) or one named *val*")
        val_files = files[-1:]
    train_files = [f for f in files if f not in val_files]
    if not train_files:
        raise ValueError(f"{pattern!r} matches only validation shards")
    digest = hashlib.sha256()
    arrays: dict[str, np.ndarray] = {}
    for f in files:
        tokens = arrays[f] = read_shard(f)
        # A fingerprint, not a full hash: shards can be many GB.
        digest.update(os.path.basename(f).encode() + b"\0" + len(tokens).to_bytes(8, "little"))
        digest.update(np.asarray(tokens[: 2**16]).tobytes())
    return Corpus(
        source,
        TokenStore([arrays[f] for f in train_files]),
        TokenStore([arrays[f] for f in val_files]),
        vocab,
        False,
        digest.hexdigest(),
    )


# --------------------------------------------------------------------------- batches
def train_batch(store: TokenStore, seed: int, step: int, batch_size: int, seq_len: int, rank: int = 0) -> tuple[Tensor, Tensor]:
    """The (inputs, targets) batch of global step ``step``: a pure function of its arguments."""
    rng = np.random.default_rng([seed, step, rank])
    windows = torch.from_numpy(store.sample(rng, batch_size, seq_len + 1))
    return windows[:, :-1], windows[:, 1:]


class TrainBatches(IterableDataset):
    """Endless stream of training batches starting at global step ``start_step``."""

    def __init__(self, store: TokenStore, *, seed: int, batch_size: int, seq_len: int, start_step: int = 0, rank: int = 0) -> None:
        self.store, self.seed, self.batch_size, self.seq_len = store, seed, batch_size, seq_len
        self.start_step, self.rank = start_step, rank

    def __iter__(self) -> Iterator[tuple[Tensor, Tensor]]:
        step = self.start_step
        while True:
            yield train_batch(self.store, self.seed, step, self.batch_size, self.seq_len, self.rank)
            step += 1


class LMDataModule(L.LightningDataModule):
    """Serves a :class:`Corpus`. The train loader starts at the trainer's global step, which
    Lightning has already restored when resuming, so batches line up with steps."""

    def __init__(self, corpus: Corpus, *, seq_len: int, batch_size: int, seed: int, val_windows: int) -> None:
        super().__init__()
        if seed < 0:
            raise ValueError(f"seed must be non-negative, got {seed}")
        for name, store in (("training", corpus.train), ("validation", corpus.val)):
            if store.n_windows(seq_len + 1) < 1:
                raise ValueError(
                    f"the {name} split of {corpus.source!r} has {store.n_tokens} tokens, fewer than seq_len + 1 = {seq_len + 1}"
                )
        self.corpus, self.seq_len, self.batch_size, self.seed = corpus, seq_len, batch_size, seed
        windows = torch.from_numpy(corpus.val.evenly_spaced(val_windows, seq_len + 1))
        self.val_inputs, self.val_targets = windows[:, :-1], windows[:, 1:]

    def train_dataloader(self) -> DataLoader:
        trainer = self.trainer
        start, rank = (trainer.global_step, trainer.global_rank) if trainer is not None else (0, 0)
        batches = TrainBatches(
            self.corpus.train, seed=self.seed, batch_size=self.batch_size, seq_len=self.seq_len, start_step=start, rank=rank
        )
        return DataLoader(batches, batch_size=None, num_workers=0)

    def val_dataloader(self) -> DataLoader:
        return DataLoader(TensorDataset(self.val_inputs, self.val_targets), batch_size=self.batch_size, shuffle=False)
