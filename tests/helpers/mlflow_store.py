"""An MLflow store for a test project: a copy of an empty, migrated SQLite store (migrations take seconds)."""

from __future__ import annotations

import shutil
from pathlib import Path

from mlflow.tracking import MlflowClient


def install_mlflow_store(project: Path, template: Path) -> str:
    """Copy the template store to project/mlruns/mlflow.db; returns its tracking URI."""
    mlruns = project / "mlruns"
    mlruns.mkdir(parents=True, exist_ok=True)
    shutil.copy2(template, mlruns / "mlflow.db")
    return f"sqlite:///{mlruns / 'mlflow.db'}"


def project_client(project: Path) -> MlflowClient:
    """A client of `project`'s own store, for runs and the registry alike. `MlflowClient(tracking_uri=...)` alone
    reads the registry at MLflow's process-wide registry URI, which an earlier in-process test may have set."""
    uri = f"sqlite:///{project / 'mlruns' / 'mlflow.db'}"
    return MlflowClient(tracking_uri=uri, registry_uri=uri)
