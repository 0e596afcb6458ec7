"""Baselines as a tabular researcher sets them up: categories one-hot (native for gradient boosting), numbers
scaled, inside a pipeline fitted per fold; the declared crosses reach the linear baseline too."""

from __future__ import annotations

import numpy as np
import pytest
from helpers.churn import write_churn_csv

from dlpipe.data.csv_set import read_csv_dataset
from dlpipe.data.prepared import PreparedData
from dlpipe.data.splits import make_splits
from dlpipe.evaluation.baselines import BASELINES, make_baseline, run_baseline

CROSS = [("plan", "region")]


@pytest.fixture(scope="module")
def churn(tmp_path_factory) -> PreparedData:
    ds = read_csv_dataset(write_churn_csv(tmp_path_factory.mktemp("churn") / "churn.csv"), "churn")
    return PreparedData(ds, make_splits(ds.y.numpy(), 0.2, 5, seed=0))


def test_categories_are_one_hot_and_numbers_scaled(churn):
    features = churn.dataset.features
    X, y = churn.dataset.X.numpy().astype(np.float64), churn.y_numpy
    fitted = make_baseline("logreg", 0, "tabular", features).fit(X, y)
    width = len(features.numeric) + sum(len(v) for v in features.vocabularies.values())
    Z = fitted[:-1].transform(X)
    assert Z.shape[1] == width  # 3 numbers + 6 plans + 8 regions + 3 channels
    crossed = make_baseline("logreg", 0, "tabular", features, CROSS).fit(X, y)
    assert crossed[:-1].transform(X).shape[1] == width + 6 * 8  # every (plan, region) cell
    dense = np.asarray(Z.todense() if hasattr(Z, "todense") else Z)
    numeric = dense[:, : len(features.numeric)]
    assert np.allclose(numeric.mean(axis=0), 0, atol=1e-6) and np.allclose(numeric.std(axis=0), 1, atol=1e-6)


def test_the_linear_baseline_uses_the_declared_cross(churn):
    plain = run_baseline("logreg", churn, seed=0)
    crossed = run_baseline("logreg", churn, seed=0, crosses=CROSS)
    # the label is plan x region: without the cross a linear model is near chance, with it near the Bayes rate 0.82
    assert plain.test["f1_macro"] < 0.65, plain.test["f1_macro"]
    assert crossed.test["f1_macro"] >= 0.78, crossed.test["f1_macro"]
    assert crossed.mean["f1_macro"] - plain.mean["f1_macro"] >= 0.1
    assert "cross" in crossed.description


def test_gradient_boosting_is_a_baseline_with_native_categories(churn):
    assert "hist_gradient_boosting" in BASELINES
    result = run_baseline("hist_gradient_boosting", churn, seed=0)
    assert result.mean["f1_macro"] >= 0.76 and result.test["f1_macro"] >= 0.76, (result.mean, result.test)
    assert result.chosen["n_iter"] >= 1  # its own early stopping chose the number of trees
    model = make_baseline("hist_gradient_boosting", 0, "tabular", churn.dataset.features)
    assert list(model[-1].categorical_features) == [i in churn.dataset.features.categorical for i in range(6)]


def test_a_category_the_fit_never_saw_is_unknown_to_every_baseline(churn):
    features = churn.dataset.features
    X, y = churn.dataset.X.numpy().astype(np.float64), churn.y_numpy
    unseen = X[:5].copy()
    unseen[:, features.categorical] = 0  # the unknown code
    for name in [b for b, spec in BASELINES.items() if "tabular" in spec.kinds]:
        model = make_baseline(name, 0, "tabular", features, CROSS).fit(X[:300], y[:300])
        assert len(model.predict(unseen)) == 5
