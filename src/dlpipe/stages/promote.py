"""Promotion of registered versions to alias `champion`, gated on the held-out test set (`dlpipe promote`).

A fair gate compares two versions only on rows neither trained on: both must have been held out on the same test
set (tag `test_set_hash`: the dataset's hash and the test indices). Then both are loaded from the registry and
re-evaluated on the current prepared test set when it is that test set (raw inputs, as their signatures take them:
named columns, categorical ones as text; each model carries its own normaliser and vocabularies), else their
recorded test metrics are compared. Versions held out on different test sets (another seed, split or data), or that
cannot be scored, are not compared: the champion stays, and the decision is left to the user (`--force`), said in
one line and recorded (action `not_compared`). Neither a refusal nor a non-comparison is an error: `dlpipe
promote` prints the outcome and exits 0.
`dlpipe promote` needs the existing MLflow store: a missing local store is refused (exit 2) and not created.
"""

from __future__ import annotations

import hashlib
import logging
from collections.abc import Callable
from dataclasses import dataclass

import numpy as np
import pandas as pd
import torch
from mlflow.entities.model_registry import ModelVersion

from dlpipe.config import Params
from dlpipe.data.base import Features
from dlpipe.data.prepared import PreparedData
from dlpipe.data.store import SPLITS_FILE, dataset_digest
from dlpipe.errors import DataError
from dlpipe.evaluation.selection import score_predictions
from dlpipe.paths import ProjectPaths
from dlpipe.tracking import registry, store

log = logging.getLogger(__name__)


@dataclass
class TestSet:
    X: np.ndarray  # raw (not normalised) inputs, float32
    y: np.ndarray
    class_names: list[str]
    hash: str
    feature_names: list[str] | None = None  # tabular data: X's column names, in order
    features: Features | None = None  # tabular data: the categorical columns' vocabularies (X holds their codes)
    texts: list[str] | None = None  # text data: the raw text of each test row (X is empty)


def test_set_hash(dataset_hash: str, test_idx: np.ndarray) -> str:
    """Identifies a held-out test set: the dataset and the indices drawn from it."""
    digest = hashlib.sha256(dataset_hash.encode())
    digest.update(np.ascontiguousarray(test_idx, dtype=np.int64).tobytes())
    return digest.hexdigest()[:16]


def load_test_set(params: Params, paths: ProjectPaths) -> TestSet | None:
    """The prepared held-out test set as raw inputs, or None when the project has no prepared data."""
    if not (paths.prepared / SPLITS_FILE).is_file():
        return None
    try:
        data = PreparedData.load(paths.raw, paths.prepared, params.data.normalize)
        dhash = dataset_digest(paths.raw)
    except (DataError, FileNotFoundError):
        return None
    # the prepared codes, and so their text, follow the training part's vocabularies, not the raw file's
    features = data.dataset.features
    idx = data.splits.test_idx
    X = data.dataset.inputs(idx).numpy()  # float32, images in [0, 1]
    y = data.dataset.y[torch.from_numpy(idx)].numpy()
    names = list(features.names) if features is not None else None
    texts = data.dataset.text.take(idx) if data.dataset.text is not None else None
    return TestSet(X, y, list(data.dataset.class_names), test_set_hash(dhash, idx), names, features, texts)


def model_input(model, test: TestSet) -> np.ndarray | pd.DataFrame:
    """The test inputs as `model`'s signature takes them: named columns (categorical ones as their text) for a
    model with feature names, else the array."""
    from dlpipe.tracking.model_logging import feature_names_of, input_frame

    wanted = feature_names_of(model)
    if test.texts is not None:  # a text model takes its one column of raw text
        return pd.DataFrame({name: test.texts for name in wanted or ["text"]})
    if wanted is None:
        return test.X
    flat = test.X.reshape(len(test.X), -1)
    names = test.feature_names if test.feature_names is not None else wanted  # older data: by position
    if len(names) != flat.shape[1]:
        names = [str(i) for i in range(flat.shape[1])]  # cannot match: MLflow names the missing columns
        return pd.DataFrame(flat.astype(np.float64), columns=names)
    return input_frame(flat, names, test.features)


