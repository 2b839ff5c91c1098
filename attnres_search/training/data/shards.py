"""nanoGPT / modded-nanogpt ``.bin`` token shards: a 256 x int32 header (magic 20240520,
version 1, token count) followed by uint16 tokens, memory-mapped.

Every token id is checked against the source's vocabulary when shards are loaded (one
vectorised max per file, remembered per file size and modification time), because an id
at or above the vocabulary would otherwise surface as an ``IndexError`` deep inside the
embedding, many steps into a run.
"""

from __future__ import annotations

import functools
import glob
import hashlib
import os

import numpy as np

from attnres_search.errors import BadInput
from attnres_search.training.data.corpus import Corpus, TokenStore

SHARD_MAGIC = 20240520
SHARD_VERSION = 1
SHARD_HEADER_INTS = 256
DEFAULT_SHARD_VOCAB = 50304


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
    try:
        size = os.path.getsize(name)
        header_bytes = SHARD_HEADER_INTS * 4
        if size < header_bytes:
            raise ValueError(f"shard {name!r} is {size} bytes, shorter than its {header_bytes}-byte header")
        header = np.fromfile(name, dtype=np.int32, count=SHARD_HEADER_INTS)
    except OSError as exc:
        raise BadInput(f"cannot read shard {name!r}: {exc.strerror or exc}") from None
    if header[0] != SHARD_MAGIC:
        raise ValueError(f"shard {name!r} has magic number {header[0]}, expected {SHARD_MAGIC} (not a token shard?)")
    if header[1] != SHARD_VERSION:
        raise ValueError(f"shard {name!r} has version {header[1]}, expected {SHARD_VERSION}")
    count = int(header[2])
    expected = header_bytes + 2 * count
    if size != expected:
        raise ValueError(f"shard {name!r} is {size} bytes but its header promises {count} tokens ({expected} bytes): truncated or corrupt")
    return np.memmap(name, dtype=np.uint16, mode="r", offset=header_bytes, shape=(count,))


@functools.lru_cache(maxsize=1024)
def _max_token(name: str, size: int, mtime_ns: int) -> int:
    """Largest token id in a shard; the size and mtime key the cache so a rewritten file
    is scanned again."""
    tokens = read_shard(name)
    return int(tokens.max()) if len(tokens) else -1


def check_token_ids(name: str, vocab: int) -> None:
    """Every token id of shard ``name`` lies below ``vocab``; else :class:`BadInput`
    naming the file, the first offending id and its position."""
    stat = os.stat(name)
    if _max_token(name, stat.st_size, stat.st_mtime_ns) < vocab:
        return
    tokens = read_shard(name)
    position = int(np.argmax(tokens >= vocab))
    raise BadInput(
        f"shard {name!r} holds token id {int(tokens[position])} at position {position}, "
        f"not below the vocabulary vocab={vocab} (set ?vocab= to the tokenizer's size)"
    )


def shard_files(pattern: str) -> tuple[list[str], list[str]]:
    """``(train_files, val_files)`` matched by ``pattern``: files with ``val`` in their name
    are validation; otherwise the last shard (sorted) is."""
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
    return train_files, val_files


def load_shards(source: str, pattern: str, vocab: int) -> Corpus:
    train_files, val_files = shard_files(pattern)
    digest = hashlib.sha256()
    arrays: dict[str, np.ndarray] = {}
    for f in sorted(train_files + val_files):
        tokens = arrays[f] = read_shard(f)
        check_token_ids(f, vocab)
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
