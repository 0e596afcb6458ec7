"""The prepared dataset as the training code sees it: normalised tensors for folds, train/val and test.

Normalisation statistics always come from the samples a model trains on; validation, scored and test samples are
transformed with them, never fitted. Every part keeps the dataset indices of its rows, so what a model saw can be
checked.

- `holdout`: the training part minus a stratified validation slice (early stopping, keeping the best epoch).
- `fold(k)`: clean cross-validation. The model trains on the other folds minus an inner stratified validation slice
  (early stopping and the best epoch are chosen there), and fold k is scored once, never monitored.
- `test`: the held-out test set, normalised with a given split's statistics (final evaluation only).
"""

from __future__ import annotations

from dataclasses import dataclass, replace
from pathlib import Path

import numpy as np
import torch

from dlpipe.data.base import Dataset
from dlpipe.data.splits import Normalizer, Splits, carve_validation
from dlpipe.data.store import SPLITS_FILE, load_saved_dataset, load_splits


@dataclass
class Part:
    X: torch.Tensor
    y: torch.Tensor
    idx: np.ndarray | None = None  # dataset indices of the rows (None: not from a PreparedData)

    def __len__(self) -> int:
        return len(self.y)


@dataclass
class TrainValSplit:
    train: Part
    val: Part
    normalizer: Normalizer


@dataclass
class FoldSplit:
    """Cross-validation fold `k`: `fit` (train + inner validation, from the other folds) and `scored` (fold k)."""

    k: int
    fit: TrainValSplit
    scored: Part


@dataclass
class PreparedData:
    dataset: Dataset  # the (possibly subsampled) dataset the splits index into
    splits: Splits
    normalize: bool = True

    @classmethod
    def load(cls, raw_dir: Path, prepared_dir: Path, normalize: bool = True) -> PreparedData:
        ds = load_saved_dataset(raw_dir)
        splits, subset = load_splits(prepared_dir / SPLITS_FILE)
        if len(subset) != len(ds):
            idx = torch.from_numpy(subset)
            ds = replace(ds, X=ds.X[idx], y=ds.y[idx])
        return cls(ds, splits, normalize)

    @property
    def y_numpy(self) -> np.ndarray:
        return self.dataset.y.numpy()

    def part(self, idx: np.ndarray, normalizer: Normalizer) -> Part:
        rows = torch.from_numpy(idx)
        return Part(normalizer(self.dataset.X[rows]), self.dataset.y[rows], idx)

    def split(self, train_idx: np.ndarray, val_idx: np.ndarray) -> TrainValSplit:
        """Train on `train_idx` (normaliser fitted there), validate on `val_idx`."""
        norm = Normalizer.fit(self.dataset.X[torch.from_numpy(train_idx)], self.dataset.features, self.normalize)
        return TrainValSplit(self.part(train_idx, norm), self.part(val_idx, norm), norm)

    def holdout(self, val_size: float, seed: int) -> TrainValSplit:
        """The training part with a stratified `val_size` slice carved out for validation (never the test set)."""
        return self.split(*carve_validation(self.y_numpy, self.splits.train_idx, val_size, seed))

    def fold(self, k: int, val_size: float, seed: int) -> FoldSplit:
        """Fold `k` scored once; early stopping on a `val_size` slice carved from the other folds."""
        others, scored = self.splits.fold_indices(k)
        fit = self.split(*carve_validation(self.y_numpy, others, val_size, seed))
        return FoldSplit(k, fit, self.part(scored, fit.normalizer))

    def test(self, normalizer: Normalizer) -> Part:
        """The held-out test set, transformed with a model's training statistics (final evaluation only)."""
        return self.part(self.splits.test_idx, normalizer)

    def raw(self, idx: np.ndarray) -> torch.Tensor:
        """Untransformed inputs of `idx` (what a logged model receives)."""
        return self.dataset.X[torch.from_numpy(idx)]
