"""What every data source loads into: a :class:`Corpus` of train and validation
:class:`TokenStore`\\ s. Kept apart from the sources and the shard reader so that both
build it without importing each other."""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np


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


def split_too_short(corpus_source: str, split: str, n_tokens: int, seq_len: int) -> ValueError:
    """The one message for a split that holds no window of ``seq_len + 1`` tokens."""
    return ValueError(
        f"the {split} split of {corpus_source!r} has {n_tokens} tokens, fewer than seq_len + 1 = {seq_len + 1}"
    )