def model_scorer(name: str, metric: str, positive_class: str | None, test: TestSet) -> Callable[[ModelVersion], float]:
    """score(version): `metric` of the registered version's predictions on `test` (NotComparable if it cannot be
    scored there)."""
    from dlpipe.tracking.model_logging import load, read_output

    def score(version: ModelVersion) -> float:
        try:
            model = load(f"models:/{name}/{version.version}")
            probs = model.predict(model_input(model, test))
        except Exception as exc:  # schema/shape mismatch, missing artifacts
            raise registry.NotComparable(
                f"could not both be scored on the held-out test set (version {version.version}: "
                f"{' '.join(str(exc).split())[:200]})"
            ) from None
        predicted_names, class_probs = read_output(probs)
        columns = [str(c) for c in class_probs.columns]
        if sorted(columns) != sorted(test.class_names):
            raise registry.NotComparable(
                f"cannot both be scored on the held-out test set: version {version.version} predicts classes "
                f"{columns}, the test set has {test.class_names}"
            )
        index = {c: i for i, c in enumerate(test.class_names)}
        y_pred = np.array([index[c] for c in predicted_names], dtype=np.int64)
        value = score_predictions(test.y, y_pred, metric, test.class_names, positive_class)
        log.info("%s version %s: %s %.4f on the held-out test set", name, version.version, metric, value)
        return value

    return score


def recorded_scorer(metric: str) -> Callable[[ModelVersion], float]:
    """score(version) from its recorded `test_<metric>` tag (both measured on the same test set: see `unfair`)."""

    def score(version: ModelVersion) -> float:
        value = version.tags.get(f"test_{metric}")
        if value is None:
            raise registry.NotComparable(
                f"cannot be compared: version {version.version} records no test_{metric}, and the prepared data "
                f"is not their test set to score it again"
            )
        return float(value)

    return score


def unfair(candidate: ModelVersion, champion: ModelVersion) -> str | None:
    """Why comparing the two versions on a test set would not be fair (None: they were held out on the same one,
    so neither trained on a row the other is scored on)."""
    ours, theirs = candidate.tags.get("test_set_hash"), champion.tags.get("test_set_hash")
    if not ours or not theirs:
        which = candidate if not ours else champion
        return f"cannot be compared fairly: version {which.version} records no held-out test set (tag test_set_hash)"
    if ours != theirs:
        return (
            "were tested on different held-out test sets (the seed, the split or the data changed): each may have "
            "trained on rows of the other's test set"
        )
    return None


def gate_scorer(
    params: Params, paths: ProjectPaths, name: str, candidate: ModelVersion | None, champion: ModelVersion | None
) -> Callable[[ModelVersion], float]:
    """score(version) for the gate between `candidate` and `champion`: on the prepared test set when it is the one
    both were held out on, else their recorded scores; raises NotComparable when no fair comparison exists."""
    metric, positive = params.selection.metric, params.selection.positive_class
    if candidate is not None and champion is not None:
        reason = unfair(candidate, champion)
        if reason is not None:

            def refuse(version: ModelVersion) -> float:
                raise registry.NotComparable(reason)

            return refuse
        test = load_test_set(params, paths)
        if test is not None and test.hash == candidate.tags["test_set_hash"]:
            return model_scorer(name, metric, positive, test)
    return recorded_scorer(metric)


def run(
    params: Params,
    paths: ProjectPaths,
    version: int | None = None,
    force: bool = False,
    actor: str = "dlpipe promote",
    name: str | None = None,
) -> registry.Decision:
    """Promote `version` (default: the challenger) to champion if it beats the champion on the test set."""
    store.connect(params.mlflow.tracking_uri, paths.root, "dlpipe promote")
    return promote_version(params, paths, version, force=force, actor=actor, name=name)


def promote_version(
    params: Params,
    paths: ProjectPaths,
    version: int | None = None,
    force: bool = False,
    actor: str = "dlpipe promote",
    name: str | None = None,
) -> registry.Decision:
    """`run` in an already configured MLflow store."""
    name = name or params.registered_model_name
    if version is not None:
        candidate = registry.get_version(name, version)
    else:
        candidate = registry.get_alias(name, registry.CHALLENGER)
    champion = registry.get_alias(name, registry.CHAMPION)
    scorer = None
    if not force and champion is not None and (candidate is None or candidate.version != champion.version):
        scorer = gate_scorer(params, paths, name, candidate, champion)
    return registry.promote(name, version, metric=params.selection.metric, score=scorer, force=force, actor=actor)


def rollback(params: Params, paths: ProjectPaths, name: str | None = None) -> registry.Decision:
    store.connect(params.mlflow.tracking_uri, paths.root, "dlpipe promote --rollback")
    return registry.rollback(name or params.registered_model_name)
