"""The prepared data normalises each part in the copy it gathers (no second, normalised copy of a large part), to
the same values as before."""

from __future__ import annotations

import numpy as np
import torch
from helpers.training import dataset

from dlpipe.data.prepared import PreparedData
from dlpipe.data.splits import Normalizer, make_splits


def test_parts_are_normalised_in_place_to_the_same_values() -> None:
    ds = dataset("digits")
    before = ds.X.clone()
    data = PreparedData(ds, make_splits(ds.y.numpy(), 0.2, 3, 0))
    train_idx, val_idx = data.splits.fold_indices(0)
    split = data.split(train_idx, val_idx)
    norm = Normalizer.fit(ds.X[torch.from_numpy(train_idx)])
    assert torch.allclose(split.train.X, norm(ds.X[torch.from_numpy(train_idx)]))
    assert torch.allclose(split.val.X, norm(ds.X[torch.from_numpy(val_idx)]))
    assert np.array_equal(split.train.idx, train_idx)
    fresh = ds.X[:50].clone()
    assert norm.apply_(fresh).data_ptr() == fresh.data_ptr()  # written into the gathered copy
    assert torch.equal(fresh, norm(ds.X[:50]))
    assert torch.equal(ds.X, before)  # the dataset itself untouched
