"""The prepared dataset as the training code sees it: normalised tensors for folds, train/val and test.

Normalisation statistics always come from the samples a model trains on; validation, scored and test samples are
transformed with them, never fitted. Every part keeps the dataset indices of its rows, so what a model saw can be
checked.

- `holdout`: the training part minus a stratified validation slice (early stopping, keeping the best epoch).
- `fold(k)`: clean cross-validation. The model trains on the other folds minus an inner stratified validation slice
  (early stopping and the best epoch are chosen there), and fold k is scored once, never monitored.
- `test`: the held-out test set, normalised with a given split's statistics (final evaluation only).

Label-efficient studies (`labeled_fraction` < 1): of every training part (a fold's fit, the final fit, a tuning
trial's) only a stratified fraction, drawn with the split's seed, keeps its labels (`TrainValSplit.train`); the rest
is `TrainValSplit.unlabeled`, its labels replaced by `HIDDEN` (-1). Supervised models train on the labelled part
only; semi-supervised ones (the autoencoder, the GAN) also learn from the unlabelled inputs. The normaliser is
fitted on every training input, labelled or not (the inputs are available; only their labels are hidden).
Validation slices, scored folds and the test set keep every label.

Categorical columns: the vocabularies a model sees hold only the categories of the training part (`train_idx`, the
rows the final model and the folds learn from); a category met only in test rows is the unknown code 0, as it would
be for a model serving new data. (dataset.json keeps the fetched file's full vocabulary; codes are re-numbered here.)
Within the training part, the normaliser of each fit also maps the codes its own rows never showed to 0.

8-bit images (X uint8): the training part and `unlabeled` keep their pixels (gathered rows, a quarter of float32's
memory) and are normalised per batch (`Classifier.on_after_batch_transfer`, on the device when there is one);
validation, scored and test parts are normalised float32 as for every other dataset.

Text (a CSV's `data.csv.text_column`): each split fits its own tokenizer on its training rows (see `data.text`); its
`Normalizer` carries it, and every part of that split (validation, scored fold, test) is tokenized with it.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass, replace
from pathlib import Path

import numpy as np
import torch

from dlpipe.data.base import UNKNOWN, Dataset
from dlpipe.data.splits import Normalizer, Splits, carve_validation, labeled_subset, stratified_rows
from dlpipe.data.store import SPLITS_FILE, load_saved_dataset, load_splits
from dlpipe.data.text import TextEncoder

log = logging.getLogger(__name__)
HIDDEN = -1  # the label of a training sample whose label is hidden (data.labeled_fraction)


@dataclass
class Part:
    X: torch.Tensor  # normalised inputs; the training part of 8-bit images: its uint8 pixels (normalised per batch)
    y: torch.Tensor
    idx: np.ndarray | None = None  # dataset indices of the rows (None: not from a PreparedData)

    def __len__(self) -> int:
        return len(self.y)


@dataclass
class TrainValSplit:
    train: Part  # the labelled training samples
    val: Part
    normalizer: Normalizer
    unlabeled: Part | None = None  # training samples whose labels are hidden (y = HIDDEN); None: every label kept


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
    labeled_fraction: float = 1.0  # of every training part, the stratified fraction that keeps its labels
    znormalize: bool = False  # sequences: each series z-normalised on its own, before the fitted normaliser

    def __post_init__(self) -> None:
        self.dataset = training_vocabularies(self.dataset, self.splits.train_idx)

    @classmethod
    def load(
        cls,
        raw_dir: Path,
        prepared_dir: Path,
        normalize: bool = True,
        labeled_fraction: float = 1.0,
        znormalize: bool = False,
    ) -> PreparedData:
        ds = load_saved_dataset(raw_dir)
        splits, subset = load_splits(prepared_dir / SPLITS_FILE)
        if len(subset) != len(ds):
            idx = torch.from_numpy(subset)
            official = None if ds.official_test is None else ds.official_test[idx]
            text = None if ds.text is None else replace(ds.text, texts=tuple(ds.text.take(subset)))
            ds = replace(ds, X=ds.X[idx], y=ds.y[idx], official_test=official, text=text)
        return cls(ds, splits, normalize, labeled_fraction, znormalize)

    @property
    def y_numpy(self) -> np.ndarray:
        return self.dataset.y.numpy()

    def part(self, idx: np.ndarray, normalizer: Normalizer) -> Part:
        return Part(self.inputs(idx, normalizer), self.dataset.y[torch.from_numpy(idx)], idx)

    @property
    def pixels(self) -> bool:
        """8-bit images: training parts stay uint8, normalised per batch by the module that trains on them."""
        return self.dataset.X.dtype == torch.uint8

    def training_part(self, idx: np.ndarray, normalizer: Normalizer, y: torch.Tensor | None = None) -> Part:
        """The rows `idx` a model trains on (labels `y`, else the dataset's): 8-bit pixels as they are, anything
        else normalised as `part` does."""
        y = self.dataset.y[torch.from_numpy(idx)] if y is None else y
        X = self.dataset.X[torch.from_numpy(idx)] if self.pixels else self.inputs(idx, normalizer)
        return Part(X, y, idx)

    def inputs(self, idx: np.ndarray, normalizer: Normalizer) -> torch.Tensor:
        """The model inputs of rows `idx`: X transformed by `normalizer` (in the gathered copy); text tokenized by
        its fitted tokenizer."""
        if normalizer.text is not None:
            return normalizer.text.encode(self.dataset.text.take(idx))
        return normalizer.apply_(self.dataset.X[torch.from_numpy(idx)])

    def split(self, train_idx: np.ndarray, val_idx: np.ndarray, seed: int = 0) -> TrainValSplit:
        """Train on `train_idx` (normaliser, or tokenizer for text, fitted there), validate on `val_idx`; with
        `labeled_fraction` < 1 only a stratified fraction of `train_idx` (drawn with `seed`) keeps its labels."""
        X, text = self.dataset.X, self.dataset.text
        fitted = None
        if text is not None:  # every training input, labelled or not; never validation, scored or test text
            norm = Normalizer.for_text(TextEncoder.fit(text.take(train_idx), text.vocab_size, text.max_tokens))
        else:
            fitted = X[torch.from_numpy(train_idx)]
            norm = Normalizer.fit(fitted, self.dataset.features, self.normalize, self.znormalize)
        labeled, hidden = labeled_subset(self.y_numpy, train_idx, self.labeled_fraction, seed)
        unlabeled = None
        if len(hidden):
            fitted = None
            unlabeled = self.training_part(hidden, norm, torch.full((len(hidden),), HIDDEN))
        if fitted is not None:  # every label kept: the rows the normaliser was fitted on (normalised in place)
            X = fitted if self.pixels else norm.apply_(fitted)
            train = Part(X, self.dataset.y[torch.from_numpy(labeled)], labeled)
        else:
            train = self.training_part(labeled, norm)
        return TrainValSplit(train, self.part(val_idx, norm), norm, unlabeled)

    def holdout(self, val_size: float, seed: int, max_train: int | None = None) -> TrainValSplit:
        """The training part with a stratified `val_size` slice carved out for validation (never the test set);
        with `max_train`, training on a stratified subsample of at most that many of the other rows."""
        train, val = carve_validation(self.y_numpy, self.splits.train_idx, val_size, seed)
        return self.split(stratified_rows(self.y_numpy, train, max_train, seed), val, seed)

    def fold(self, k: int, val_size: float, seed: int, max_train: int | None = None) -> FoldSplit:
        """Fold `k` scored once; early stopping on a `val_size` slice carved from the other folds (training on at
        most `max_train` of their other rows, stratified)."""
        others, scored = self.splits.fold_indices(k)
        train, val = carve_validation(self.y_numpy, others, val_size, seed)
        fit = self.split(stratified_rows(self.y_numpy, train, max_train, seed), val, seed)
        return FoldSplit(k, fit, self.part(scored, fit.normalizer))

    def test(self, normalizer: Normalizer) -> Part:
        """The held-out test set, transformed with a model's training statistics (final evaluation only)."""
        return self.part(self.splits.test_idx, normalizer)

    def raw(self, idx: np.ndarray, normalizer: Normalizer | None = None) -> torch.Tensor:
        """Untransformed inputs of `idx` (what a model's exported program receives; images float32 in [0, 1]): for
        text, the token ids of `normalizer`'s tokenizer (the served pyfunc tokenizes raw text into these)."""
        if self.dataset.text is not None:
            if normalizer is None or normalizer.text is None:
                raise ValueError("text inputs are token ids of a fitted tokenizer: pass the split's normalizer")
            return normalizer.text.encode(self.dataset.text.take(idx))
        return self.dataset.inputs(idx)


def training_vocabularies(ds: Dataset, rows: np.ndarray) -> Dataset:
    """`ds` with each categorical column's vocabulary cut to the categories `rows` show (codes re-numbered in the
    same order); every other category becomes the unknown code 0. `ds` itself when nothing changes."""
    features = ds.features
    if features is None or not features.categorical:
        return ds
    X, categories, dropped = ds.X.clone(), {}, {}
    rows_t = torch.from_numpy(np.asarray(rows, dtype=np.int64))
    for i in features.categorical:
        name = features.names[i]
        vocab = features.vocabularies[name]
        codes = X[:, i].long()
        shown = torch.bincount(codes[rows_t], minlength=len(vocab) + 1) > 0
        shown[UNKNOWN] = False
        new = torch.zeros(len(vocab) + 1, dtype=torch.long)
        new[shown] = torch.arange(1, int(shown.sum()) + 1)
        X[:, i] = new[codes].to(X.dtype)
        categories[name] = [v for j, v in enumerate(vocab) if shown[j + 1]]
        if len(categories[name]) < len(vocab):
            dropped[name] = len(vocab) - len(categories[name])
    if not dropped:
        return ds
    shown_text = ", ".join(f"{name} ({n})" for name, n in dropped.items())
    log.info("categories not in the training part (unknown to every model): %s", shown_text)
    return replace(ds, X=X, categories=categories)
