"""Classical baselines (scikit-learn) scored exactly like the deep models: on the same cross-validation folds and,
once, on the same held-out test set, with the same metrics.

Images are flattened into pixel vectors and fed as they are (in [0, 1]). Tabular data go through a scikit-learn
pipeline fitted on the samples the baseline trains on (per fold, and once for the test): numeric columns
standardised, categorical columns (codes, see `data.base.Features`) one-hot, a category the fit never saw all zeros;
gradient boosting takes the categories natively instead. The crosses declared for wide & deep
(`models.wide_deep.crosses`) reach the linear baseline too, one-hot per (a, b) pair. Small inner grids are searched
by cross-validation on each training part only; gradient boosting chooses its number of trees by early stopping on
a slice of it. A training part larger than `max_train` is subsampled (stratified) for fitting, and the report says
so.

Series take the generic baselines as flat vectors (NaN padding as zeros); the series baselines (aeon's MiniRocket
and 1-NN DTW, sequence data only) take them as series: DTW each series at its own length, MiniRocket (equal lengths
only) the NaN padding as zeros.

Text (a CSV's `data.csv.text_column`) takes only the bag-of-words baseline: word counts (lowercased, the vocabulary
fitted on the baseline's own training rows, as the deep models' tokenizer) into a logistic regression; the generic
baselines would read the empty placeholder X of text data, so `check` refuses them.
"""

from __future__ import annotations

import time
from collections.abc import Callable, Sequence
from dataclasses import asdict, dataclass, field
from typing import TYPE_CHECKING, Any

import numpy as np

from dlpipe.metric_names import SCALAR_METRICS

if TYPE_CHECKING:
    from dlpipe.data.base import Dataset, Features
    from dlpipe.data.prepared import PreparedData

INNER_FOLDS = 3
ROCKET_KERNELS = 1008  # MiniRocket's kernels (a multiple of its 84); 10,000 in the paper, 1,008 fits a CPU budget
ALL_KINDS = frozenset({"image", "tabular", "sequence"})
HGB_MAX_CATEGORIES = 255  # scikit-learn's native categories: at most max_bins (255) per column


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


def _hist_gradient_boosting(seed: int) -> Any:
    from sklearn.ensemble import HistGradientBoostingClassifier

    # the number of trees by early stopping on 10% of the training part (one fit, not a grid: cheap on a CPU)
    return HistGradientBoostingClassifier(
        learning_rate=0.1,
        max_leaf_nodes=15,
        max_iter=300,
        early_stopping=True,
        validation_fraction=0.1,
        n_iter_no_change=10,
        random_state=seed,
    )


def _rocket(seed: int) -> Any:
    from aeon.classification.convolution_based import MiniRocketClassifier

    return MiniRocketClassifier(n_kernels=ROCKET_KERNELS, random_state=seed, n_jobs=1)


def _bag_of_words(seed: int) -> Any:
    from sklearn.feature_extraction.text import TfidfVectorizer
    from sklearn.linear_model import LogisticRegression
    from sklearn.pipeline import make_pipeline

    return make_pipeline(TfidfVectorizer(lowercase=True), LogisticRegression(max_iter=300, tol=1e-3))


def _dtw(seed: int) -> Any:
    from aeon.classification.distance_based import KNeighborsTimeSeriesClassifier

    return KNeighborsTimeSeriesClassifier(n_neighbors=1, distance="dtw", n_jobs=1)  # full window, no tie to break


def _grid(estimator: Any, grid: dict, seed: int) -> Any:
    from sklearn.model_selection import GridSearchCV, StratifiedKFold

    inner = StratifiedKFold(INNER_FOLDS, shuffle=True, random_state=seed)
    return GridSearchCV(estimator, grid, cv=inner, scoring="f1_macro", n_jobs=1)


@dataclass(frozen=True)
class Baseline:
    description: str
    make: Callable[[int], Any]  # the estimator, from the seed
    native_categories: bool = False  # takes category codes as they are (else one-hot)
    crosses: bool = False  # also takes the declared crosses, one-hot
    kinds: frozenset[str] = ALL_KINDS  # the dataset kinds it takes
    unequal_length: bool = False  # a series baseline that takes series of unequal length (else NaN padding as zeros)
    min_length: int = 1  # shorter series are padded with zeros (MiniRocket's kernels span 9 steps)

    @property
    def series(self) -> bool:
        """Takes series as series (N x channels x length), not flattened."""
        return self.kinds == {"sequence"}


