"""Operating points: the decision rule a classifier is deployed with, chosen on out-of-fold predictions.

`selection.operating_point`:
- `argmax`: the most probable class (any number of classes);
- `max_f1`: binary tasks, the threshold on P(positive class) with the highest F1 of the positive class;
- `precision>=X` / `recall>=X`: binary tasks, the threshold that reaches precision (recall) >= X with the best
  recall (precision) of the positive class.

The threshold is chosen once, on the out-of-fold probabilities of cross-validation (never on the test set), then
carried by the logged model and applied by `dlpipe predict` and the served model; the test set reports how it does.
When no threshold reaches a precision/recall target, the threshold that comes closest is used and the report says
the target was not reached.
"""

from __future__ import annotations

import re
from dataclasses import asdict, dataclass

import numpy as np

RULE = re.compile(r"^(argmax|max_f1|(precision|recall)>=(0(\.\d+)?|1(\.0+)?))$")


def parse_rule(text: str) -> tuple[str, float | None]:
    """`precision>=0.95` -> ("precision", 0.95); `max_f1` -> ("max_f1", None); ValueError for anything else."""
    match = RULE.match(text.replace(" ", ""))
    if not match:
        raise ValueError(
            f"{text!r} is not an operating point; allowed: argmax, max_f1, precision>=X, recall>=X (0 < X <= 1)"
        )
    if match.group(2):
        target = float(match.group(3))
        if not 0 < target <= 1:
            raise ValueError(f"{text!r}: the target must be in (0, 1]")
        return match.group(2), target
    return match.group(1), None


@dataclass
class OperatingPoint:
    rule: str
    threshold: float | None  # on P(positive class); None = argmax
    positive_class: str | None
    precision: float | None = None  # of the positive class on the out-of-fold predictions at this threshold
    recall: float | None = None
    f1: float | None = None
    reached: bool = True  # the precision/recall target was reached

    def to_dict(self) -> dict:
        return asdict(self)

    @classmethod
    def from_dict(cls, data: dict | None) -> OperatingPoint:
        if not data:
            return cls("argmax", None, None)
        return cls(**{k: v for k, v in data.items() if k in cls.__dataclass_fields__})


def argmax_point(class_names: list[str], positive_class: str | None) -> OperatingPoint:
    """The argmax decision, known before cross-validation runs (what `choose` gives for rule argmax): binary tasks
    name their positive class (`positive_class`, else the last class)."""
    if len(class_names) != 2:
        return OperatingPoint("argmax", None, None)
    return OperatingPoint("argmax", None, positive_class if positive_class in class_names else class_names[-1])


def choose(rule: str, y_positive: np.ndarray, p_positive: np.ndarray, positive_class: str | None) -> OperatingPoint:
    """The operating point of `rule` on binary labels (1 = positive) and positive-class probabilities."""
    kind, target = parse_rule(rule)
    if kind == "argmax":
        return OperatingPoint("argmax", None, positive_class)
    from sklearn.metrics import precision_recall_curve

    y = np.asarray(y_positive).astype(int)
    precision, recall, thresholds = precision_recall_curve(y, np.asarray(p_positive, dtype=float))
    precision, recall = precision[:-1], recall[:-1]  # the last point (recall 0) has no threshold
    with np.errstate(divide="ignore", invalid="ignore"):
        f1 = np.where(precision + recall > 0, 2 * precision * recall / (precision + recall), 0.0)
    reached = True
    if kind == "max_f1":
        best = int(np.argmax(f1))
    else:
        achieved, other = (precision, recall) if kind == "precision" else (recall, precision)
        ok = np.flatnonzero(achieved >= target)
        if len(ok):
            best = int(ok[np.argmax(other[ok])])
        else:  # the closest to the target
            best, reached = int(np.argmax(achieved)), False
    return OperatingPoint(
        rule,
        float(thresholds[best]),
        positive_class,
        float(precision[best]),
        float(recall[best]),
        float(f1[best]),
        reached,
    )


def decide(probs: np.ndarray, point: OperatingPoint, class_names: list[str]) -> np.ndarray:
    """Class indices predicted from probabilities (N x C) under `point`."""
    probs = np.asarray(probs)
    if point.threshold is None:
        return probs.argmax(axis=1)
    positive = class_names.index(point.positive_class)
    negative = 1 - positive
    return np.where(probs[:, positive] >= point.threshold, positive, negative)
