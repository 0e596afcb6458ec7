"""Stratified holdout and k-fold splits, and normalisation fitted on training data only."""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import torch
from sklearn.model_selection import StratifiedKFold, train_test_split

from dlpipe.errors import DataError


@dataclass
class Splits:
    """Indices into the dataset: the holdout `test_idx`, the `train_idx` rest, and each train sample's fold."""

    train_idx: np.ndarray
    test_idx: np.ndarray
    fold: np.ndarray  # fold number of train_idx[i]
    folds: int

    def fold_indices(self, k: int) -> tuple[np.ndarray, np.ndarray]:
        """(training indices, validation indices) of fold `k`, both into the dataset."""
        return self.train_idx[self.fold != k], self.train_idx[self.fold == k]


def make_splits(y: np.ndarray, test_size: float, folds: int, seed: int) -> Splits:
    """A stratified holdout test set and stratified k-fold assignment of the rest, both fixed by `seed`."""
    y = np.asarray(y)
    counts = np.bincount(y)
    smallest = int(counts[counts > 0].min())
    n_test = int(np.ceil(test_size * len(y)))
    if smallest < 2 or n_test < len(counts):
        raise DataError(
            f"data.test_size: {test_size} leaves {n_test} test samples for {len(counts)} classes "
            f"(smallest class has {smallest}); stratified splitting needs at least one per class on each side"
        )
    train_idx, test_idx = train_test_split(
        np.arange(len(y)), test_size=test_size, stratify=y, random_state=seed, shuffle=True
    )
    train_idx, test_idx = np.sort(train_idx), np.sort(test_idx)
    smallest_train = int(np.bincount(y[train_idx]).min())
    if smallest_train < folds:
        raise DataError(
            f"data.folds: {folds} folds need at least {folds} training samples per class, smallest has {smallest_train}"
        )
    fold = np.empty(len(train_idx), dtype=np.int64)
    skf = StratifiedKFold(n_splits=folds, shuffle=True, random_state=seed)
    for k, (_, val) in enumerate(skf.split(train_idx, y[train_idx])):
        fold[val] = k
    return Splits(train_idx.astype(np.int64), test_idx.astype(np.int64), fold, folds)


def stratified_subset(y: np.ndarray, size: int, seed: int) -> np.ndarray:
    """Sorted indices of a stratified sample of `size` items (for `data.limit`)."""
    if size >= len(y):
        return np.arange(len(y))
    keep, _ = train_test_split(np.arange(len(y)), train_size=size, stratify=y, random_state=seed)
    return np.sort(keep)


def carve_validation(y: np.ndarray, idx: np.ndarray, fraction: float, seed: int) -> tuple[np.ndarray, np.ndarray]:
    """Split `idx` into (train, validation) with a stratified `fraction` held out for validation."""
    tr, va = train_test_split(idx, test_size=fraction, stratify=y[idx], random_state=seed)
    return np.sort(tr), np.sort(va)


@dataclass
class Normalizer:
    """Per-channel (images) or per-feature (tabular) standardisation."""

    mean: torch.Tensor
    std: torch.Tensor

    @classmethod
    def fit(cls, X: torch.Tensor) -> Normalizer:
        dims = (0, 2, 3) if X.dim() == 4 else (0,)
        mean = X.mean(dim=dims, keepdim=True)[0]
        std = X.std(dim=dims, keepdim=True)[0]
        std = torch.where(std > 1e-8, std, torch.ones_like(std))
        return cls(mean.float(), std.float())

    @classmethod
    def identity(cls, X: torch.Tensor) -> Normalizer:
        shape = (X.shape[1], 1, 1) if X.dim() == 4 else (X.shape[1],)
        return cls(torch.zeros(shape), torch.ones(shape))

    def __call__(self, X: torch.Tensor) -> torch.Tensor:
        return (X - self.mean.to(X.device)) / self.std.to(X.device)
