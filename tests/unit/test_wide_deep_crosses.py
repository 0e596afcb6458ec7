"""Known answer: on a churn-like CSV whose label is decided by a cross of two text columns (plan x region), wide &
deep with that cross declared beats it without by a wide margin, at the default parameters."""

from __future__ import annotations

import pytest
from helpers.churn import write_churn_csv
from helpers.training import CPU, problem, torch_threads, train

from dlpipe.data.csv_set import read_csv_dataset
from dlpipe.training.fit import evaluate

CROSS = [["plan", "region"]]


@pytest.fixture(scope="module")
def churn(tmp_path_factory):
    path = write_churn_csv(tmp_path_factory.mktemp("churn") / "churn.csv", n=2000, seed=0)
    return problem(read_csv_dataset(path, "churn"))


def test_the_declared_cross_wins_by_a_wide_margin_at_default_params(churn):
    with torch_threads(1):
        scores = {}
        for name, crosses in (("without", []), ("with", CROSS)):
            result = train("wide_deep", churn, {"crosses": crosses})
            scores[name] = evaluate(result.module, churn.test, CPU)["f1_macro"]
    # the Bayes rate of the data is 0.82 (cells churn at 0.9 / 0.1, then 10% of labels flip)
    assert scores["with"] >= 0.79, scores
    assert scores["with"] - scores["without"] >= 0.04, scores
