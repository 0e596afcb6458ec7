"""The metric catalogue: every metric name dlpipe reports, selects on or monitors, with its label. No torch here.

- Scalar metrics are computed for every evaluation (torchmetrics in training, scikit-learn for baselines).
- Selection metrics are the scalar ones plus `<precision|recall|f1>_positive`: one class's metric
  (`selection.positive_class`, binary tasks), read from the per-class report.
- Monitors are the per-epoch validation values early stopping may watch.
"""

from __future__ import annotations

import math
from typing import Any

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


UNIT_RANGE = frozenset({*SCALAR_METRICS, *PER_CLASS, *POSITIVE_METRICS})
STAGE_PREFIXES = ("train_", "val_", "test_")
RANGE_SLACK = 1e-4  # float32 rounding (F1 = 1.0000001 for a perfect score); anything beyond is a bug, not noise


def metric_value(name: str, value: Any) -> float:
    """`value` (a float, or a one-element tensor) as a Python float; metrics in [0, 1] (accuracy, precision, recall,
    F1, with or without a `train_`/`val_`/`test_` prefix) are clamped to it. Losses and unknown names are converted
    only: a NaN or infinite loss stays so, for the callers that fail a diverged run. NaN passes through unclamped.

    Raises ValueError for a [0, 1] metric further outside its range than float32 rounding explains."""
    out = float(value.item() if hasattr(value, "item") else value)
    base = name
    for prefix in STAGE_PREFIXES:
        base = base.removeprefix(prefix)
    if base not in UNIT_RANGE or math.isnan(out):
        return out
    if not -RANGE_SLACK <= out <= 1 + RANGE_SLACK:
        raise ValueError(f"metric {name} = {out!r} is outside [0, 1]")
    return min(max(out, 0.0), 1.0)
