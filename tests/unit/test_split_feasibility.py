"""The check stage refuses every data.* combination that would leave a training part without some class (issue: a
labeled_fraction of 0.001 passed the check, then the baselines crashed in scikit-learn). `split_problems` computes it
from class counts alone; these tests draw real splits, exactly as the stages do, for what it accepts."""

from __future__ import annotations

import numpy as np
import pytest
from sklearn.datasets import load_digits

from dlpipe.config import DataParams
from dlpipe.data.splits import carve_validation, labeled_subset, make_splits, split_problems, stratified_subset
from dlpipe.errors import DataError

INNER = 3  # the grid baselines' inner folds


def smallest_classes(y: np.ndarray, data: DataParams, seed: int) -> tuple[int, int]:
    """(smallest class count of any deep model's labelled training part, of any baseline's labelled part), drawn as
    prepare, cv, tune, train and the baselines draw them."""
    classes = len(np.unique(y))
    if data.limit is not None and data.limit < len(y):
        y = y[stratified_subset(y, data.limit, seed)]
    splits = make_splits(y, data.test_size, data.folds, seed)

    def least(idx: np.ndarray) -> int:
        labeled = labeled_subset(y, idx, data.labeled_fraction, seed)[0]
        return int(np.bincount(y[labeled], minlength=classes).min())

    baseline_parts = [splits.fold_indices(k)[0] for k in range(data.folds)] + [splits.train_idx]
    deep_parts = [carve_validation(y, part, data.val_size, seed)[0] for part in baseline_parts]
    return min(least(p) for p in deep_parts), min(least(p) for p in baseline_parts)


def test_the_reported_fraction_is_refused_with_its_key_in_one_line():
    counts = np.bincount(load_digits().target)
    for need in (1, INNER):
        (line,) = split_problems(counts, DataParams(labeled_fraction=0.001), "digits", need)
        assert line.startswith("digits: data.labeled_fraction: 0.001 ") and "\n" not in line
        assert "use at least" in line


def test_the_suggested_fraction_is_accepted_and_works():
    y = load_digits().target
    counts = np.bincount(y)
    for need in (1, INNER):
        (line,) = split_problems(counts, DataParams(labeled_fraction=0.001), "digits", need)
        enough = float(line.rsplit("use at least ", 1)[1])
        data = DataParams(labeled_fraction=enough)
        assert split_problems(counts, data, "digits", need) == []
        deep, baselines = smallest_classes(y, data, seed=0)
        assert deep >= 1 and baselines >= need


@pytest.mark.parametrize("seed", range(12))
def test_whatever_the_check_accepts_gives_every_training_part_every_class(seed):
    rng = np.random.default_rng(seed)
    accepted = 0
    for _ in range(25):
        classes = int(rng.integers(2, 8))
        counts = rng.integers(2, 60, size=classes)
        y = np.repeat(np.arange(classes), counts)
        rng.shuffle(y)
        limit = int(rng.integers(20, len(y))) if rng.random() < 0.3 and len(y) > 20 else None
        data = DataParams(
            test_size=float(rng.uniform(0.05, 0.5)),
            folds=int(rng.integers(2, 8)),
            val_size=float(rng.uniform(0.01, 0.49)),
            labeled_fraction=float(rng.choice([1.0, rng.uniform(0.01, 1.0)])),
            limit=limit,
        )
        need = int(rng.choice([1, INNER]))
        if split_problems(counts, data, "toy", need):
            continue
        accepted += 1
        try:
            deep, baselines = smallest_classes(y, data, seed)
        except (DataError, ValueError) as exc:
            pytest.fail(f"accepted {data} for class counts {counts.tolist()}, then: {exc}")
        assert deep >= 1, (data, counts.tolist())
        if data.labeled_fraction < 1:
            assert baselines >= need, (data, counts.tolist(), need)
    assert accepted >= 3  # the draw exercises the accepted side too
