"""Shared fixtures and hooks. Plain helpers (functions, classes, constants) live in tests/helpers/ and are imported
from there (`from helpers.project import copy_project`); tests never import from this file."""

from __future__ import annotations

import functools
from pathlib import Path

import pytest
from helpers import capabilities
from helpers.mlflow_store import install_mlflow_store
from helpers.processes import subprocess_env
from helpers.project import copy_project, prepare_project
from helpers.training import torch_threads

pytest_plugins = ("pytester",)  # tests/unit/test_capabilities.py runs the capability hook in a pytest of its own

# --- capability markers (postgres, gpu, network, chromium, read_only_dirs; registered in pyproject.toml) --------------


def pytest_configure(config: pytest.Config) -> None:
    try:
        capabilities.required()
    except ValueError as exc:
        raise pytest.UsageError(str(exc)) from None


@functools.cache
def _missing(name: str) -> str | None:
    """Each capability is probed once per session, and only when a collected test needs it."""
    return capabilities.PROBES[name]()


@pytest.hookimpl(tryfirst=True)  # before any fixture of the test is set up (a PostgreSQL server, say)
def pytest_runtest_setup(item: pytest.Item) -> None:
    require = capabilities.required()
    for name in capabilities.PROBES:
        if item.get_closest_marker(name) is None:
            continue
        outcome = capabilities.verdict(name, _missing(name), require)
        if outcome is not None:
            action, reason = outcome
            (pytest.fail if action == "fail" else pytest.skip)(reason)


# --- process-wide state ---------------------------------------------------------------------------------------------


@pytest.fixture(scope="session", autouse=True)
def one_torch_thread():
    """Tiny test models on a small, shared CPU: extra intra-op threads only wait (steps ran 10-40x slower)."""
    with torch_threads(1):
        yield


@pytest.fixture(autouse=True)
def keep_signal_handlers(request: pytest.FixtureRequest):
    """Lightning ignores SIGINT after it caught an interrupt, stage_main installs a SIGTERM handler: restore both
    after every test. A SIGINT left ignored would be inherited by every process a later test starts in this worker
    (an ignored disposition survives exec), and Ctrl-C sent to such a process does nothing; a test that leaves it
    ignored is named in a warning."""
    import signal
    import warnings

    saved = {s: signal.getsignal(s) for s in (signal.SIGINT, signal.SIGTERM)}
    yield
    if signal.getsignal(signal.SIGINT) is signal.SIG_IGN and saved[signal.SIGINT] is not signal.SIG_IGN:
        warnings.warn(f"{request.node.nodeid} left SIGINT ignored (restored)", stacklevel=1)
    for s, handler in saved.items():
        signal.signal(s, handler)


# --- projects -------------------------------------------------------------------------------------------------------


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


# --- MLflow ---------------------------------------------------------------------------------------------------------


@pytest.fixture(scope="session")
def mlflow_template_db(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """An empty, migrated MLflow SQLite store, made once per session (its migrations take seconds)."""
    from mlflow.tracking import MlflowClient

    path = tmp_path_factory.mktemp("mlflow-template") / "mlflow.db"
    MlflowClient(tracking_uri=f"sqlite:///{path}").search_experiments()
    return path


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
