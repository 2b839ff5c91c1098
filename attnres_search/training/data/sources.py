"""Data sources named by one string (``RunConfig.data``), optionally followed by
``?key=value&...`` options:

- ``pystdlib`` (default): the ``.py`` files of the running Python's standard library, read
  as bytes (vocab 256). Works offline on every machine. Directories named ``site-packages``,
  ``dist-packages``, ``test``, ``tests``, ``idlelib`` and ``__pycache__`` are skipped: they
  are installed packages or huge test suites, not the library itself (about 11 MB remain on
  CPython 3.11). The corpus differs between Python versions; ``data_hash`` tells them apart.
- ``text:PATH``: one text file, or every non-hidden file under a folder, read as bytes.
- ``shards:GLOB``: nanoGPT / modded-nanogpt ``.bin`` token shards (see :mod:`.shards`).
  Option ``vocab`` (default 50304, GPT-2 padded as in modded-nanogpt) is the data's
  vocabulary; every token id must lie below it.
- ``hf:NAME[:CONFIG]``: the ``train`` split of a Hugging Face dataset (needs the optional
  ``datasets`` package), its text column read as UTF-8 bytes.

Byte sources take the option ``max_mb`` (default 64): documents are read in sorted order
until the cap, so memory stays small and a corpus is a prefix of the full one. With 20 or
more documents every 20th goes to validation (a split by file, so no validation window
shares a file with training); with fewer, the last 5% of the bytes do.

:func:`check_source` answers "would this source load, and hold a window of ``seq_len``
tokens in each split?" from file sizes and shard headers alone, so runs are checked
before anything is read or written.
"""

from __future__ import annotations

import functools
import hashlib
import os
import sysconfig
from pathlib import Path

import numpy as np

from attnres_search.errors import BadInput
from attnres_search.training.data.corpus import Corpus, TokenStore, split_too_short
from attnres_search.training.data.shards import DEFAULT_SHARD_VOCAB, load_shards

DEFAULT_MAX_MB = 64
VAL_EVERY_NTH_FILE = 20
SMALL_CORPUS_VAL_FRACTION = 0.05
STDLIB_SKIP_DIRS = frozenset({"site-packages", "dist-packages", "test", "tests", "idlelib", "__pycache__"})
BYTE_VOCAB = 256


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


def _reject_unknown(options: dict[str, str], source: str) -> None:
    if options:
        raise ValueError(f"unknown data option(s) {', '.join(sorted(options))} in {source!r}")


def _parse(source: str) -> tuple[str, str, dict[str, int]]:
    """``(kind, argument, options)`` of a source string, every option checked."""
    if not isinstance(source, str):
        raise BadInput(f"data must be a source string, got {source!r}")
    base, options = _split_options(source)
    kind, _, arg = base.partition(":")
    if kind == "shards":
        if not arg:
            raise ValueError("shards: needs a glob, e.g. shards:data/fineweb_*.bin")
        vocab = _int_option(options, "vocab", DEFAULT_SHARD_VOCAB, source)
        _reject_unknown(options, source)
        return kind, arg, {"vocab": vocab}
    max_bytes = _int_option(options, "max_mb", DEFAULT_MAX_MB, source) * 2**20
    _reject_unknown(options, source)
    if kind == "pystdlib" and not arg:
        return kind, arg, {"max_bytes": max_bytes}
    if kind == "text":
        if not arg:
            raise ValueError("text: needs a path, e.g. text:corpus.txt or text:docs/")
        return kind, arg, {"max_bytes": max_bytes}
    if kind == "hf":
        if not arg:
            raise ValueError("hf: needs a dataset name, e.g. hf:roneneldan/TinyStories")
        return kind, arg, {"max_bytes": max_bytes}
    raise ValueError(f"unknown data source {source!r}; use pystdlib, text:PATH, shards:GLOB or hf:NAME[:CONFIG]")


def load_corpus(source: str) -> Corpus:
    """Load the data source named by ``source`` (see the module docstring)."""
    kind, arg, options = _parse(source)
    if kind == "shards":
        return load_shards(source, arg, options["vocab"])
    if kind == "pystdlib":
        return _load_pystdlib(source, options["max_bytes"])
    if kind == "text":
        docs, digest = _read_text_path(Path(arg).expanduser(), options["max_bytes"])
        return _byte_corpus(source, docs, digest)
    return _load_hf(source, arg, options["max_bytes"])


def source_vocab_size(source: str) -> int:
    """The vocabulary a source's tokens come from, without loading it (256 for bytes)."""
    base, options = _split_options(source)
    if base.partition(":")[0] == "shards":
        return _int_option(options, "vocab", DEFAULT_SHARD_VOCAB, source)
    return BYTE_VOCAB


def check_vocab(source: str, source_vocab: int, model_vocab: int) -> None:
    """The model's embedding must cover every id the source can produce."""
    if source_vocab > model_vocab:
        raise BadInput(f"data {source!r} has vocabulary {source_vocab} but model.vocab_size is {model_vocab}")


def check_source(source: str, *, vocab_size: int, seq_len: int) -> None:
    """Raise :class:`BadInput` when ``source`` would fail to load or to give a model of
    ``vocab_size`` and ``seq_len`` one window per split. Reads sizes and shard headers
    (and, once per shard file, its largest token id), never the whole corpus."""
    try:
        kind, arg, options = _parse(source)
        if kind == "shards":
            check_vocab(source, options["vocab"], vocab_size)
            _check_windows(source, load_shards(source, arg, options["vocab"]), seq_len)
            return
        check_vocab(source, BYTE_VOCAB, vocab_size)
        if kind == "hf":
            _check_hf_installed()
            return
        if kind == "pystdlib":
            lengths = _stdlib_lengths(options["max_bytes"])
        else:
            lengths = _text_lengths(Path(arg).expanduser(), options["max_bytes"])
        if not sum(lengths):
            raise ValueError(f"data source {source!r} is empty")
        train, val = split_lengths(lengths)
        for split, n in (("training", train), ("validation", val)):
            if n < seq_len + 1:
                raise split_too_short(source, split, n, seq_len)
    except BadInput:
        raise
    except ValueError as exc:
        raise BadInput(f"data: {exc}") from None


