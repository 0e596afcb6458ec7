"""The metric catalogue: every metric name dlpipe reports, selects on or monitors, with its label. No torch here.

- Scalar metrics are computed for every evaluation (torchmetrics in training, scikit-learn for baselines).
- Selection metrics are the scalar ones plus `<precision|recall|f1>_positive`: one class's metric
  (`selection.positive_class`, binary tasks), read from the per-class report.
- Monitors are the per-epoch validation values early stopping may watch.
"""

from __future__ import annotations

import math

SCALAR_METRICS = (
    "accuracy",
    "precision_macro",
    "recall_macro",
    "f1_macro",
    "precision_weighted",
    "recall_weighted",
    "f1_weighted",
)
PER_CLASS = ("precision", "recall", "f1")
POSITIVE_SUFFIX = "_positive"
POSITIVE_METRICS = tuple(f"{m}{POSITIVE_SUFFIX}" for m in PER_CLASS)
SELECTION_METRICS = SCALAR_METRICS + POSITIVE_METRICS
MONITORS = ("val_loss", "val_accuracy", "val_f1_macro", "val_precision_macro", "val_recall_macro")

LABELS = {
    "accuracy": "accuracy",
    "precision_macro": "precision (macro)",
    "recall_macro": "recall (macro)",
    "f1_macro": "F1 (macro)",
    "precision_weighted": "precision (weighted)",
    "recall_weighted": "recall (weighted)",
    "f1_weighted": "F1 (weighted)",
    "precision_positive": "precision (positive class)",
    "recall_positive": "recall (positive class)",
    "f1_positive": "F1 (positive class)",
}


def is_positive_metric(metric: str) -> bool:
    return metric.endswith(POSITIVE_SUFFIX)


def per_class_name(metric: str) -> str:
    """`f1_positive` -> `f1` (the per-class metric a positive-class metric reads)."""
    return metric.removesuffix(POSITIVE_SUFFIX)


def label(metric: str) -> str:
    return LABELS.get(metric, metric)


def monitor_for(metric: str) -> str:
    """The per-epoch validation value that tracks `metric`: val_<metric>, else val_accuracy (*_positive)."""
    return f"val_{metric}" if metric in SCALAR_METRICS else "val_accuracy"


def monitor_mode(monitor: str) -> str:
    return "min" if monitor.endswith("loss") else "max"


def bounded(value: float) -> float:
    """A rate metric as a Python float clamped to [0, 1] (float32 rounding can give 1.0000001)."""
    value = float(value)
    return value if math.isnan(value) else min(1.0, max(0.0, value))
