"""Promotion of registered versions to alias `champion`, gated on the held-out test set (`dlpipe promote`).

Both the challenger and the current champion are loaded from the registry and re-evaluated on the current
prepared test set (raw inputs; each model carries its own normaliser), so the comparison is fair even when the
champion came from an older pipeline run. Without prepared data, the test metrics recorded on the versions are
compared instead, and only when both were measured on the same test set (tag `test_set_hash`).
A refused promotion is a normal outcome, not an error: `dlpipe promote` prints both scores and exits 0.
Tabular models logged with feature names get the test set as named columns (the current dataset's names), so a
champion trained on the same features in another column order is still scored correctly.
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
from dlpipe.data.prepared import PreparedData
from dlpipe.data.store import SPLITS_FILE, dataset_digest, dataset_feature_names
from dlpipe.errors import DataError, RegistryError
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
        names = dataset_feature_names(paths.raw)
    except (DataError, FileNotFoundError):
        return None
    idx = data.splits.test_idx
    X = data.dataset.X[torch.from_numpy(idx)].numpy().astype(np.float32)
    y = data.dataset.y[torch.from_numpy(idx)].numpy()
    return TestSet(X, y, list(data.dataset.class_names), test_set_hash(dhash, idx), names)


def model_input(model, test: TestSet) -> np.ndarray | pd.DataFrame:
    """The test inputs as `model` takes them: named columns for a model with feature names, else the array."""
    from dlpipe.tracking.model_logging import feature_names_of

    wanted = feature_names_of(model)
    if wanted is None:
        return test.X
    flat = test.X.reshape(len(test.X), -1)
    names = test.feature_names if test.feature_names is not None else wanted  # older data: by position
    if len(names) != flat.shape[1]:
        names = [str(i) for i in range(flat.shape[1])]  # cannot match: MLflow names the missing columns
    return pd.DataFrame(flat.astype(np.float64), columns=names)


def model_scorer(name: str, metric: str, positive_class: str | None, test: TestSet) -> Callable[[ModelVersion], float]:
    """score(version): `metric` of the registered version's predictions on `test`."""
    from dlpipe.tracking.model_logging import load, read_output

    def score(version: ModelVersion) -> float:
        try:
            model = load(f"models:/{name}/{version.version}")
            probs = model.predict(model_input(model, test))
        except Exception as exc:  # schema/shape mismatch, missing artifacts
            raise RegistryError(
                f"{name} version {version.version} cannot be evaluated on the current test set "
                f"({' '.join(str(exc).split())[:300]}); use --force to promote without comparing"
            ) from None
        predicted_names, class_probs = read_output(probs)
        columns = [str(c) for c in class_probs.columns]
        if sorted(columns) != sorted(test.class_names):
            raise RegistryError(
                f"{name} version {version.version} predicts classes {columns} but the test set has "
                f"{test.class_names}; use --force to promote without comparing"
            )
        index = {c: i for i, c in enumerate(test.class_names)}
        y_pred = np.array([index[c] for c in predicted_names], dtype=np.int64)
        value = score_predictions(test.y, y_pred, metric, test.class_names, positive_class)
        log.info("%s version %s: %s %.4f on the held-out test set", name, version.version, metric, value)
        return value

    return score


def recorded_scorer(name: str, metric: str) -> Callable[[ModelVersion], float]:
    """score(version) from its recorded `test_<metric>` tag (same test set checked by the caller)."""

    def score(version: ModelVersion) -> float:
        value = version.tags.get(f"test_{metric}")
        if value is None:
            raise RegistryError(f"{name} version {version.version} has no recorded test_{metric}; use --force")
        return float(value)

    return score


def gate_scorer(
    params: Params, paths: ProjectPaths, name: str, candidate: ModelVersion | None, champion: ModelVersion | None
) -> Callable[[ModelVersion], float]:
    metric, positive = params.selection.metric, params.selection.positive_class
    test = load_test_set(params, paths)
    if test is not None:
        return model_scorer(name, metric, positive, test)
    if candidate is not None and champion is not None:
        a, b = candidate.tags.get("test_set_hash"), champion.tags.get("test_set_hash")
        if not a or a != b:
            raise RegistryError(
                f"no prepared data to re-evaluate {name} versions {candidate.version} and {champion.version}, and "
                f"their recorded test metrics come from different test sets; run `dvc repro prepare` or use --force"
            )
    return recorded_scorer(name, metric)


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