# the registry; params' `baselines.models` names
BASELINES: dict[str, Baseline] = {
    "logreg": Baseline(
        "logistic regression (L2, lbfgs); categories and declared crosses one-hot", _logreg, crosses=True
    ),
    "svc": Baseline("RBF support vector machine, C in 1/10/100 by inner CV; categories one-hot", _svc),
    "random_forest": Baseline("random forest, 300 trees; categories one-hot", _random_forest),
    "knn": Baseline("k nearest neighbours, k in 1/3/5/9 by inner CV; categories one-hot", _knn),
    "hist_gradient_boosting": Baseline(
        "histogram gradient boosting, trees by early stopping; native categories",
        _hist_gradient_boosting,
        native_categories=True,
    ),
    "rocket": Baseline(
        f"MiniRocket ({ROCKET_KERNELS} kernels) and ridge regression; series only, padding as zeros",
        _rocket,
        kinds=frozenset({"sequence"}),
        min_length=9,
    ),
    "dtw": Baseline(
        "1-nearest neighbour, dynamic time warping (full window); series only, each at its length",
        _dtw,
        kinds=frozenset({"sequence"}),
        unequal_length=True,
    ),
    "bow_logreg": Baseline(
        "bag of words (tf-idf of lowercased words, vocabulary of the training rows) and logistic regression; text only",
        _bag_of_words,
        kinds=frozenset({"text"}),
    ),
}


def _cross_codes(X: np.ndarray, width: int) -> np.ndarray:
    """One id per (a, b) code pair of the two columns of `X`."""
    codes = np.asarray(X, dtype=np.int64)
    return (codes[:, :1] * width + codes[:, 1:2]).astype(np.float64)


def _tabular_encoder(features: Features, crosses: Sequence[Sequence[str]]) -> Any:
    """Numeric columns scaled, then each categorical column and each cross one-hot (unseen: all zeros)."""
    from sklearn.compose import ColumnTransformer
    from sklearn.pipeline import make_pipeline
    from sklearn.preprocessing import FunctionTransformer, OneHotEncoder, StandardScaler

    def onehot() -> Any:
        return OneHotEncoder(handle_unknown="ignore")

    parts: list[tuple[str, Any, list[int]]] = [("numeric", StandardScaler(), features.numeric)]
    parts += [(f"category_{features.names[i]}", onehot(), [i]) for i in features.categorical]
    for a, b in crosses:
        ia, ib = features.names.index(a), features.names.index(b)
        pair = FunctionTransformer(_cross_codes, kw_args={"width": features.cardinality(ib)})
        parts.append((f"cross_{a}_x_{b}", make_pipeline(pair, onehot()), [ia, ib]))
    return ColumnTransformer(parts)


def make_baseline(
    name: str,
    seed: int,
    kind: str = "tabular",
    features: Features | None = None,
    crosses: Sequence[Sequence[str]] = (),
) -> Any:
    """Baseline `name` as an unfitted pipeline for inputs of `kind` (tabular columns described by `features`)."""
    from sklearn.pipeline import make_pipeline
    from sklearn.preprocessing import StandardScaler

    baseline = BASELINES[name]
    estimator = baseline.make(seed)
    if baseline.series or baseline.kinds == {"text"}:
        return estimator
    if kind != "tabular":
        return make_pipeline(estimator)
    categorical = features.categorical if features is not None else []
    if baseline.native_categories:
        if categorical:
            mask = [
                i in categorical and features.cardinality(i) - 1 <= HGB_MAX_CATEGORIES
                for i in range(len(features.names))
            ]
            estimator.set_params(categorical_features=mask)
        return make_pipeline(estimator)
    if not categorical:
        return make_pipeline(StandardScaler(), estimator)
    return make_pipeline(_tabular_encoder(features, crosses if baseline.crosses else ()), estimator)


def describe(name: str, crosses: Sequence[Sequence[str]] = ()) -> str:
    """The baseline's description, naming the crosses it takes."""
    text = BASELINES[name].description
    if crosses and BASELINES[name].crosses:
        text += " (crosses: " + ", ".join(f"{a} x {b}" for a, b in crosses) + ")"
    return text


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


def _inputs(baseline: Baseline, X: Any) -> np.ndarray | list[np.ndarray]:
    """What `baseline` fits on: flat vectors, or series (N x channels x length; a list of channels x length arrays,
    each cut at its length, for a baseline that takes unequal lengths), NaN padding as zeros."""
    from dlpipe.data.base import series_lengths

    if not baseline.series:
        return np.nan_to_num(X.flatten(1).numpy().astype(np.float64))
    lengths = series_lengths(X).numpy()
    series = X.numpy().astype(np.float64)
    if baseline.unequal_length and (lengths < series.shape[-1]).any():
        return [s[:, : int(n)] for s, n in zip(series, lengths, strict=True)]
    short = max(baseline.min_length - series.shape[-1], 0)
    return np.pad(np.nan_to_num(series), ((0, 0), (0, 0), (0, short)))


