"""No leak through categories: a model's vocabularies come from the training part only; a category seen only in
test rows is unknown (code 0) everywhere a model, its normaliser or a baseline looks."""

from __future__ import annotations

import numpy as np
import pandas as pd

from dlpipe.data.base import UNKNOWN
from dlpipe.data.csv_set import read_csv_dataset
from dlpipe.data.prepared import PreparedData
from dlpipe.data.splits import make_splits
from dlpipe.data.store import SPLITS_FILE, save_dataset, save_splits


def csv_with_test_only_categories(path, n: int = 100):
    rng = np.random.default_rng(0)
    frame = pd.DataFrame(
        {
            "plan": rng.choice(["basic", "premium"], size=n),
            "region": rng.choice(["north", "south"], size=n),
            "fee": rng.normal(size=n),
            "churn": rng.choice(["no", "yes"], size=n),
        }
    )
    frame.to_csv(path, index=False)
    return frame


def test_no_test_only_category_in_any_vocabulary(tmp_path):
    frame = csv_with_test_only_categories(tmp_path / "churn.csv")
    ds = read_csv_dataset(tmp_path / "churn.csv", "churn")
    splits = make_splits(ds.y.numpy(), 0.2, 5, seed=0)
    rare = {"plan": "platinum", "region": "mars"}  # written into two test rows only
    for column, value in rare.items():
        frame.loc[splits.test_idx[:2], column] = value
    frame.to_csv(tmp_path / "churn.csv", index=False)
    ds = read_csv_dataset(tmp_path / "churn.csv", "churn")
    save_dataset(ds, tmp_path / "raw")
    save_splits(splits, np.arange(len(ds)), tmp_path / "prepared" / SPLITS_FILE)

    data = PreparedData.load(tmp_path / "raw", tmp_path / "prepared")
    features = data.dataset.features
    vocabularies = {
        "prepared": features.vocabularies,
        "final fit": data.holdout(0.1, seed=0).normalizer.features.vocabularies,
        **{f"fold {k}": data.fold(k, 0.1, seed=0).fit.normalizer.features.vocabularies for k in range(5)},
    }
    for where, vocab in vocabularies.items():
        for column, value in rare.items():
            assert value not in vocab[column], (where, column, vocab[column])
    for column in rare:
        codes = data.dataset.X[:, features.names.index(column)].numpy()
        assert (codes[splits.test_idx[:2]] == UNKNOWN).all()
        assert (codes[splits.train_idx] != UNKNOWN).all()
        # the training part's categories keep their text
        train_text = set(frame.loc[splits.train_idx, column])
        assert set(features.vocabularies[column]) == train_text
        assert set(features.decode(column, codes[splits.train_idx])) == train_text
