"""Stratified holdout and k-fold splits, and normalisation fitted on training data only."""

from __future__ import annotations

from dataclasses import dataclass, replace
from typing import Any

import numpy as np
import torch
from sklearn.model_selection import StratifiedKFold, train_test_split
from torch import nn

from dlpipe.data.base import PIXEL_MAX, UNKNOWN, Features, pixels_to_float
from dlpipe.data.text import TextEncoder
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


def make_splits(
    y: np.ndarray, test_size: float, folds: int, seed: int, official_test: np.ndarray | None = None
) -> Splits:
    """A stratified holdout test set and stratified k-fold assignment of the rest, both fixed by `seed`. With
    `official_test` (a flag per sample) the flagged samples are the test set and the folds split the rest."""
    y = np.asarray(y)
    if official_test is not None:
        official_test = np.asarray(official_test, dtype=bool)
        return _assign_folds(y, np.flatnonzero(~official_test), np.flatnonzero(official_test), folds, seed)
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
    return _assign_folds(y, np.sort(train_idx), np.sort(test_idx), folds, seed)


def _assign_folds(y: np.ndarray, train_idx: np.ndarray, test_idx: np.ndarray, folds: int, seed: int) -> Splits:
    smallest_train = int(np.bincount(y[train_idx], minlength=int(y.max()) + 1).min())
    if smallest_train < folds:
        raise DataError(
            f"data.folds: {folds} folds need at least {folds} training samples per class, smallest has {smallest_train}"
        )
    fold = np.empty(len(train_idx), dtype=np.int64)
    skf = StratifiedKFold(n_splits=folds, shuffle=True, random_state=seed)
    for k, (_, val) in enumerate(skf.split(train_idx, y[train_idx])):
        fold[val] = k
    return Splits(train_idx.astype(np.int64), test_idx.astype(np.int64), fold, folds)


def split_problems(counts: np.ndarray, data: Any, source: str, labeled_min: int = 1) -> list[str]:
    """What the stages would refuse or crash on for a dataset with these class counts and `data` params
    (DataParams), known before anything is fetched or split (the check stage): at most one line, naming the key.

    Every training part must hold every class: a fold's training folds (baselines fit there), the same with the
    validation slice carved out (deep models), the whole training part with its slice carved out (tuning, final
    fit); with `data.labeled_fraction` < 1, their labelled parts too, at least `labeled_min` of each class in the
    baselines' (their inner cross-validation). Class counts after a split are bounded from below (sklearn gives a
    class the floor or ceiling of its share); data.limit subsamples are approximate."""
    counts = np.asarray(counts, dtype=float)
    counts = counts[counts > 0]
    total = counts.sum()
    if data.limit is not None and data.limit < total:
        if total - data.limit < len(counts):  # sklearn's stratified subsample leaves out one of each class at least
            return [
                f"{source}: data.limit: {data.limit} of {int(total)} samples is a stratified subsample only up to "
                f"{int(total) - len(counts)} ({len(counts)} classes); use that or less, or null for all"
            ]
        counts, total = np.floor(counts * data.limit / total), float(data.limit)
    smallest = int(counts.min()) if len(counts) else 0
    n_test = int(np.ceil(data.test_size * total))
    if smallest < 2 or n_test < len(counts):
        return [
            f"{source}: data.test_size: {data.test_size} of {int(total)} samples leaves {n_test} test "
            f"samples for {len(counts)} classes (smallest class has {smallest}); stratified splitting "
            "needs at least one per class on each side"
        ]
    train = counts - np.ceil(counts * n_test / total)
    if train.min() < data.folds:
        return [
            f"{source}: data.folds: {data.folds} folds need at least {data.folds} training samples per "
            f"class; the smallest class has about {int(train.min())}"
        ]
    others = train - np.ceil(train / data.folds)  # a fold's training folds
    parts = {}
    for name, part in (("a fold's training part", others), ("the training part", train)):
        carved = _carved(part, data.val_size)
        if carved is None or carved.min() < 1:
            return [
                f"{source}: data.val_size: {data.val_size} of {name} ({int(part.sum())} samples) leaves too "
                f"few to train on for {len(counts)} classes; use more data (data.limit) or fewer folds"
            ]
        parts[name] = carved
    if data.labeled_fraction >= 1:
        return []
    needs = [(others, labeled_min), (train, labeled_min), *((p, 1) for p in parts.values())]
    short = [(part, need) for part, need in needs if _labeled_min(part, data.labeled_fraction) < need]
    if not short:
        return []
    part, need = short[0]
    kept = max(_labeled_min(part, data.labeled_fraction), 0)
    why = " (the baselines' inner cross-validation)" if need > 1 else ""
    enough = _least_fraction(needs)
    hint = f"use at least {enough:.3g}" if enough is not None else "use more data (data.limit) or fewer folds"
    return [
        f"{source}: data.labeled_fraction: {data.labeled_fraction} of a training part of {int(part.sum())} "
        f"samples keeps about {kept} labelled samples of its smallest class; every class needs at least "
        f"{need}{why}; {hint}"
    ]


