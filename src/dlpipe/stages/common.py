"""What several stages share: the prepared data, the (tuned) model spec, hashes and MLflow set-up."""

from __future__ import annotations

import logging
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import mlflow

from dlpipe.config import Params, apply_overrides, params_hash
from dlpipe.data.prepared import PreparedData
from dlpipe.data.store import DATASET_FILE, dataset_digest
from dlpipe.io import read_json
from dlpipe.paths import ProjectPaths
from dlpipe.tracking import store
from dlpipe.tracking.runs import git_commit, standard_tags
from dlpipe.training.fit import ModelSpec

log = logging.getLogger(__name__)


def tuning_report_path(paths: ProjectPaths, arch: str) -> Path:
    return paths.reports / "tuning" / f"{arch}.json"


def tuned_overrides(paths: ProjectPaths, arch: str) -> dict[str, Any]:
    """The best params found by the tune stage for `arch` ({} when it has not run)."""
    path = tuning_report_path(paths, arch)
    return dict(read_json(path).get("best_params", {})) if path.is_file() else {}


def model_spec(params: Params, paths: ProjectPaths, arch: str, overrides: dict[str, Any] | None = None) -> ModelSpec:
    """`arch` with params.yaml's settings, the tune stage's best params, then `overrides`, validated."""
    merged = {**tuned_overrides(paths, arch), **(overrides or {})}
    model, train = apply_overrides(params, arch, merged)
    return ModelSpec(arch, model, train)


@dataclass
class StageContext:
    params: Params
    paths: ProjectPaths
    data: PreparedData
    dataset_hash: str
    commit: str
    experiment_id: str | None = None

    @classmethod
    def load(cls, params: Params, paths: ProjectPaths, tracking: bool = True) -> StageContext:
        data = PreparedData.load(paths.raw, paths.prepared, params.data.normalize)
        ctx = cls(params, paths, data, dataset_digest(paths.raw), git_commit(paths.root))
        if tracking:
            ctx.experiment_id = store.configure(params.mlflow.tracking_uri, paths.root, params.experiment_name)
        return ctx

    def spec_hash(self, spec: ModelSpec, stage: str, **extra: Any) -> str:
        """Identifies a result: everything that changes it (model, training, data, split, seed, precision)."""
        p = self.params
        return params_hash(
            stage, spec.arch, spec.model, spec.train, p.data, p.seed, p.trainer.precision, self.dataset_hash, extra
        )

    def tags(self, stage: str, arch: str | None, phash: str) -> dict[str, str]:
        return standard_tags(stage, arch, phash, self.params.data.name, self.dataset_hash, self.commit)

    def log_dataset(self, context: str = "training") -> None:
        ds = self.data.dataset
        source = str(self.paths.raw / DATASET_FILE)
        dataset = mlflow.data.from_numpy(ds.X.numpy(), targets=ds.y.numpy(), source=source, name=ds.name)
        mlflow.log_input(dataset, context=context)
