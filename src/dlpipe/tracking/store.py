"""Where MLflow records: the project's own mlruns/ (SQLite + artifacts) unless a tracking server is named.

A stage may run in a copy of the project (`dvc exp run --temp` and `--queue` run under
`<project>/.dvc/tmp/exps/<tmp>`); the store still resolves to the original project's `mlruns/`.

Stages that record (`configure`) create the local store on first use. Commands that only use what is recorded
(`dlpipe predict`, `promote`, `leaderboard`) `connect` instead: a local store that does not exist is refused with
one line (NoStoreError, exit 2) and nothing is created; opening a missing SQLite store would create it (about 1 MB
of empty tables).
"""

from __future__ import annotations

import os
from pathlib import Path

import mlflow
from mlflow.tracking import MlflowClient

from dlpipe.errors import BadInputError

DB_NAME = "mlflow.db"
ARTIFACTS = "artifacts"


def project_root(path: Path) -> Path:
    """The project that owns `path`: the first ancestor above a DVC experiment temp dir, else `path`."""
    path = path.resolve()
    parts = path.parts
    for i in range(len(parts) - 3):
        if parts[i] == ".dvc" and parts[i + 1] == "tmp" and parts[i + 2] == "exps":
            return Path(*parts[:i])
    return path


def local_store_uri(root: Path) -> str:
    return f"sqlite:///{project_root(root) / 'mlruns' / DB_NAME}"


def artifact_location(root: Path, experiment: str) -> str:
    safe = experiment.replace("/", "_")
    return (project_root(root) / "mlruns" / ARTIFACTS / safe).as_uri()


# `mlflow.set_tracking_uri` also exports MLFLOW_TRACKING_URI; a value equal to what `configure` set last is ours,
# not the user's, and must not pin a later project in the same process to the first project's store.
_last_configured: str | None = None


def _user_env_uri() -> str | None:
    env = os.environ.get("MLFLOW_TRACKING_URI")
    return env if env and env != _last_configured else None


def resolve_tracking_uri(configured: str | None, root: Path) -> str:
    """$MLFLOW_TRACKING_URI (set by the user), else params' mlflow.tracking_uri, else the project's SQLite store."""
    return _user_env_uri() or configured or local_store_uri(root)


def is_local(uri: str) -> bool:
    return uri.startswith("sqlite:")


class NoStoreError(BadInputError):
    """A command that reads the MLflow store was pointed at a local store that does not exist."""


def local_db(uri: str) -> Path | None:
    """The SQLite file of a local store URI (None for servers and other backends)."""
    if not is_local(uri):
        return None
    path = uri.removeprefix("sqlite:///") if uri.startswith("sqlite:///") else uri.removeprefix("sqlite://")
    return Path(path) if path and path != ":memory:" else None


def connect(configured: str | None, root: Path, what: str = "this command") -> str:
    """Point MLflow at the existing store without creating anything; NoStoreError if a local one is missing."""
    global _last_configured
    uri = resolve_tracking_uri(configured, root)
    db = local_db(uri)
    if db is not None and not db.is_file():
        raise NoStoreError(
            f"no MLflow store at {db}: {what} reads the runs and models the pipeline recorded; run the pipeline "
            f"first (dvc repro), or point DLPIPE_ROOT at the project (or MLFLOW_TRACKING_URI at its store)"
        )
    _last_configured = None if _user_env_uri() else uri
    mlflow.set_tracking_uri(uri)
    mlflow.set_registry_uri(uri)
    return uri


def configure(configured: str | None, root: Path, experiment: str) -> str:
    """Point MLflow at the store and make sure `experiment` exists; returns the experiment id."""
    global _last_configured
    uri = resolve_tracking_uri(configured, root)
    _last_configured = None if _user_env_uri() else uri
    if is_local(uri):
        (project_root(root) / "mlruns").mkdir(parents=True, exist_ok=True)
    mlflow.set_tracking_uri(uri)
    mlflow.set_registry_uri(uri)
    client = MlflowClient()
    found = client.get_experiment_by_name(experiment)
    if found is not None:
        exp_id = found.experiment_id
    else:
        location = artifact_location(root, experiment) if is_local(uri) else None
        try:
            exp_id = client.create_experiment(experiment, artifact_location=location)
        except mlflow.exceptions.MlflowException:  # created meanwhile by a parallel worker
            exp_id = client.get_experiment_by_name(experiment).experiment_id
    mlflow.set_experiment(experiment_id=exp_id)
    return exp_id
