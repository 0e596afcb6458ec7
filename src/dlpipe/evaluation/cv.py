"""Stratified k-fold cross-validation: train on k-1 folds, validate on the held-out fold, aggregate.

The held-out test set never appears here: folds index only the training part.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass, field

import numpy as np
from lightning.pytorch.callbacks import Callback

from dlpipe.config import TrainerParams
from dlpipe.data.prepared import PreparedData
from dlpipe.training.fit import ModelSpec, evaluate, fit
from dlpipe.training.metrics import SCALAR_METRICS


@dataclass
class FoldResult:
    fold: int
    metrics: dict[str, float]  # SCALAR_METRICS on the validation fold
    report: dict  # per-class metrics and confusion matrix on the validation fold
    epochs: int
    best_epoch: int | None
    seconds: float
    history: list[dict[str, float]] = field(default_factory=list)

    def to_dict(self) -> dict:
        return asdict(self)

    @classmethod
    def from_dict(cls, data: dict) -> FoldResult:
        return cls(**data)


def run_fold(
    spec: ModelSpec,
    data: PreparedData,
    k: int,
    trainer_params: TrainerParams,
    seed: int,
    *,
    max_epochs: int | None = None,
    callbacks: list[Callback] | None = None,
) -> FoldResult:
    """Train on every fold but `k` (normalised with their statistics) and evaluate on fold `k`."""
    split = data.fold(k)
    result = fit(spec, split, data.dataset.class_names, trainer_params, seed, max_epochs=max_epochs,
                 callbacks=callbacks)  # fmt: skip
    report = evaluate(result.module, split.val, trainer_params)
    metrics = {m: report[m] for m in SCALAR_METRICS}
    return FoldResult(k, metrics, report, result.epochs, result.best_epoch, result.seconds, result.history)


def aggregate(folds: list[FoldResult]) -> dict:
    """Mean and sample standard deviation of every metric over folds, and the confusion matrix summed."""
    if not folds:
        raise ValueError("no folds to aggregate")
    values = {m: np.array([f.metrics[m] for f in folds], dtype=float) for m in SCALAR_METRICS}
    confusion = np.sum([np.asarray(f.report["confusion_matrix"]) for f in folds], axis=0)
    return {
        "folds": len(folds),
        "mean": {m: float(v.mean()) for m, v in values.items()},
        "std": {m: float(v.std(ddof=1)) if len(v) > 1 else 0.0 for m, v in values.items()},
        "per_fold": {f"fold_{f.fold}": dict(f.metrics) for f in sorted(folds, key=lambda f: f.fold)},
        "confusion_matrix": confusion.astype(int).tolist(),
        "class_names": folds[0].report["class_names"],
    }