def _check_windows(source: str, corpus: Corpus, seq_len: int) -> None:
    for split, store in (("training", corpus.train), ("validation", corpus.val)):
        if store.n_windows(seq_len + 1) < 1:
            raise split_too_short(source, split, store.n_tokens, seq_len)


# --------------------------------------------------------------------------- byte corpora
def split_lengths(lengths: list[int]) -> tuple[int, int]:
    """Bytes of the (train, validation) split of documents of these lengths: the
    arithmetic twin of :func:`_byte_corpus`, for checks that must not read the files."""
    if len(lengths) >= VAL_EVERY_NTH_FILE:
        val = sum(lengths[VAL_EVERY_NTH_FILE - 1 :: VAL_EVERY_NTH_FILE])
        return sum(lengths) - val, val
    total = sum(lengths)
    val = max(1, int(total * SMALL_CORPUS_VAL_FRACTION))
    return total - val, val


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
    return Corpus(source, train_store, val_store, BYTE_VOCAB, True, data_hash)


def _capped_lengths(paths: list[Path], max_bytes: int) -> list[int]:
    """Bytes each file contributes when files are read in order until ``max_bytes``."""
    lengths: list[int] = []
    total = 0
    for path in paths:
        if total >= max_bytes:
            break
        try:
            size = path.stat().st_size
        except OSError as exc:
            raise BadInput(f"cannot read data file {str(path)!r}: {exc.strerror or exc}") from None
        lengths.append(min(size, max_bytes - total))
        total += lengths[-1]
    return lengths


def _read_docs(root: Path, paths: list[Path], max_bytes: int) -> tuple[list[bytes], str]:
    """Read files in the given order until ``max_bytes``; hash names and contents."""
    digest = hashlib.sha256()
    docs: list[bytes] = []
    total = 0
    for path in paths:
        if total >= max_bytes:
            break
        try:
            data = path.read_bytes()[: max_bytes - total]
        except OSError as exc:
            raise BadInput(f"cannot read data file {str(path)!r}: {exc.strerror or exc}") from None
        rel = path.relative_to(root).as_posix() if path != root else path.name
        digest.update(rel.encode() + b"\0" + len(data).to_bytes(8, "little") + data)
        docs.append(data)
        total += len(data)
    return docs, digest.hexdigest()


def _stdlib_root() -> Path:
    return Path(sysconfig.get_paths()["stdlib"])


@functools.lru_cache(maxsize=1)
def _stdlib_files(root: Path) -> list[Path]:
    found: list[Path] = []
    for dirpath, dirnames, filenames in os.walk(root):
        dirnames[:] = sorted(d for d in dirnames if d not in STDLIB_SKIP_DIRS)
        found.extend(Path(dirpath) / f for f in filenames if f.endswith(".py"))
    return sorted(found, key=lambda p: p.relative_to(root).as_posix())


@functools.lru_cache(maxsize=2)
def _stdlib_lengths(max_bytes: int) -> list[int]:
    return _capped_lengths(_stdlib_files(_stdlib_root()), max_bytes)


@functools.lru_cache(maxsize=2)
def _load_pystdlib(source: str, max_bytes: int) -> Corpus:
    """Cached: a study worker runs many trials on the same immutable corpus."""
    root = _stdlib_root()
    docs, digest = _read_docs(root, _stdlib_files(root), max_bytes)
    return _byte_corpus(source, docs, digest)


def _text_files(path: Path) -> tuple[Path, list[Path]]:
    """``(root, files)`` of a ``text:`` path: the file itself, or a folder's non-hidden files."""
    if path.is_file():
        return path, [path]
    if not path.is_dir():
        raise ValueError(f"text data path {str(path)!r} does not exist")
    files = sorted(
        (p for p in path.rglob("*") if p.is_file() and not any(part.startswith(".") for part in p.relative_to(path).parts)),
        key=lambda p: p.relative_to(path).as_posix(),
    )
    if not files:
        raise ValueError(f"text data folder {str(path)!r} has no files")
    return path, files


def _text_lengths(path: Path, max_bytes: int) -> list[int]:
    """Sizes of what a ``text:`` source would read, each file opened once to prove it
    readable (a folder the user cannot read fails here, not mid-run)."""
    _, files = _text_files(path)
    lengths = _capped_lengths(files, max_bytes)
    for f in files[: len(lengths)]:
        try:
            with open(f, "rb"):
                pass
        except OSError as exc:
            raise BadInput(f"cannot read data file {str(f)!r}: {exc.strerror or exc}") from None
    return lengths


def _read_text_path(path: Path, max_bytes: int) -> tuple[list[bytes], str]:
    root, files = _text_files(path)
    return _read_docs(root, files, max_bytes)


def _check_hf_installed() -> None:
    try:
        import datasets  # type: ignore[import-not-found]  # noqa: F401
    except ImportError:
        raise ValueError(
            "the hf: data source needs the 'datasets' package: pip install 'attnres-search[hf]'"
        ) from None


@functools.lru_cache(maxsize=2)
def _load_hf(source: str, spec: str, max_bytes: int) -> Corpus:
    """Streams the train split so only ``max_bytes`` of text is ever downloaded."""
    _check_hf_installed()
    import datasets  # type: ignore[import-not-found]

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
