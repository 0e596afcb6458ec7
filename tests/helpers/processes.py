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
    # An in-process test before this one pointed MLflow at its own store, which MLflow exports as
    # MLFLOW_TRACKING_URI: a child would take it for the user's choice and log into that other project's store.
    # A test that sets MLFLOW_TRACKING_URI itself (monkeypatch.setenv) keeps it.
    configured = env.pop(store.CONFIGURED_ENV, "").partition(":")[2]
    if configured and env.get("MLFLOW_TRACKING_URI") == configured:
        del env["MLFLOW_TRACKING_URI"]
    env["PATH"] = f"{VENV_BIN}{os.pathsep}{env.get('PATH', '')}"
    env.pop("DLPIPE_ROOT", None)
    if project is not None:
        env["DLPIPE_ROOT"] = str(project)
    env["PYTHONUNBUFFERED"] = "1"
    return env
