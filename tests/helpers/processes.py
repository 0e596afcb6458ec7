"""The environment for dlpipe and dvc subprocesses started by tests."""

from __future__ import annotations

import os
import sys
from pathlib import Path

VENV_BIN = Path(sys.executable).parent  # the interpreter running pytest: .venv/bin (has `dlpipe`, `dvc`)


def subprocess_env(project: Path | None = None) -> dict[str, str]:
    """Environment for dlpipe subprocesses: the venv first on PATH, DLPIPE_ROOT = `project` (or unset)."""
    env = dict(os.environ)
    env["PATH"] = f"{VENV_BIN}{os.pathsep}{env.get('PATH', '')}"
    env.pop("DLPIPE_ROOT", None)
    if project is not None:
        env["DLPIPE_ROOT"] = str(project)
    env["PYTHONUNBUFFERED"] = "1"
    return env
