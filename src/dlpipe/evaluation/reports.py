"""Evaluation reports from predicted classes (scikit-learn), in the same form as the training code's
(`dlpipe.training.metrics.report`): scalar metrics, per-class precision/recall/F1, confusion matrix."""

from __future__ import annotations

import numpy as np
from sklearn.metrics import accuracy_score, confusion_matrix, precision_recall_fscore_support

from dlpipe.metric_names import PER_CLASS, SCALAR_METRICS, metric_value


def report_from_predictions(y_true: np.ndarray, y_pred: np.ndarray, class_names: list[str]) -> dict:
    """accuracy, precision/recall/F1 (macro and weighted), per class, and the confusion matrix."""
    y_true, y_pred = np.asarray(y_true), np.asarray(y_pred)
    labels = list(range(len(class_names)))
    out: dict = {"accuracy": metric_value("accuracy", accuracy_score(y_true, y_pred))}
    for average in ("macro", "weighted"):
        values = precision_recall_fscore_support(y_true, y_pred, labels=labels, average=average, zero_division=0)
        for name, value in zip(PER_CLASS, values[:3], strict=True):
            out[f"{name}_{average}"] = metric_value(name, value)
    per = precision_recall_fscore_support(y_true, y_pred, labels=labels, average=None, zero_division=0)
    out["per_class"] = {
        name: {m: metric_value(m, per[j][i]) for j, m in enumerate(PER_CLASS)} for i, name in enumerate(class_names)
    }
    out["confusion_matrix"] = confusion_matrix(y_true, y_pred, labels=labels).tolist()
    out["class_names"] = list(class_names)
    assert set(SCALAR_METRICS) <= set(out)
    return out
