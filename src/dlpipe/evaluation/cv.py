"""Stratified k-fold cross-validation, clean: each fold is scored once by a model that never saw it.

For fold k the model trains on the other folds minus an inner stratified validation slice; early stopping and the
kept (best) epoch are chosen on that slice, then fold k is evaluated once. Its class probabilities are kept as
out-of-fold predictions (operating points, PR/ROC curves and calibration are computed from them). The held-out test
set never appears here: folds index only the training part.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass, field

import numpy as np
from lightning.pytorch.callbacks import Callback

from dlpipe.config import TrainerParams
from dlpipe.data.prepared import PreparedData
from dlpipe.evaluation.calibration import calibrated_probs, fit_temperature, logits_of
from dlpipe.metric_names import SCALAR_METRICS, is_positive_metric, per_class_name
from dlpipe.profile import timed
from dlpipe.training.fit import ModelSpec, fit
from dlpipe.training.metrics import logits_report

PROB_DIGITS = 6  # out-of-fold probabilities are stored rounded (JSON artifacts and reports)


@dataclass
class FoldResult:
    fold: int
    metrics: dict[str, float]  # SCALAR_METRICS on the scored fold
    report: dict  # per-class metrics and confusion matrix on the scored fold
    epochs: int
    best_epoch: int | None
    seconds: float
    history: list[dict[str, float]] = field(default_factory=list)
    val: dict[str, float] = field(default_factory=dict)  # the kept model on the inner validation slice
    idx: list[int] = field(default_factory=list)  # dataset indices of the scored fold
    probs: list[list[float]] = field(default_factory=list)  # out-of-fold class probabilities, rows of idx
    temperature: float = 1.0  # train.calibration: temperature fitted on the inner validation slice

    def to_dict(self) -> dict:
        return asdict(self)

    @classmethod
    def from_dict(cls, data: dict) -> FoldResult:
        known = set(cls.__dataclass_fields__)
        return cls(**{k: v for k, v in data.items() if k in known})


def run_fold(
    spec: ModelSpec,
    data: PreparedData,
    k: int,
    trainer_params: TrainerParams,
    seed: int,
    *,
    val_size: float,
    max_epochs: int | None = None,
    callbacks: list[Callback] | None = None,
    max_train: int | None = None,
) -> FoldResult:
    """Train on the other folds (early stopping on an inner `val_size` slice of them; at most `max_train` rows of
    the rest, stratified), score fold `k` once."""
    split = data.fold(k, val_size, seed, max_train)
    with timed("fit"):
        result = fit(
            spec, split.fit, data.dataset.class_names, trainer_params, seed, max_epochs=max_epochs, callbacks=callbacks
        )
    with timed("evaluate"):  # one pass over the scored fold: its report and its out-of-fold probabilities
        logits = logits_of(result.module, split.scored.X)
        report = logits_report(logits, split.scored.y, data.dataset.class_names)
        temperature = 1.0
        if spec.train.calibration == "temperature":
            temperature = fit_temperature(logits_of(result.module, split.fit.val.X), split.fit.val.y)
        probs = calibrated_probs(logits, temperature).round(PROB_DIGITS)
    return FoldResult(
        fold=k,
        metrics={m: report[m] for m in SCALAR_METRICS},
        report=report,
        epochs=result.epochs,
        best_epoch=result.best_epoch,
        seconds=result.seconds,
        history=result.history,
        val=result.val,
        idx=[int(i) for i in split.scored.idx],
        probs=probs.tolist(),
        temperature=temperature,
    )


def aggregate(folds: list[FoldResult]) -> dict:
    """Mean and sample standard deviation of every metric over folds, and the confusion matrix summed."""
    if not folds:
        raise ValueError("no folds to aggregate")
    values = {m: np.array([f.metrics[m] for f in folds], dtype=float) for m in SCALAR_METRICS}
    confusion = np.sum([np.asarray(f.report["confusion_matrix"]) for f in folds], axis=0)
    ordered = sorted(folds, key=lambda f: f.fold)
    return {
        "folds": len(folds),
        "mean": {m: float(v.mean()) for m, v in values.items()},
        "std": {m: float(v.std(ddof=1)) if len(v) > 1 else 0.0 for m, v in values.items()},
        "per_fold": {f"fold_{f.fold}": dict(f.metrics) for f in ordered},
        "per_fold_per_class": {f"fold_{f.fold}": f.report["per_class"] for f in ordered},
        "confusion_matrix": confusion.astype(int).tolist(),
        "class_names": folds[0].report["class_names"],
    }


def out_of_fold(folds: list[FoldResult], y: np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
    """(idx, fold, true class, probabilities) of every scored sample, sorted by dataset index."""
    idx = np.concatenate([np.asarray(f.idx, dtype=np.int64) for f in folds])
    fold = np.concatenate([np.full(len(f.idx), f.fold, dtype=np.int64) for f in folds])
    probs = np.concatenate([np.asarray(f.probs, dtype=np.float64).reshape(len(f.idx), -1) for f in folds])
    order = np.argsort(idx, kind="stable")
    return idx[order], fold[order], y[idx[order]], probs[order]


def fold_score(result: FoldResult, metric: str, positive_class: str | None = None) -> float:
    """The selection metric of one scored fold (a per-class one from its report)."""
    if is_positive_metric(metric):
        return float(result.report["per_class"][positive_class][per_class_name(metric)])
    return float(result.metrics[metric])


def drops(scores: dict[str, dict[int, float]], candidates: set[str], after: int, margin: float) -> dict[str, dict]:
    """The study budget's drop rule. `scores`: {architecture: {fold: selection metric}} of the folds scored so far.
    Among the architectures with folds 0..after-1 scored, the leader has the highest mean over them; a candidate
    whose mean over the same folds is below the leader's by more than `margin` is dropped: {arch: why}."""
    first = range(after)
    means = {a: float(np.mean([s[k] for k in first])) for a, s in scores.items() if all(k in s for k in first)}
    if len(means) < 2:
        return {}
    leader = max(sorted(means), key=lambda a: means[a])
    out = {}
    for arch in sorted(candidates & set(means)):
        gap = means[leader] - means[arch]
        if gap > margin:
            out[arch] = {
                "after_folds": after,
                "mean": means[arch],
                "leader": leader,
                "leader_mean": means[leader],
                "margin": margin,
                "reason": f"CV mean {means[arch]:.4f} over its first {after} fold(s) is {gap:.4f} below the leader "
                f"{leader}'s {means[leader]:.4f} on the same folds (more than study.budget.drop_margin {margin})",
            }
    return out
