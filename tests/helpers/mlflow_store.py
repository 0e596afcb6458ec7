"""An MLflow store for a test project: a copy of an empty, migrated SQLite store (migrations take seconds)."""

from __future__ import annotations

import shutil
from pathlib import Path


def install_mlflow_store(project: Path, template: Path) -> str:
    """Copy the template store to project/mlruns/mlflow.db; returns its tracking URI."""
    mlruns = project / "mlruns"
    mlruns.mkdir(parents=True, exist_ok=True)
    shutil.copy2(template, mlruns / "mlflow.db")
    return f"sqlite:///{mlruns / 'mlflow.db'}"
