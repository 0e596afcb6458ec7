"""What several stages share: the prepared data, the (tuned) model spec, hashes, tags and MLflow set-up."""

from __future__ import annotations

import logging
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

import mlflow
from mlflow.entities import DatasetInput, InputTag

from dlpipe import RESULTS_PROTOCOL
from dlpipe.config import Params, apply_overrides, params_hash
from dlpipe.data.prepared import PreparedData
from dlpipe.data.store import DATASET_FILE, dataset_digest
from dlpipe.io import read_json
from dlpipe.paths import ProjectPaths
from dlpipe.profile import timed
from dlpipe.tracking import store
from dlpipe.tracking.runs import close_orphaned_runs, dvc_tags, git_commit, is_global_zero, standard_tags

if TYPE_CHECKING:  # the training stack (Lightning) is imported by the stages that train, not by every stage
    from dlpipe.training.fit import ModelSpec

log = logging.getLogger(__name__)


def tuned_overrides(paths: ProjectPaths, arch: str) -> dict[str, Any]:
    """The best params found by the tune stage for `arch` ({} when it has not run)."""
    path = paths.tuning_report(arch)
    return dict(read_json(path).get("best_params", {})) if path.is_file() else {}


def model_spec(params: Params, paths: ProjectPaths, arch: str, overrides: dict[str, Any] | None = None) -> ModelSpec:
    """`arch` with params.yaml's settings, the tune stage's best params, then `overrides`, validated."""
    from dlpipe.training.fit import ModelSpec

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
    _dataset_input: DatasetInput | None = field(default=None, repr=False)

    @classmethod
    def load(cls, params: Params, paths: ProjectPaths, tracking: bool = True) -> StageContext:
        """Data, hashes and (with `tracking`) the MLflow experiment."""
        with timed("data"):
            data = PreparedData.load(
                paths.raw, paths.prepared, params.data.normalize, params.data.labeled_fraction, params.data.znormalize
            )
        ctx = cls(params, paths, data, dataset_digest(paths.raw), git_commit(paths.root))
        if tracking:
            with timed("setup"):
                ctx.experiment_id = store.configure(params.mlflow.tracking_uri, paths.root, params.experiment_name)
        return ctx

    def close_orphans(self, stage: str) -> None:
        """End the runs that killed processes of this host left RUNNING (every stage does it first): KILLED, or
        FINISHED when their work was recorded."""
        if self.experiment_id is None or not is_global_zero():
            return
        for run_id, status in close_orphaned_runs(self.experiment_id, f"dlpipe {stage}").items():
            log.warning("%s: run %s was left RUNNING by a killed process; ended it %s", stage, run_id, status)

    def check_against_data(self) -> None:
        """Params that name classes or need a binary task, checked against the prepared data (exit 2)."""
        from dlpipe.errors import ConfigError
        from dlpipe.metric_names import is_positive_metric

        sel, names = self.params.selection, self.data.dataset.class_names
        needs_class = is_positive_metric(sel.metric) or sel.operating_point != "argmax"
        if needs_class and sel.positive_class not in names:
            raise ConfigError(
                f"selection.positive_class: {sel.positive_class!r} is not a class of "
                f"{self.params.data.name}; allowed: {', '.join(names)}"
            )
        if sel.operating_point != "argmax" and len(names) != 2:
            raise ConfigError(
                f"selection.operating_point: {sel.operating_point!r} is a threshold for binary tasks; "
                f"{self.params.data.name} has {len(names)} classes; allowed: argmax"
            )

    def spec_hash(self, spec: ModelSpec, stage: str, **extra: Any) -> str:
        """Identifies a result: everything that changes it (model, training, data, split, seed, precision)."""
        p = self.params
        what = (spec.arch, spec.model, spec.train, p.data, p.seed, p.trainer.precision, self.dataset_hash, extra)
        return params_hash(stage, RESULTS_PROTOCOL, *what)

    def tags(self, stage: str, arch: str | None, phash: str) -> dict[str, str]:
        return standard_tags(
            stage,
            arch,
            phash,
            self.params.data.name,
            self.dataset_hash,
            self.commit,
            {**dvc_tags(self.paths.root), **self.study_tags()},
        )

    def study_tags(self) -> dict[str, str]:
        """The Optuna storage every run of the study can be traced to (its studies are named per architecture)."""
        from dlpipe.tuning.study import redact, storage_location

        return {"optuna.storage": redact(storage_location(self.params, self.paths))}

    def log_dataset(self, run_id: str, context: str = "training") -> None:
        """Record the dataset as an input of `run_id` (every run that trains or evaluates on it)."""
        if self._dataset_input is None:
            ds = self.data.dataset
            self._dataset_input = _dataset_input(
                str(self.paths.raw / DATASET_FILE), self.dataset_hash, ds.name, ds.X.numpy(), ds.y.numpy()
            )
        tagged = DatasetInput(self._dataset_input.dataset, [InputTag("mlflow.data.context", context)])
        mlflow.MlflowClient().log_inputs(run_id, datasets=[tagged])


def _dataset_input(path: str, digest: str, name: str, X: Any, y: Any) -> DatasetInput:
    from mlflow.data.dataset_source_registry import get_registered_sources, resolve_dataset_source

    local = [s for s in get_registered_sources() if s.__name__ == "LocalArtifactDatasetSource"]
    source = resolve_dataset_source(Path(path).as_uri(), candidate_sources=local[:1])
    dataset = mlflow.data.from_numpy(X, targets=y, source=source, name=name, digest=digest[:8])
    return DatasetInput(dataset._to_mlflow_entity(), [])


_WORKER_CONTEXTS: dict[tuple[str, Path], StageContext] = {}  # per process: a worker's units share one context


def worker_context(params: Params, paths: ProjectPaths) -> StageContext:
    """The context a process reuses for every unit of one study (data loaded and MLflow set up once)."""
    key = (params.model_dump_json(), paths.root)
    if key not in _WORKER_CONTEXTS:
        _WORKER_CONTEXTS.clear()
        _WORKER_CONTEXTS[key] = StageContext.load(params, paths)
    return _WORKER_CONTEXTS[key]
