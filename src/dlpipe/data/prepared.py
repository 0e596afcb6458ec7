"""The prepared dataset as the training code sees it: normalised tensors for folds, train/val and test.

Normalisation statistics always come from the samples a model trains on (the training folds of a CV split, the
training part for the final model); validation and test samples are transformed with them, never fitted.
"""

from __future__ import annotations

from dataclasses import dataclass
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

    def __len__(self) -> int:
        return len(self.y)


@dataclass
class TrainValSplit:
    train: Part
    val: Part
    normalizer: Normalizer


@dataclass
class PreparedData:
    dataset: Dataset  # the (possibly subsampled) dataset the splits index into
    splits: Splits
    normalize: bool = True

    @classmethod
    def load(cls, raw_dir: Path, prepared_dir: Path, normalize: bool = True) -> PreparedData:
        ds = load_saved_dataset(raw_dir)
        splits, _, subset = load_splits(prepared_dir / SPLITS_FILE)
        if len(subset) != len(ds):
            idx = torch.from_numpy(subset)
            ds = Dataset(ds.name, ds.X[idx], ds.y[idx], ds.kind, ds.class_names)
        return cls(ds, splits, normalize)

    @property
    def y_numpy(self) -> np.ndarray:
        return self.dataset.y.numpy()

    def _split(self, train_idx: np.ndarray, val_idx: np.ndarray) -> TrainValSplit:
        X, y = self.dataset.X, self.dataset.y
        tr, va = torch.from_numpy(train_idx), torch.from_numpy(val_idx)
        norm = Normalizer.fit(X[tr]) if self.normalize else Normalizer.identity(X)
        return TrainValSplit(Part(norm(X[tr]), y[tr]), Part(norm(X[va]), y[va]), norm)

    def fold(self, k: int) -> TrainValSplit:
        """Train on every fold but `k`, validate on fold `k`."""
        return self._split(*self.splits.fold_indices(k))

    def holdout(self, val_size: float, seed: int) -> TrainValSplit:
        """The training part with a stratified `val_size` slice carved out for validation (never the test set)."""
        return self._split(*carve_validation(self.y_numpy, self.splits.train_idx, val_size, seed))

    def train_test(self) -> TrainValSplit:
        """The whole training part, and the held-out test set as `val` (final evaluation only)."""
        return self._split(self.splits.train_idx, self.splits.test_idx)
