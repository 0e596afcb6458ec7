"""Classification metrics from torchmetrics (synced across DDP ranks at compute time), read out through
`dlpipe.metric_names.metric_value`: Python floats, rates clamped to [0, 1]."""

from __future__ import annotations

import torch
from torchmetrics import ConfusionMatrix, Metric, MetricCollection
from torchmetrics.classification import MulticlassAccuracy, MulticlassF1Score, MulticlassPrecision, MulticlassRecall

from dlpipe.metric_names import PER_CLASS, metric_value


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


def logits_report(logits: torch.Tensor, y: torch.Tensor, class_names: list[str]) -> dict:
    """The evaluation report of a part from its logits (computed once, in-process): the same metric objects as
    Lightning's test loop (`Classifier.test_step`), so the same values, without a second pass over the part."""
    scalars, detailed = scalar_metrics(len(class_names)), detailed_metrics(len(class_names))
    scalars.update(logits, y)
    detailed.update(logits, y)
    return report(scalars.compute(), detailed.compute(), class_names)


def positive_class_metrics(result: dict, positive_class: str) -> dict[str, float]:
    """precision/recall/f1 of one class as `<metric>_positive` (binary selection metrics)."""
    per = result["per_class"][positive_class]
    return {f"{m}_positive": per[m] for m in PER_CLASS}
