"""The LightningDataModule that serves a loaded :class:`Corpus` to the Trainer."""

from __future__ import annotations

import lightning as L
from torch.utils.data import DataLoader, TensorDataset

from attnres_search.training.data.batches import TrainBatches, fixed_val_windows
from attnres_search.training.data.corpus import Corpus, split_too_short


class LMDataModule(L.LightningDataModule):
    """Serves a :class:`Corpus`. The train loader starts at the trainer's global step, which
    Lightning has already restored when resuming, so batches line up with steps."""

    def __init__(self, corpus: Corpus, *, seq_len: int, batch_size: int, seed: int, val_windows: int) -> None:
        super().__init__()
        if seed < 0:
            raise ValueError(f"seed must be non-negative, got {seed}")
        for name, store in (("training", corpus.train), ("validation", corpus.val)):
            if store.n_windows(seq_len + 1) < 1:
                raise split_too_short(corpus.source, name, store.n_tokens, seq_len)
        self.corpus, self.seq_len, self.batch_size, self.seed = corpus, seq_len, batch_size, seed
        self.val_inputs, self.val_targets = fixed_val_windows(corpus.val, val_windows, seq_len)

    def train_dataloader(self) -> DataLoader:
        trainer = self.trainer
        start, rank = (trainer.global_step, trainer.global_rank) if trainer is not None else (0, 0)
        batches = TrainBatches(
            self.corpus.train, seed=self.seed, batch_size=self.batch_size, seq_len=self.seq_len, start_step=start, rank=rank
        )
        return DataLoader(batches, batch_size=None, num_workers=0)

    def val_dataloader(self) -> DataLoader:
        return DataLoader(TensorDataset(self.val_inputs, self.val_targets), batch_size=self.batch_size, shuffle=False)

