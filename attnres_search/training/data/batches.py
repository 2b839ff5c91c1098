"""Reproducible training batches: the batch of global step ``s`` is a pure function of
``(seed, s, rank)``, so a run resumed mid-way sees exactly the batches it would have seen
and every variant trained with the same seed sees the same data order."""

from __future__ import annotations

from collections.abc import Iterator

import numpy as np
import torch
from torch import Tensor
from torch.utils.data import IterableDataset

from attnres_search.training.data.corpus import TokenStore


def train_batch(store: TokenStore, seed: int, step: int, batch_size: int, seq_len: int, rank: int = 0) -> tuple[Tensor, Tensor]:
    """The (inputs, targets) batch of global step ``step``: a pure function of its arguments."""
    rng = np.random.default_rng([seed, step, rank])
    windows = torch.from_numpy(store.sample(rng, batch_size, seq_len + 1))
    return windows[:, :-1], windows[:, 1:]


def fixed_val_windows(store: TokenStore, n: int, seq_len: int) -> tuple[Tensor, Tensor]:
    """The fixed validation set: ``n`` windows evenly spaced over the split, independent of
    the seed, so all trials are scored on the same tokens."""
    windows = torch.from_numpy(store.evenly_spaced(n, seq_len + 1))
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