def _carved(part: np.ndarray, fraction: float) -> np.ndarray | None:
    """Per-class lower bound of what `carve_validation` leaves to train on; None where it refuses."""
    n, classes = part.sum(), len(part)
    size = max(int(np.ceil(fraction * n)), classes)
    if size >= n - classes + 1:
        return None
    return part - np.ceil(part * size / n)


def _labeled_min(part: np.ndarray, fraction: float) -> int:
    """Lower bound of the smallest class's labelled samples `labeled_subset` keeps of a part with these class counts
    (-1: it cannot stratify, so a class may get none or sklearn refuses)."""
    n, classes = part.sum(), len(part)
    size = max(int(np.ceil(fraction * n)), classes)
    if size >= n:
        return int(part.min())
    if min(size, n - size) < classes or part.min() < 2:
        return -1
    return int(np.floor(part * size / n).min())


def _least_fraction(needs: list[tuple[np.ndarray, int]]) -> float | None:
    """The smallest data.labeled_fraction (to 3 significant digits) that meets every need, None if none below 1."""

    def ok(fraction: float) -> bool:
        return all(_labeled_min(part, fraction) >= need for part, need in needs)

    if not ok(1.0 - 1e-9):
        return None
    lo, hi = 0.0, 1.0
    for _ in range(40):
        mid = (lo + hi) / 2
        lo, hi = (lo, mid) if ok(mid) else (mid, hi)
    rounded = float(f"{hi:.3g}")
    return rounded if ok(rounded) else float(f"{hi * 1.001:.3g}")


def stratified_subset(y: np.ndarray, size: int, seed: int) -> np.ndarray:
    """Sorted indices of a stratified sample of `size` items (for `data.limit`)."""
    return stratified_rows(y, np.arange(len(y)), size, seed)


def stratified_rows(y: np.ndarray, idx: np.ndarray, size: int | None, seed: int) -> np.ndarray:
    """`idx`, or a stratified sample of `size` of them (sorted) when it holds more: the rows a fit may be cut to
    (`tune.max_train_samples`, `baselines.max_train_samples`)."""
    if size is None or len(idx) <= size:
        return idx
    keep, _ = train_test_split(idx, train_size=size, stratify=y[idx], random_state=seed)
    return np.sort(keep)


def carve_validation(y: np.ndarray, idx: np.ndarray, fraction: float, seed: int) -> tuple[np.ndarray, np.ndarray]:
    """Split `idx` into (train, validation) with a stratified `fraction` held out for validation (at least one
    sample per class, so that a small fold still has a usable validation slice)."""
    classes = len(np.unique(y[idx]))
    size = max(int(np.ceil(fraction * len(idx))), classes)
    if size >= len(idx) - classes + 1:
        raise DataError(
            f"data.val_size: {fraction} of {len(idx)} samples leaves too few to train on for {classes} classes; "
            "use more data (data.limit) or fewer folds"
        )
    tr, va = train_test_split(idx, test_size=size, stratify=y[idx], random_state=seed)
    return np.sort(tr), np.sort(va)


