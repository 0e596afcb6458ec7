"""Classification metrics from torchmetrics (synced across DDP ranks at compute time), and `metric_value`, the one
way dlpipe reads a metric out of torchmetrics or Lightning: a Python float, clamped to the metric's range."""

from __future__ import annotations

import math

import torch
from torchmetrics import ConfusionMatrix, Metric, MetricCollection
from torchmetrics.classification import MulticlassAccuracy, MulticlassF1Score, MulticlassPrecision, MulticlassRecall

# The scalar metrics logged every epoch, as `<stage>_<name>` (val_f1_macro ...).
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
UNIT_RANGE = frozenset({*SCALAR_METRICS, *PER_CLASS, *(f"{m}_positive" for m in PER_CLASS)})
STAGE_PREFIXES = ("train_", "val_", "test_")
RANGE_SLACK = 1e-4  # float32 rounding (F1 = 1.0000001 for a perfect score); anything beyond is a bug, not noise


def metric_value(name: str, value: torch.Tensor | float) -> float:
    """`value` as a Python float (float64); metrics in [0, 1] (accuracy, precision, recall, F1, with or without a
    `train_`/`val_`/`test_` prefix) are clamped to it. Losses and unknown names are converted only: a NaN or
    infinite loss stays so, for the callers that fail a diverged run. NaN passes through unclamped.

    Raises ValueError for a [0, 1] metric further outside its range than float32 rounding explains."""
    out = float(value.item() if isinstance(value, torch.Tensor) else value)
    base = name
    for prefix in STAGE_PREFIXES:
        base = base.removeprefix(prefix)
    if base not in UNIT_RANGE or math.isnan(out):
        return out
    if not -RANGE_SLACK <= out <= 1 + RANGE_SLACK:
        raise ValueError(f"metric {name} = {out!r} is outside [0, 1]")
    return min(max(out, 0.0), 1.0)


def metric_values(metrics: dict[str, torch.Tensor | float], prefixes: tuple[str, ...] = ()) -> dict[str, float]:
    """`metric_value` of every entry (of those whose name starts with one of `prefixes`, when given)."""
    return {k: metric_value(k, v) for k, v in metrics.items() if not prefixes or k.startswith(prefixes)}


class BatchMean(Metric):
    """The sample-weighted mean of per-batch values (a loss), with summed states: exact under DDP however unequal the
    ranks' shares. (Lightning's `log(sync_dist=True)` mean truncates the averaged integer count on gloo, and
    torchmetrics' MeanMetric ignores weights when its NaN checks are disabled; a NaN loss must stay NaN here.)

    `update(value, n)` takes one batch's mean and size, or a vector of batch means and a vector of their sizes."""

    full_state_update = False

    def __init__(self) -> None:
        super().__init__()
        self.add_state("total", default=torch.tensor(0.0), dist_reduce_fx="sum")
        self.add_state("count", default=torch.tensor(0.0), dist_reduce_fx="sum")

    def update(self, value: torch.Tensor, n: int | torch.Tensor) -> None:
        n = torch.as_tensor(n, dtype=self.total.dtype, device=self.total.device)
        self.total += (value.detach().to(self.total.dtype) * n).sum()
        self.count += n.sum()

    def compute(self) -> torch.Tensor:
        return self.total / self.count


def scalar_metrics(num_classes: int) -> MetricCollection:
    kw = {"num_classes": num_classes}
    return MetricCollection(
        {
            "accuracy": MulticlassAccuracy(average="micro", **kw),
            "precision_macro": MulticlassPrecision(average="macro", **kw),
            "recall_macro": MulticlassRecall(average="macro", **kw),
            "f1_macro": MulticlassF1Score(average="macro", **kw),
            "precision_weighted": MulticlassPrecision(average="weighted", **kw),
            "recall_weighted": MulticlassRecall(average="weighted", **kw),
            "f1_weighted": MulticlassF1Score(average="weighted", **kw),
        }
    )


def detailed_metrics(num_classes: int) -> MetricCollection:
    """Per-class precision/recall/F1 and the confusion matrix (final evaluation)."""
    kw = {"num_classes": num_classes}
    return MetricCollection(
        {
            "precision_per_class": MulticlassPrecision(average=None, **kw),
            "recall_per_class": MulticlassRecall(average=None, **kw),
            "f1_per_class": MulticlassF1Score(average=None, **kw),
            "confusion_matrix": ConfusionMatrix(task="multiclass", **kw),
        }
    )


def report(scalars: dict[str, torch.Tensor], detailed: dict[str, torch.Tensor], class_names: list[str]) -> dict:
    """A JSON-ready evaluation report: scalar metrics, per-class metrics, confusion matrix (values via
    `metric_value`)."""
    out: dict = metric_values(scalars)
    out["per_class"] = {
        name: {m: metric_value(m, detailed[f"{m}_per_class"][i]) for m in PER_CLASS}
        for i, name in enumerate(class_names)
    }
    out["confusion_matrix"] = detailed["confusion_matrix"].long().tolist()
    out["class_names"] = list(class_names)
    return out


def positive_class_metrics(result: dict, positive_class: str) -> dict[str, float]:
    """precision/recall/f1 of one class as `<metric>_positive` (binary selection metrics)."""
    per = result["per_class"][positive_class]
    return {f"{m}_positive": per[m] for m in PER_CLASS}
