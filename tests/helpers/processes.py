"""The environment for dlpipe and dvc subprocesses started by tests."""

from __future__ import annotations

import os
import sys
from pathlib import Path

from dlpipe.tracking import store

VENV_BIN = Path(sys.executable).parent  # the interpreter running pytest: .venv/bin (has `dlpipe`, `dvc`)


def subprocess_env(project: Path | None = None) -> dict[str, str]:
    """Environment for dlpipe subprocesses: the venv first on PATH, DLPIPE_ROOT = `project` (or unset)."""
    env = dict(os.environ)
    # In-process tests point MLflow at their projects' stores, which MLflow exports (MLFLOW_TRACKING_URI and
    # MLFLOW_REGISTRY_URI, kept by module fixtures beyond a test): a child would log into another project's store.
    # A child uses its project's own store; a test that wants another passes MLFLOW_TRACKING_URI explicitly.
    for name in ("MLFLOW_TRACKING_URI", "MLFLOW_REGISTRY_URI", store.CONFIGURED_ENV):
        env.pop(name, None)
    env["PATH"] = f"{VENV_BIN}{os.pathsep}{env.get('PATH', '')}"
    env.pop("DLPIPE_ROOT", None)
    if project is not None:
        env["DLPIPE_ROOT"] = str(project)
    env["PYTHONUNBUFFERED"] = "1"
    return env