def labeled_subset(y: np.ndarray, idx: np.ndarray, fraction: float, seed: int) -> tuple[np.ndarray, np.ndarray]:
    """Split the training indices `idx` into (labelled, unlabelled) for `data.labeled_fraction`: a stratified
    `fraction` of them, fixed by `seed`, keeps its labels (never fewer samples than classes); 1 keeps every label."""
    idx = np.asarray(idx)
    if fraction >= 1:
        return idx, idx[:0]
    classes = len(np.unique(y[idx]))
    size = max(int(np.ceil(fraction * len(idx))), classes)
    if size >= len(idx):
        return idx, idx[:0]
    # stratified while both sides can hold every class (sklearn's requirement), else a plain seeded draw
    stratify = y[idx] if min(size, len(idx) - size) >= classes else None
    labeled, unlabeled = train_test_split(idx, train_size=size, stratify=stratify, random_state=seed)
    return np.sort(labeled), np.sort(unlabeled)


@dataclass
class Normalizer:
    """Per-channel (images) or per-feature (tabular) standardisation, fitted on the samples a model trains on.

    Categorical columns (`features`) hold codes: they are never scaled. A code the fitted samples did not show (a
    category met only in validation, test or serving data, or no valid code at all) becomes the unknown code 0, so
    what the model never trained on is treated alike wherever it appears. `seen` holds, per categorical column in
    order, one flag per code. `module()` is the same transform as an nn.Module (the exported model carries it).
    """

    mean: torch.Tensor
    std: torch.Tensor
    features: Features | None = None
    seen: torch.Tensor | None = None
    per_series: bool = False  # sequences: z-normalise each series on its own first (data.znormalize)
    text: TextEncoder | None = None  # text: the tokenizer fitted on the training rows (token ids are not scaled)

    @classmethod
    def for_text(cls, encoder: TextEncoder) -> Normalizer:
        """Text: token ids pass unscaled; `encoder` turns the split's text into them."""
        return cls(torch.zeros(1, 1), torch.ones(1, 1), text=encoder)

    @property
    def vocabulary(self) -> int | None:
        """How many token ids a text model embeds (None: not text)."""
        return None if self.text is None else self.text.size

    @classmethod
    def fit(
        cls, X: torch.Tensor, features: Features | None = None, standardize: bool = True, per_series: bool = False
    ) -> Normalizer:
        """Statistics of `X` (with `standardize`; else mean 0, std 1) and the codes each categorical column shows.
        Sequences (N x channels x length): per-channel statistics over the steps that are not padding; with
        `per_series`, of the series z-normalised one by one (`znormalize_series`), which is applied first.
        8-bit pixels (uint8): the statistics of X / 255, computed in chunks (no float copy of X)."""
        if X.dtype == torch.uint8:
            mean, std = _pixel_stats(X) if standardize else (cls.identity(X).mean, cls.identity(X).std)
            return cls(mean, std)
        if X.dim() == 3:
            X = znormalize_series(X) if per_series else X
            mean, std = _channel_stats(X) if standardize else (cls.identity(X).mean, cls.identity(X).std)
            return cls(mean, std, per_series=per_series)
        if standardize:
            dims = (0, 2, 3) if X.dim() == 4 else (0,)
            mean = X.mean(dim=dims, keepdim=True)[0].float()
            std = X.std(dim=dims, keepdim=True)[0].float()
            std = torch.where(std > 1e-8, std, torch.ones_like(std))
        else:
            mean, std = cls.identity(X).mean, cls.identity(X).std
        columns = features.categorical if features is not None else []
        if not columns:
            return cls(mean, std, features)
        mean, std = mean.clone(), std.clone()
        mean[columns], std[columns] = 0.0, 1.0
        seen = []
        for i in columns:
            size = features.cardinality(i)
            codes = X[:, i].long().clamp(0, size - 1)
            shown = torch.bincount(codes, minlength=size) > 0
            shown[UNKNOWN] = True
            seen.append(shown)
        return cls(mean, std, features, torch.cat(seen))

    @classmethod
    def identity(cls, X: torch.Tensor) -> Normalizer:
        shape = (X.shape[1], *[1] * (X.dim() - 2))
        return cls(torch.zeros(shape), torch.ones(shape))

    def module(self) -> InputTransform:
        return InputTransform(self)

    def to(self, device: torch.device | str) -> Normalizer:
        """The same statistics on `device` (self when they are there already)."""
        if self.mean.device == torch.device(device):
            return self
        return replace(self, mean=self.mean.to(device), std=self.std.to(device))

    def apply_(self, X: torch.Tensor) -> torch.Tensor:
        """`self(X)` written into `X` itself where it can be (no copy of a large part): X must be a fresh tensor.
        8-bit pixels (uint8) are read as X / 255 into one new float32 tensor, normalised there."""
        X = pixels_to_float(X)
        if self.seen is not None or self.per_series or not X.is_floating_point():
            return self(X)
        return X.sub_(self.mean.to(X.device, X.dtype)).div_(self.std.to(X.device, X.dtype))

    def __call__(self, X: torch.Tensor) -> torch.Tensor:
        X = pixels_to_float(X)
        if self.seen is None:
            X = znormalize_series(X) if self.per_series else X
            return (X - self.mean.to(X.device)) / self.std.to(X.device)
        with torch.no_grad():
            return self.module().to(X.device)(X)


