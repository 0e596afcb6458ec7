"""data.labeled_fraction: of every training part only a stratified, seeded fraction keeps its labels; validation
slices, scored folds and the test set keep all of theirs."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from dlpipe.config import parse_params
from dlpipe.data.base import Dataset
from dlpipe.data.prepared import HIDDEN, PreparedData
from dlpipe.data.splits import labeled_subset, make_splits
from dlpipe.errors import ConfigError

CLASSES = 5


def dataset(n: int = 500, seed: int = 0) -> Dataset:
    gen = torch.Generator().manual_seed(seed)
    X = torch.randn(n, 1, 4, 4, generator=gen)
    y = torch.arange(n) % CLASSES
    return Dataset("toy", X, y, "image", [f"c{i}" for i in range(CLASSES)])


def prepared(fraction: float, n: int = 500) -> PreparedData:
    ds = dataset(n)
    return PreparedData(ds, make_splits(ds.y.numpy(), 0.2, 4, seed=1), labeled_fraction=fraction)


def test_labeled_subset_is_stratified_seeded_and_partitions_the_part():
    y = np.arange(1000) % CLASSES
    idx = np.arange(0, 1000, 2) + 1  # some training part
    labeled, unlabeled = labeled_subset(y, idx, 0.1, seed=3)
    assert len(labeled) == 50 and len(unlabeled) == 450
    assert np.array_equal(np.sort(np.concatenate([labeled, unlabeled])), idx)
    assert np.bincount(y[labeled], minlength=CLASSES).tolist() == [10] * CLASSES  # every class, equally
    again, _ = labeled_subset(y, idx, 0.1, seed=3)
    other, _ = labeled_subset(y, idx, 0.1, seed=4)
    assert np.array_equal(labeled, again) and not np.array_equal(labeled, other)


def test_labeled_subset_keeps_every_label_at_one_and_one_per_class_at_least():
    y = np.arange(100) % CLASSES
    idx = np.arange(100)
    labeled, unlabeled = labeled_subset(y, idx, 1.0, seed=0)
    assert np.array_equal(labeled, idx) and len(unlabeled) == 0
    labeled, _ = labeled_subset(y, idx, 0.001, seed=0)  # 0.1 samples asked: one per class kept
    assert sorted(y[labeled].tolist()) == list(range(CLASSES))


@pytest.mark.parametrize("fraction", [0.1, 0.5])
def test_holdout_and_folds_hide_labels_of_training_samples_only(fraction):
    data = prepared(fraction)
    y = data.y_numpy
    splits = [data.holdout(0.1, seed=7)] + [data.fold(k, 0.1, seed=7).fit for k in range(4)]
    for split in splits:
        assert split.unlabeled is not None
        part = np.concatenate([split.train.idx, split.unlabeled.idx])
        assert not set(part) & set(split.val.idx)
        assert len(split.train) == pytest.approx(fraction * len(part), abs=CLASSES)
        assert np.bincount(y[split.train.idx], minlength=CLASSES).min() >= 1
        assert torch.equal(split.train.y, torch.from_numpy(y[split.train.idx]))  # labelled rows: true labels
        assert (split.unlabeled.y == HIDDEN).all()  # hidden rows carry no label at all
        assert torch.equal(split.val.y, torch.from_numpy(y[split.val.idx]))  # validation keeps every label
        # inputs of hidden rows are kept, normalised like the rest (statistics from every training input)
        X_part = data.dataset.X[torch.from_numpy(part)]
        assert torch.allclose(split.normalizer.mean, X_part.mean(dim=(0, 2, 3), keepdim=True)[0])
        assert torch.allclose(
            split.unlabeled.X, split.normalizer(data.dataset.X[torch.from_numpy(split.unlabeled.idx)])
        )
    for k in range(4):  # the scored fold and the test set keep their labels
        fold = data.fold(k, 0.1, seed=7)
        assert torch.equal(fold.scored.y, torch.from_numpy(y[fold.scored.idx]))
    test = data.test(splits[0].normalizer)
    assert torch.equal(test.y, torch.from_numpy(y[data.splits.test_idx]))


def test_every_label_kept_by_default_and_the_split_is_unchanged():
    full, default = prepared(1.0), PreparedData(dataset(), make_splits(dataset().y.numpy(), 0.2, 4, seed=1))
    for data in (full, default):
        split = data.holdout(0.1, seed=7)
        assert split.unlabeled is None
        assert len(split.train) + len(split.val) == len(data.splits.train_idx)


def test_the_hidden_labels_are_fixed_by_the_seed():
    a, b = prepared(0.2).holdout(0.1, seed=7), prepared(0.2).holdout(0.1, seed=7)
    assert np.array_equal(a.train.idx, b.train.idx) and np.array_equal(a.unlabeled.idx, b.unlabeled.idx)
    c = prepared(0.2).holdout(0.1, seed=8)
    assert not np.array_equal(a.train.idx, c.train.idx)


@pytest.mark.parametrize("value", [0, -0.1, 1.5])
def test_labeled_fraction_outside_zero_one_is_rejected_with_its_key(value):
    with pytest.raises(ConfigError, match=r"data\.labeled_fraction: "):
        parse_params({"data": {"labeled_fraction": value}})
