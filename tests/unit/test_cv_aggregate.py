"""`evaluation.cv.aggregate` on hand-made fold results: mean, sample std (ddof=1), summed confusion, per-fold rows."""

from __future__ import annotations

import json
import statistics

import pytest

from dlpipe.evaluation.cv import FoldResult, aggregate
from dlpipe.metric_names import SCALAR_METRICS

CLASSES = ["a", "b", "c"]


def fold(k: int, accuracy: float, confusion: list[list[int]], offset: float = 0.0) -> FoldResult:
    """A fold whose metric `m` (index i in SCALAR_METRICS) is accuracy + offset * i."""
    metrics = {m: accuracy + offset * i for i, m in enumerate(SCALAR_METRICS)}
    report = {**metrics, "per_class": {}, "confusion_matrix": confusion, "class_names": CLASSES}
    history = [{"epoch": 0, "val_loss": 1.0 - accuracy}]
    return FoldResult(k, metrics, report, epochs=1, best_epoch=0, seconds=0.5, history=history)


CM = [
    [[3, 1, 0], [0, 4, 0], [1, 0, 2]],
    [[2, 0, 1], [1, 3, 0], [0, 0, 4]],
    [[4, 0, 0], [0, 2, 2], [0, 1, 2]],
]


def test_mean_and_sample_std_of_every_metric() -> None:
    accs = [0.5, 0.75, 0.875]
    folds = [fold(k, a, CM[k], offset=0.01) for k, a in enumerate(accs)]
    summary = aggregate(folds)
    assert summary["folds"] == 3
    assert set(summary["mean"]) == set(SCALAR_METRICS) == set(summary["std"])
    for i, m in enumerate(SCALAR_METRICS):
        values = [a + 0.01 * i for a in accs]
        assert summary["mean"][m] == pytest.approx(statistics.fmean(values), abs=1e-12)
        assert summary["std"][m] == pytest.approx(statistics.stdev(values), abs=1e-12)  # ddof=1, not pstdev
    assert summary["mean"]["accuracy"] == pytest.approx(0.708333333333, abs=1e-9)
    assert summary["std"]["accuracy"] == pytest.approx(0.190940653, abs=1e-8)
    assert summary["std"]["accuracy"] != pytest.approx(statistics.pstdev(accs), abs=1e-6)


def test_confusion_matrices_are_summed_as_ints_and_class_names_kept() -> None:
    summary = aggregate([fold(k, 0.5, CM[k]) for k in range(3)])
    assert summary["confusion_matrix"] == [[9, 1, 1], [1, 9, 2], [1, 1, 8]]
    assert all(type(v) is int for row in summary["confusion_matrix"] for v in row)
    assert summary["class_names"] == CLASSES
    json.dumps(summary)  # plain JSON types only (written to reports/cv and logged as cv_summary.json)


def test_per_fold_rows_are_ordered_by_fold_whatever_the_input_order() -> None:
    folds = [fold(2, 0.9, CM[2]), fold(0, 0.1, CM[0]), fold(1, 0.5, CM[1])]
    summary = aggregate(folds)
    assert list(summary["per_fold"]) == ["fold_0", "fold_1", "fold_2"]
    assert summary["per_fold"]["fold_0"]["accuracy"] == 0.1
    assert summary["per_fold"]["fold_2"]["accuracy"] == 0.9
    assert summary["per_fold"]["fold_1"] == folds[2].metrics
    assert summary["per_fold"]["fold_1"] is not folds[2].metrics  # a copy: the summary never aliases a fold


def test_identical_folds_have_zero_std_and_one_fold_has_std_zero() -> None:
    same = aggregate([fold(k, 0.8, CM[0]) for k in range(4)])
    assert all(v == pytest.approx(0.0, abs=1e-12) for v in same["std"].values())
    assert same["mean"]["accuracy"] == pytest.approx(0.8)
    single = aggregate([fold(0, 0.6, CM[1])])
    assert single["folds"] == 1
    assert single["std"] == dict.fromkeys(SCALAR_METRICS, 0.0)  # no NaN from ddof=1 on one value
    assert single["mean"]["accuracy"] == 0.6
    assert single["confusion_matrix"] == CM[1]


def test_no_folds_is_an_error() -> None:
    with pytest.raises(ValueError, match="no folds"):
        aggregate([])


def test_fold_result_round_trips_through_json() -> None:
    original = fold(1, 0.625, CM[1], offset=0.001)
    again = FoldResult.from_dict(json.loads(json.dumps(original.to_dict())))
    assert again == original
    assert aggregate([original, fold(0, 0.5, CM[0])]) == aggregate([again, fold(0, 0.5, CM[0])])