def znormalize_series(X: torch.Tensor) -> torch.Tensor:
    """Each series of a sequence batch (N x channels x length), channel by channel, to mean 0 and standard deviation
    1 over its own steps (NaN padding is left as it is; a constant channel only loses its mean)."""
    mean = X.nanmean(dim=-1, keepdim=True)
    std = (X - mean).square().nanmean(dim=-1, keepdim=True).sqrt()
    return (X - mean) / torch.where(std > 1e-8, std, torch.ones_like(std))


def _pixel_stats(X: torch.Tensor, chunk: int = 1 << 22) -> tuple[torch.Tensor, torch.Tensor]:
    """Per-channel mean and (unbiased) standard deviation of 8-bit images X / 255 (N x C x H x W uint8; shape
    C x 1 x 1), as `Normalizer.fit` gives them for the float images: sums of the pixels and their squares in float64,
    exact for integers, about `chunk` pixels at a time (no float copy of X)."""
    rows = max(1, chunk // max(X[0].numel(), 1))
    total = torch.zeros(X.shape[1], dtype=torch.float64)
    squares = torch.zeros(X.shape[1], dtype=torch.float64)
    for start in range(0, len(X), rows):
        part = X[start : start + rows].double()
        total += part.sum(dim=(0, 2, 3))
        squares += part.square().sum(dim=(0, 2, 3))
    n = len(X) * X.shape[2] * X.shape[3]
    mean = total / n
    var = (squares - total * mean) / max(n - 1, 1)
    std = var.clamp_min(0).sqrt() / PIXEL_MAX
    std = torch.where(std > 1e-8, std, torch.ones_like(std))
    return (mean / PIXEL_MAX).float()[:, None, None], std.float()[:, None, None]


def _channel_stats(X: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """Per-channel mean and standard deviation (shape channels x 1) over every step of every series that is not
    padding."""
    mean = X.transpose(0, 1).flatten(1).nanmean(dim=1)[:, None]
    std = (X - mean).square().transpose(0, 1).flatten(1).nanmean(dim=1).sqrt()[:, None]
    return mean.float(), torch.where(std > 1e-8, std, torch.ones_like(std)).float()


class InputTransform(nn.Module):
    """A `Normalizer` as a module: standardise, then map codes the fitted data never showed to the unknown code."""

    def __init__(self, norm: Normalizer):
        super().__init__()
        self.register_buffer("mean", norm.mean.detach().float().cpu().clone())
        self.register_buffer("std", norm.std.detach().float().cpu().clone())
        self.per_series = norm.per_series
        columns = norm.features.categorical if norm.features is not None and norm.seen is not None else []
        self.codes = bool(columns)
        if self.codes:
            sizes = torch.tensor([norm.features.cardinality(i) for i in columns])
            self.register_buffer("columns", torch.tensor(columns))
            self.register_buffer("sizes", sizes)
            self.register_buffer("offsets", torch.cumsum(sizes, 0) - sizes)
            self.register_buffer("seen", norm.seen.detach().cpu().clone())

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if self.per_series:
            x = znormalize_series(x)
        x = (x - self.mean) / self.std
        if not self.codes:
            return x
        values = x.index_select(1, self.columns)
        codes = values.long()
        valid = (values == codes.to(values.dtype)) & (codes >= 0) & (codes < self.sizes)
        codes = torch.where(valid, codes, 0)
        known = self.seen[self.offsets + codes]
        return x.index_copy(1, self.columns, torch.where(known, codes, UNKNOWN).to(x.dtype))
