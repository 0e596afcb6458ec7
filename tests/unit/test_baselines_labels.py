"""Baselines of a label-efficient study fit on the same fraction of labels as the deep models, never on all."""

from __future__ import annotations

import numpy as np
import torch

from dlpipe.data.base import Dataset
from dlpipe.data.prepared import PreparedData
from dlpipe.data.splits import make_splits
from dlpipe.evaluation.baselines import run_baseline


def prepared(labeled_fraction: float) -> PreparedData:
    rng = np.random.default_rng(0)
    y = np.repeat(np.arange(3), 100)
    X = rng.normal(size=(len(y), 4)) + y[:, None]  # separable enough for a k-NN
    ds = Dataset("toy", torch.tensor(X, dtype=torch.float32), torch.tensor(y), "tabular", ["a", "b", "c"])
    return PreparedData(ds, make_splits(y, 0.2, 3, seed=0), labeled_fraction=labeled_fraction)


def test_baselines_fit_on_the_labelled_fraction_only() -> None:
    full = run_baseline("knn", prepared(1.0), seed=0)
    tenth = run_baseline("knn", prepared(0.1), seed=0)
    assert full.subsampled is None  # every training sample of the final fit
    assert tenth.subsampled == 24  # 10% of the 240 training samples keep their labels
    assert tenth.per_fold != full.per_fold