class _PixelRows:
    """8-bit images (uint8 X) as a baseline fits on them, flat float64 vectors of X / 255 (read as float32, as the deep
    models read it), made for the rows taken only: no float64 copy of the whole dataset."""

    def __init__(self, dataset: Dataset):
        self.dataset = dataset

    def __getitem__(self, idx: np.ndarray) -> np.ndarray:
        return self.dataset.inputs(idx).flatten(1).numpy().astype(np.float64)


def _take(X: np.ndarray | list[np.ndarray] | _PixelRows, idx: np.ndarray) -> np.ndarray | list[np.ndarray]:
    return [X[i] for i in idx] if isinstance(X, list) else X[idx]


def _fit_part(idx: np.ndarray, y: np.ndarray, max_train: int | None, seed: int, labeled_fraction: float) -> np.ndarray:
    """The samples a baseline fits on: the labelled part of `idx` (the deep models' `data.labeled_fraction`, drawn
    alike), at most `max_train` of them."""
    from dlpipe.data.splits import labeled_subset, stratified_rows

    return stratified_rows(y, labeled_subset(y, idx, labeled_fraction, seed)[0], max_train, seed)


def run_baseline(
    name: str,
    data: PreparedData,
    seed: int,
    max_train: int | None = None,
    crosses: Sequence[Sequence[str]] = (),
    threads: int | None = 1,
) -> BaselineResult:
    """Score baseline `name` on every fold (trained on the others) and once on the test set; `crosses` (pairs of
    categorical columns) reach the baselines that take them. scikit-learn's native threads (OpenMP, BLAS) are
    limited to `threads` (None: the libraries' default): oversubscribed threads spin-wait, and gradient boosting on
    digits took 168 s with two threads on a loaded 2-core machine, 16 s with one."""
    from threadpoolctl import threadpool_limits

    with threadpool_limits(limits=threads):
        return _run_baseline(name, data, seed, max_train, crosses)


def _run_baseline(
    name: str, data: PreparedData, seed: int, max_train: int | None, crosses: Sequence[Sequence[str]]
) -> BaselineResult:
    from sklearn.ensemble import HistGradientBoostingClassifier
    from sklearn.model_selection import GridSearchCV

    from dlpipe.evaluation.reports import report_from_predictions

    text = data.dataset.text
    if text is not None:
        X = np.asarray(text.texts, dtype=object)
    else:
        X = _PixelRows(data.dataset) if data.pixels else _inputs(BASELINES[name], data.dataset.X)
    y = data.y_numpy
    names = data.dataset.class_names
    features = data.dataset.features
    if crosses and BASELINES[name].crosses:
        from dlpipe.models.dense import check_crosses

        check_crosses([tuple(pair) for pair in crosses], features)  # the error wide_deep would give
    else:
        crosses = []

    def make() -> Any:
        return make_baseline(name, seed, data.dataset.kind, features, crosses)

    per_fold, per_class = {}, {}
    start = time.perf_counter()
    for k in range(data.splits.folds):
        others, scored = data.splits.fold_indices(k)
        fit_idx = _fit_part(others, y, max_train, seed, data.labeled_fraction)
        model = make().fit(_take(X, fit_idx), y[fit_idx])
        report = report_from_predictions(y[scored], model.predict(_take(X, scored)), names)
        per_fold[f"fold_{k}"] = {m: report[m] for m in SCALAR_METRICS}
        per_class[f"fold_{k}"] = report["per_class"]
    train_idx = _fit_part(data.splits.train_idx, y, max_train, seed, data.labeled_fraction)
    final = make().fit(_take(X, train_idx), y[train_idx])
    test_idx = data.splits.test_idx
    test = report_from_predictions(y[test_idx], final.predict(_take(X, test_idx)), names)
    search = final[-1] if hasattr(final, "steps") else final
    chosen = dict(search.best_params_) if isinstance(search, GridSearchCV) else {}
    if isinstance(search, HistGradientBoostingClassifier):  # trees kept by early stopping
        chosen["n_iter"] = int(search.n_iter_)
    subsampled = len(train_idx) if len(train_idx) < len(data.splits.train_idx) else None
    return BaselineResult(
        name,
        describe(name, crosses),
        per_fold,
        per_class,
        test,
        time.perf_counter() - start,
        chosen,
        subsampled,
    )
