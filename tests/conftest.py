"""Shared fixtures. Each one is self-contained; add new fixtures below with their own clear names."""

from __future__ import annotations

import os
import shutil
import sys
from pathlib import Path

import pytest

REPO_ROOT = Path(__file__).resolve().parents[1]
VENV_BIN = Path(sys.executable).parent  # the interpreter running pytest: .venv/bin (has `dlpipe`, `dvc`)
PROJECT_FILES = ("params.yaml", "dvc.yaml")


def copy_project(dest: Path) -> Path:
    """A fresh project: params.yaml, dvc.yaml and pipelines/ of this repository copied into `dest`."""
    dest.mkdir(parents=True, exist_ok=True)
    for name in PROJECT_FILES:
        shutil.copy2(REPO_ROOT / name, dest / name)
    shutil.copytree(REPO_ROOT / "pipelines", dest / "pipelines", ignore=shutil.ignore_patterns("__pycache__"))
    return dest


def subprocess_env(project: Path | None = None) -> dict[str, str]:
    """Environment for dlpipe subprocesses: the venv first on PATH, DLPIPE_ROOT = `project` (or unset)."""
    env = dict(os.environ)
    env["PATH"] = f"{VENV_BIN}{os.pathsep}{env.get('PATH', '')}"
    env.pop("DLPIPE_ROOT", None)
    if project is not None:
        env["DLPIPE_ROOT"] = str(project)
    env["PYTHONUNBUFFERED"] = "1"
    return env


@pytest.fixture(scope="session", autouse=True)
def one_torch_thread():
    """Tiny test models on a small, shared CPU: extra intra-op threads only wait (steps ran 10-40x slower)."""
    from helpers_training import torch_threads

    with torch_threads(1):
        yield


@pytest.fixture
def keep_signal_handlers():
    """Lightning ignores SIGINT after it caught an interrupt, stage_main installs a SIGTERM handler: restore both."""
    import signal

    saved = {s: signal.getsignal(s) for s in (signal.SIGINT, signal.SIGTERM)}
    yield
    for s, handler in saved.items():
        signal.signal(s, handler)


@pytest.fixture(scope="session")
def make_project():
    """`copy_project(dest) -> dest`: for tests that need several projects, or one per module."""
    return copy_project


@pytest.fixture(scope="session")
def make_subprocess_env():
    """`subprocess_env(project=None) -> env` for dlpipe/dvc subprocesses."""
    return subprocess_env


@pytest.fixture
def project(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    """A temporary project copy (params.yaml, dvc.yaml, pipelines/); DLPIPE_ROOT and the working dir point at it."""
    root = copy_project(tmp_path / "project")
    monkeypatch.setenv("DLPIPE_ROOT", str(root))
    monkeypatch.chdir(root)
    return root


# --- params and prepared data -------------------------------------------------------------------------------------

SMALL_STUDY = {  # a quick study for integration tests: small data, tiny models, few epochs
    "data": {"limit": 300, "folds": 3},
    "architectures": ["perceptron", "mlp"],
    "models": {"mlp": {"hidden": [32]}},
    "train": {"max_epochs": 3, "early_stopping": {"patience": 2}},
    "trainer": {"accelerator": "cpu", "progress_bar": False},
    "tune": {"n_trials": 2},
    "baselines": {"models": []},  # the baselines stage has tests of its own
}


def deep_merge(base: dict, override: dict) -> dict:
    out = dict(base)
    for key, value in override.items():
        out[key] = deep_merge(out[key], value) if isinstance(value, dict) and isinstance(out.get(key), dict) else value
    return out


def write_params(project: Path, overrides: dict, base: dict | None = None) -> Path:
    """Write project/params.yaml: the repository's params.yaml (or `base`) deep-merged with `overrides`."""
    import yaml

    if base is None:
        base = yaml.safe_load((REPO_ROOT / "params.yaml").read_text())
    path = project / "params.yaml"
    path.write_text(yaml.safe_dump(deep_merge(base, overrides), sort_keys=False))
    return path


def prepare_project(project: Path, overrides: dict | None = None):
    """Write params (SMALL_STUDY + `overrides`), run fetch and prepare in-process; returns (params, paths)."""
    from dlpipe.config import load_params
    from dlpipe.paths import ProjectPaths
    from dlpipe.stages import fetch, prepare

    write_params(project, deep_merge(SMALL_STUDY, overrides or {}))
    params = load_params(project / "params.yaml")
    paths = ProjectPaths(project)
    fetch.run(params, paths)
    prepare.run(params, paths)
    return params, paths


# --- MLflow ---------------------------------------------------------------------------------------------------------


@pytest.fixture(scope="session")
def mlflow_template_db(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """An empty, migrated MLflow SQLite store, made once per session (its migrations take seconds)."""
    from mlflow.tracking import MlflowClient

    path = tmp_path_factory.mktemp("mlflow-template") / "mlflow.db"
    MlflowClient(tracking_uri=f"sqlite:///{path}").search_experiments()
    return path


def install_mlflow_store(project: Path, template: Path) -> str:
    """Copy the template store to project/mlruns/mlflow.db; returns its tracking URI."""
    mlruns = project / "mlruns"
    mlruns.mkdir(parents=True, exist_ok=True)
    shutil.copy2(template, mlruns / "mlflow.db")
    return f"sqlite:///{mlruns / 'mlflow.db'}"


@pytest.fixture
def mlflow_store(project: Path, mlflow_template_db: Path, monkeypatch: pytest.MonkeyPatch) -> str:
    """The `project`'s own MLflow store (copied template); MLFLOW_TRACKING_URI unset so stages resolve it."""
    monkeypatch.delenv("MLFLOW_TRACKING_URI", raising=False)
    return install_mlflow_store(project, mlflow_template_db)


@pytest.fixture
def small_project(project: Path, mlflow_store: str):
    """`project` with SMALL_STUDY params, fetched and prepared, and its MLflow store: (params, paths, uri)."""
    params, paths = prepare_project(project)
    return params, paths, mlflow_store
