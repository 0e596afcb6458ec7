"""Classical baselines (scikit-learn) scored exactly like the deep models: on the same cross-validation folds and,
once, on the same held-out test set, with the same metrics.

Images are flattened into pixel vectors and fed as they are (in [0, 1]); tabular features are standardised by a
scaler fitted on the samples the baseline trains on, like the deep models' normaliser. Small inner grids are
searched by cross-validation on each training part only. A training part larger than `max_train` is subsampled
(stratified) for fitting, and the report says so.
"""

from __future__ import annotations

import time
from collections.abc import Callable
from dataclasses import asdict, dataclass, field
from typing import TYPE_CHECKING, Any

import numpy as np

from dlpipe.metric_names import SCALAR_METRICS

if TYPE_CHECKING:
    from dlpipe.data.prepared import PreparedData

INNER_FOLDS = 3


def _logreg(seed: int) -> Any:
    from sklearn.linear_model import LogisticRegression

    return LogisticRegression(max_iter=300, tol=1e-3)


def _svc(seed: int) -> Any:
    from sklearn.svm import SVC

    return _grid(SVC(kernel="rbf", gamma="scale"), {"C": [1.0, 10.0, 100.0]}, seed)


def _random_forest(seed: int) -> Any:
    from sklearn.ensemble import RandomForestClassifier

    return RandomForestClassifier(n_estimators=300, random_state=seed, n_jobs=1)


def _knn(seed: int) -> Any:
    from sklearn.neighbors import KNeighborsClassifier

    return _grid(KNeighborsClassifier(), {"n_neighbors": [1, 3, 5, 9]}, seed)


def _grid(estimator: Any, grid: dict, seed: int) -> Any:
    from sklearn.model_selection import GridSearchCV, StratifiedKFold

    inner = StratifiedKFold(INNER_FOLDS, shuffle=True, random_state=seed)
    return GridSearchCV(estimator, grid, cv=inner, scoring="f1_macro", n_jobs=1)


# name -> (description, estimator factory taking the seed); the registry params' `baselines.models` names
BASELINES: dict[str, tuple[str, Callable[[int], Any]]] = {
    "logreg": ("logistic regression (L2, lbfgs)", _logreg),
    "svc": ("RBF support vector machine, C in 1/10/100 by inner CV", _svc),
    "random_forest": ("random forest, 300 trees", _random_forest),
    "knn": ("k nearest neighbours, k in 1/3/5/9 by inner CV", _knn),
}


def make_baseline(name: str, seed: int, kind: str = "tabular") -> Any:
    from sklearn.pipeline import make_pipeline
    from sklearn.preprocessing import StandardScaler

    estimator = BASELINES[name][1](seed)
    return make_pipeline(StandardScaler(), estimator) if kind == "tabular" else make_pipeline(estimator)


@dataclass
class BaselineResult:
    name: str
    description: str
    per_fold: dict[str, dict[str, float]]
    per_fold_per_class: dict[str, dict]
    test: dict  # the test report (refitted on the whole training part)
    fit_seconds: float
    chosen: dict[str, object] = field(default_factory=dict)  # grid choices of the final fit
    subsampled: int | None = None  # training samples used when the training part was larger than max_train

    @property
    def mean(self) -> dict[str, float]:
        return {m: float(np.mean([f[m] for f in self.per_fold.values()])) for m in SCALAR_METRICS}

    @property
    def std(self) -> dict[str, float]:
        return {m: float(np.std([f[m] for f in self.per_fold.values()], ddof=1)) for m in SCALAR_METRICS}

    def to_dict(self) -> dict:
        return {**asdict(self), "kind": "baseline", "mean": self.mean, "std": self.std, "folds": len(self.per_fold)}


def _fit_part(idx: np.ndarray, y: np.ndarray, max_train: int | None, seed: int, labeled_fraction: float) -> np.ndarray:
    """The samples a baseline fits on: the labelled part of `idx` (the deep models' `data.labeled_fraction`, drawn
    alike), at most `max_train` of them."""
    from dlpipe.data.splits import labeled_subset

    idx = labeled_subset(y, idx, labeled_fraction, seed)[0]
    if max_train is None or len(idx) <= max_train:
        return idx
    from sklearn.model_selection import train_test_split

    keep, _ = train_test_split(idx, train_size=max_train, stratify=y[idx], random_state=seed)
    return np.sort(keep)


def run_baseline(name: str, data: PreparedData, seed: int, max_train: int | None = None) -> BaselineResult:
    """Score baseline `name` on every fold (trained on the others) and once on the test set."""
    from sklearn.model_selection import GridSearchCV

    from dlpipe.evaluation.reports import report_from_predictions

    X = np.nan_to_num(data.dataset.X.flatten(1).numpy().astype(np.float64))  # series padding (NaN) as zeros
    y = data.y_numpy
    names = data.dataset.class_names
    per_fold, per_class = {}, {}
    start = time.perf_counter()
    for k in range(data.splits.folds):
        others, scored = data.splits.fold_indices(k)
        fit_idx = _fit_part(others, y, max_train, seed, data.labeled_fraction)
        model = make_baseline(name, seed, data.dataset.kind).fit(X[fit_idx], y[fit_idx])
        report = report_from_predictions(y[scored], model.predict(X[scored]), names)
        per_fold[f"fold_{k}"] = {m: report[m] for m in SCALAR_METRICS}
        per_class[f"fold_{k}"] = report["per_class"]
    train_idx = _fit_part(data.splits.train_idx, y, max_train, seed, data.labeled_fraction)
    final = make_baseline(name, seed, data.dataset.kind).fit(X[train_idx], y[train_idx])
    test_idx = data.splits.test_idx
    test = report_from_predictions(y[test_idx], final.predict(X[test_idx]), names)
    search = final[-1]
    chosen = dict(search.best_params_) if isinstance(search, GridSearchCV) else {}
    subsampled = len(train_idx) if len(train_idx) < len(data.splits.train_idx) else None
    return BaselineResult(
        name, BASELINES[name][0], per_fold, per_class, test, time.perf_counter() - start, chosen, subsampled
    )
