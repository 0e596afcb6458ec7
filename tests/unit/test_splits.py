"""Stratified holdout and k-fold splits, stratified subsets, and normalisation fitted on training data only."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from dlpipe.config import DataParams
from dlpipe.data import load_dataset
from dlpipe.data.base import Dataset
from dlpipe.data.prepared import PreparedData
from dlpipe.data.splits import Normalizer, carve_validation, make_splits, stratified_subset
from dlpipe.data.store import save_dataset, save_splits
from dlpipe.errors import DataError

SEEDS = (0, 42, 2024)


@pytest.fixture(scope="module")
def digits() -> Dataset:
    return load_dataset("digits", ".", DataParams())


@pytest.fixture(scope="module")
def digits_y(digits) -> np.ndarray:
    return digits.y.numpy()


def max_stratification_gap(y_part: np.ndarray, y_whole: np.ndarray, n_classes: int) -> float:
    """max over classes c of |count_part(c) - len(part) * p_whole(c)|."""
    p = np.bincount(y_whole, minlength=n_classes) / len(y_whole)
    return float(np.abs(np.bincount(y_part, minlength=n_classes) - len(y_part) * p).max())


@pytest.mark.parametrize("seed", SEEDS)
def test_every_fold_is_stratified_within_one_sample(digits_y, seed):
    splits = make_splits(digits_y, test_size=0.2, folds=5, seed=seed)
    y_train = digits_y[splits.train_idx]
    for k in range(5):
        _, val_idx = splits.fold_indices(k)
        assert len(val_idx) in (len(y_train) // 5, len(y_train) // 5 + 1)
        assert max_stratification_gap(digits_y[val_idx], y_train, 10) <= 1.0, f"fold {k}"


@pytest.mark.parametrize("seed", SEEDS)
def test_test_set_is_stratified_within_one_sample(digits_y, seed):
    splits = make_splits(digits_y, test_size=0.2, folds=5, seed=seed)
    assert len(splits.test_idx) == 360  # ceil(0.2 * 1797)
    assert max_stratification_gap(digits_y[splits.test_idx], digits_y, 10) <= 1.0
    assert max_stratification_gap(digits_y[splits.train_idx], digits_y, 10) <= 1.0


def test_splits_partition_the_data(digits_y):
    splits = make_splits(digits_y, test_size=0.2, folds=5, seed=42)
    train, test = splits.train_idx, splits.test_idx
    assert train.dtype == test.dtype == splits.fold.dtype == np.int64
    assert np.array_equal(train, np.sort(train)) and np.array_equal(test, np.sort(test))
    assert np.intersect1d(train, test).size == 0
    assert np.array_equal(np.union1d(train, test), np.arange(len(digits_y)))
    assert len(splits.fold) == len(train)
    assert splits.folds == 5
    assert set(splits.fold.tolist()) == {0, 1, 2, 3, 4}
    seen = []
    for k in range(5):
        fit_idx, val_idx = splits.fold_indices(k)
        assert np.intersect1d(fit_idx, val_idx).size == 0
        assert np.array_equal(np.union1d(fit_idx, val_idx), train)
        assert np.intersect1d(val_idx, test).size == 0 and np.intersect1d(fit_idx, test).size == 0
        seen.append(val_idx)
    all_val = np.concatenate(seen)
    assert len(all_val) == len(train)  # every training sample validates exactly once
    assert np.array_equal(np.sort(all_val), train)


def test_same_seed_same_splits_other_seed_other_splits(digits_y):
    a = make_splits(digits_y, 0.2, 5, seed=42)
    b = make_splits(digits_y, 0.2, 5, seed=42)
    c = make_splits(digits_y, 0.2, 5, seed=43)
    for field in ("train_idx", "test_idx", "fold"):
        assert np.array_equal(getattr(a, field), getattr(b, field))
    assert not np.array_equal(a.test_idx, c.test_idx)
    assert not np.array_equal(a.fold, c.fold)


def test_make_splits_rejects_a_class_too_small_for_the_test_set():
    y = np.array([0] * 30 + [1] * 30 + [2])
    with pytest.raises(DataError, match=r"^data\.test_size: 0\.2 leaves 13 test samples for 3 classes"):
        make_splits(y, 0.2, 2, seed=0)


def test_make_splits_rejects_too_many_folds_for_the_smallest_class():
    y = np.repeat(np.arange(3), 8)  # about 6 training samples per class
    with pytest.raises(DataError, match=r"^data\.folds: 10 folds need at least 10 training samples per class"):
        make_splits(y, 0.2, 10, seed=0)


def test_stratified_subset(digits_y):
    keep = stratified_subset(digits_y, 200, seed=42)
    assert len(keep) == 200 and len(np.unique(keep)) == 200
    assert np.array_equal(keep, np.sort(keep))
    assert max_stratification_gap(digits_y[keep], digits_y, 10) <= 1.0
    assert np.array_equal(keep, stratified_subset(digits_y, 200, seed=42))
    assert not np.array_equal(keep, stratified_subset(digits_y, 200, seed=1))
    assert np.array_equal(stratified_subset(digits_y, 5000, seed=0), np.arange(len(digits_y)))


def test_carve_validation(digits_y):
    splits = make_splits(digits_y, 0.2, 5, seed=42)
    fit_idx, val_idx = carve_validation(digits_y, splits.train_idx, 0.1, seed=42)
    assert np.intersect1d(fit_idx, val_idx).size == 0
    assert np.array_equal(np.union1d(fit_idx, val_idx), splits.train_idx)
    assert np.intersect1d(val_idx, splits.test_idx).size == 0
    assert len(val_idx) == int(np.ceil(0.1 * len(splits.train_idx)))
    assert max_stratification_gap(digits_y[val_idx], digits_y[splits.train_idx], 10) <= 1.0


def test_normalizer_fit_per_channel_for_images():
    gen = torch.Generator().manual_seed(0)
    X = torch.rand(50, 3, 4, 5, generator=gen) * torch.tensor([1.0, 10.0, 100.0]).view(1, 3, 1, 1) + 7
    norm = Normalizer.fit(X)
    assert norm.mean.shape == norm.std.shape == (3, 1, 1)
    flat = X.permute(1, 0, 2, 3).reshape(3, -1).double()
    assert torch.allclose(norm.mean.flatten().double(), flat.mean(dim=1), rtol=1e-5)
    assert torch.allclose(norm.std.flatten().double(), flat.std(dim=1), rtol=1e-5)
    Z = norm(X)
    assert Z.shape == X.shape
    per_channel = Z.permute(1, 0, 2, 3).reshape(3, -1)
    assert torch.allclose(per_channel.mean(dim=1), torch.zeros(3), atol=1e-5)
    assert torch.allclose(per_channel.std(dim=1), torch.ones(3), atol=1e-5)


def test_normalizer_fit_per_feature_and_constant_features():
    X = torch.tensor([[1.0, 5.0, 0.0], [3.0, 5.0, 10.0], [5.0, 5.0, 20.0]])
    norm = Normalizer.fit(X)
    assert norm.mean.tolist() == [3.0, 5.0, 10.0]
    assert norm.std.tolist() == [2.0, 1.0, 10.0]  # a constant column keeps std 1: no division by zero
    assert norm(X).tolist() == [[-1.0, 0.0, -1.0], [0.0, 0.0, 0.0], [1.0, 0.0, 1.0]]


def test_normalizer_identity():
    X = torch.rand(4, 2, 3, 3)
    assert torch.equal(Normalizer.identity(X)(X), X)
    T = torch.rand(4, 6)
    ident = Normalizer.identity(T)
    assert ident.mean.shape == (6,)
    assert torch.equal(ident(T), T)


@pytest.fixture(scope="module")
def prepared(digits, digits_y) -> PreparedData:
    return PreparedData(digits, make_splits(digits_y, 0.2, 5, seed=42))


@pytest.mark.parametrize("k", [0, 3])
def test_a_clean_fold_monitors_an_inner_slice_and_scores_fold_k_once(prepared, digits, k):
    fold = prepared.fold(k, 0.1, seed=42)
    others, scored = prepared.splits.fold_indices(k)
    fit, val = fold.fit.train.idx, fold.fit.val.idx
    # early stopping watches an inner slice of the other folds; fold k is only scored
    assert set(fit).isdisjoint(scored) and set(val).isdisjoint(scored)
    assert sorted(np.concatenate([fit, val])) == sorted(others)
    assert np.array_equal(fold.scored.idx, scored)
    assert len(val) == pytest.approx(0.1 * len(others), abs=len(digits.class_names))
    # the normaliser comes from the inner training samples alone
    X = digits.X.double().numpy()
    assert fold.fit.normalizer.mean.item() == pytest.approx(X[fit].mean(), rel=1e-5)
    assert fold.fit.normalizer.std.item() == pytest.approx(X[fit].std(ddof=1), rel=1e-5)
    assert fold.fit.train.X.mean().item() == pytest.approx(0.0, abs=1e-5)
    expected = (X[scored] - X[fit].mean()) / X[fit].std(ddof=1)
    assert np.allclose(fold.scored.X.numpy(), expected, atol=1e-5)
    assert torch.equal(fold.scored.y, digits.y[torch.from_numpy(scored)])
    # stratified: every class in the inner validation slice
    assert set(digits.y[torch.from_numpy(val)].tolist()) == set(range(len(digits.class_names)))


def test_holdout_and_test(prepared, digits):
    splits = prepared.splits
    hold = prepared.holdout(0.1, seed=42)
    assert len(hold.train) + len(hold.val) == len(splits.train_idx)
    fit_idx, _ = carve_validation(prepared.y_numpy, splits.train_idx, 0.1, 42)
    assert np.array_equal(hold.train.idx, fit_idx)
    assert hold.normalizer.mean.item() == pytest.approx(digits.X[torch.from_numpy(fit_idx)].mean().item(), rel=1e-5)
    test = prepared.test(hold.normalizer)
    assert np.array_equal(test.idx, splits.test_idx)
    assert torch.allclose(test.X, hold.normalizer(digits.X[torch.from_numpy(splits.test_idx)]))


def test_normalize_false_leaves_data_unchanged(digits, digits_y):
    data = PreparedData(digits, make_splits(digits_y, 0.2, 5, seed=42), normalize=False)
    fold = data.fold(1, 0.1, seed=42)
    assert torch.equal(fold.fit.train.X, digits.X[torch.from_numpy(fold.fit.train.idx)])
    assert torch.equal(fold.scored.X, digits.X[torch.from_numpy(fold.scored.idx)])


def test_prepared_data_load_applies_the_subset(tmp_path, digits, digits_y):
    raw, prep = tmp_path / "raw", tmp_path / "prepared"
    save_dataset(digits, raw)
    subset = stratified_subset(digits_y, 100, seed=3)
    splits = make_splits(digits_y[subset], 0.2, 2, seed=3)
    save_splits(splits, subset, prep / "splits.npz")
    data = PreparedData.load(raw, prep)
    assert len(data.dataset) == 100
    assert torch.equal(data.dataset.X, digits.X[torch.from_numpy(subset)])
    assert torch.equal(data.dataset.y, digits.y[torch.from_numpy(subset)])
    assert data.splits.folds == 2
    assert np.array_equal(data.splits.test_idx, splits.test_idx)


def test_trials_can_train_on_a_stratified_subsample_and_are_scored_on_every_row(prepared, digits_y):
    """tune.max_train_samples: the training rows of a holdout or a fold are cut to a stratified subsample (the same
    for the same seed); the validation slice and the scored fold keep every row, the normaliser sees the subsample."""
    whole, cut = prepared.holdout(0.2, seed=0), prepared.holdout(0.2, seed=0, max_train=300)
    assert len(cut.train.idx) == 300 and set(cut.train.idx) < set(whole.train.idx)
    assert np.array_equal(cut.val.idx, whole.val.idx)
    share = np.bincount(digits_y[cut.train.idx], minlength=10) / 300
    assert np.abs(share - np.bincount(digits_y[whole.train.idx], minlength=10) / len(whole.train.idx)).max() < 0.01
    assert np.array_equal(prepared.holdout(0.2, seed=0, max_train=300).train.idx, cut.train.idx)
    assert np.array_equal(prepared.holdout(0.2, seed=0, max_train=10**6).train.idx, whole.train.idx)
    fold, small = prepared.fold(1, 0.1, seed=0), prepared.fold(1, 0.1, seed=0, max_train=200)
    assert len(small.fit.train.idx) == 200 and set(small.fit.train.idx) < set(fold.fit.train.idx)
    assert np.array_equal(small.fit.val.idx, fold.fit.val.idx) and np.array_equal(small.scored.idx, fold.scored.idx)
    assert torch.equal(small.fit.train.y, torch.as_tensor(digits_y[small.fit.train.idx]))


def test_a_holdout_trial_trains_on_tune_max_train_samples_rows(prepared):
    from dlpipe.config import parse_params
    from dlpipe.tuning.objective import Objective
    from dlpipe.tuning.space import SearchSpace

    params = parse_params({"tune": {"max_train_samples": 300}})
    objective = Objective(params, "mlp", SearchSpace.for_arch(params, "mlp"), prepared)
    assert len(objective.holdout.train.idx) == 300
    assert len(objective.holdout.val.idx) == len(prepared.holdout(params.data.val_size, params.seed).val.idx)
