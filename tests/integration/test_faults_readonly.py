"""Output folders that cannot be written (issue #11.8): the study and select stages refuse at once, before any
training or logging, with exit code 2 and one line naming the folder; no MLflow run of that invocation exists, so
none says FINISHED, and the outputs already there are untouched.

Two real ways to make the write fail: a read-only folder, and a file where the folder should be. Root ignores the
mode bits of `chmod` (these tests often run as root in containers), so for root the read-only folder is made
immutable (`chattr +i`), which root cannot write into either.
"""

from __future__ import annotations

import contextlib
import hashlib
import shutil
import subprocess
import sys
import tempfile
from collections.abc import Iterator
from pathlib import Path

import pytest
from helpers import capabilities
from helpers.mlflow_store import install_mlflow_store, project_client
from helpers.processes import subprocess_env
from helpers.project import SMALL_STUDY, copy_project, deep_merge, write_params

from dlpipe.config import load_params
from dlpipe.paths import ProjectPaths
from dlpipe.stages import fetch, prepare

STUDY = deep_merge(SMALL_STUDY, {"train": {"max_epochs": 2}, "tune": {"max_epochs": 2}, "trainer": {"workers": 1}})


def can_write(folder: Path) -> bool:
    try:
        with tempfile.NamedTemporaryFile(dir=folder):
            return True
    except OSError:
        return False


@contextlib.contextmanager
def unwritable(folder: Path, how: str) -> Iterator[None]:
    """`folder` made unwritable for the block: `read-only` (chmod 555; for root, who ignores it, chattr +i) or
    `file` (a regular file where the folder should be)."""
    if how == "file":
        shutil.rmtree(folder, ignore_errors=True)
        folder.parent.mkdir(parents=True, exist_ok=True)
        folder.write_text("a file where the folder should be\n")
        try:
            yield
        finally:
            folder.unlink()
        return
    folder.mkdir(parents=True, exist_ok=True)
    mode = folder.stat().st_mode
    folder.chmod(0o555)
    immutable = False
    try:
        if can_write(folder):  # root: permission bits do not apply
            immutable = subprocess.run(["chattr", "+i", str(folder)], capture_output=True).returncode == 0
            if not immutable or can_write(folder):
                capabilities.need("read_only_dirs")  # CI requires it
        yield
    finally:
        if immutable:
            subprocess.run(["chattr", "-i", str(folder)], check=True)
        folder.chmod(mode)


def make_project(root: Path, template: Path) -> Path:
    project = copy_project(root)
    write_params(project, STUDY)
    params, paths = load_params(project / "params.yaml"), ProjectPaths(project)
    fetch.run(params, paths)
    prepare.run(params, paths)
    install_mlflow_store(project, template)
    return project


def run_stage(project: Path, script: str) -> subprocess.CompletedProcess:
    env = subprocess_env(project)
    env.pop("MLFLOW_TRACKING_URI", None)  # the project's own store
    return subprocess.run(
        [sys.executable, f"pipelines/{script}.py"], cwd=project, env=env, capture_output=True, text=True, timeout=600
    )


def run_ids(project: Path) -> dict[str, str]:
    """Every run in the project's store: {run_id: status}."""
    client = project_client(project)
    experiments = [e.experiment_id for e in client.search_experiments()]
    return {r.info.run_id: r.info.status for r in client.search_runs(experiments, max_results=5000)}


def snapshot(project: Path, *folders: str) -> dict[str, str]:
    return {
        str(p.relative_to(project)): hashlib.sha256(p.read_bytes()).hexdigest()
        for folder in folders
        for p in sorted((project / folder).rglob("*"))
        if p.is_file()
    }


def assert_refused(proc: subprocess.CompletedProcess, stage: str, folder: Path) -> None:
    assert proc.returncode == 2, proc.stderr[-3000:]
    errors = [line for line in proc.stderr.splitlines() if f"dlpipe {stage}: error:" in line]
    assert errors == [line for line in proc.stderr.splitlines() if "error" in line.lower()], proc.stderr
    (line,) = errors
    assert line.startswith(f"dlpipe {stage}: error: {folder}: cannot write outputs here ("), line
    assert "Traceback" not in proc.stderr


@pytest.mark.parametrize(
    ("folder", "how", "named"),
    [
        ("reports", "read-only", "reports/tuning"),
        ("reports/cv", "file", "reports/cv"),
        ("models", "read-only", "models"),
    ],
    ids=["reports-read-only", "reports-cv-a-file", "models-read-only"],
)
def test_the_study_stage_refuses_an_unwritable_output_folder_before_training(
    folder, how, named, tmp_path, mlflow_template_db
):
    project = make_project(tmp_path / "project", mlflow_template_db)
    with unwritable(project / folder, how):
        proc = run_stage(project, "study")
    assert_refused(proc, "study", project / named)
    assert run_ids(project) == {}  # nothing was trained, logged or left RUNNING: no run at all, none FINISHED
    assert not (project / "optuna").exists()  # no study was opened


@pytest.fixture(scope="module")
def studied(tmp_path_factory: pytest.TempPathFactory, mlflow_template_db: Path) -> Path:
    """A project after a finished study stage (select's inputs are all there)."""
    project = make_project(tmp_path_factory.mktemp("readonly-select") / "project", mlflow_template_db)
    proc = run_stage(project, "study")
    assert proc.returncode == 0, proc.stderr[-3000:]
    return project


@pytest.mark.slow
@pytest.mark.parametrize(
    ("folder", "how"), [("reports", "read-only"), ("reports/plots", "file")], ids=["reports-read-only", "plots-a-file"]
)
def test_the_select_stage_refuses_an_unwritable_reports_folder_before_it_logs_or_registers(folder, how, studied):
    runs_before = run_ids(studied)
    outputs_before = snapshot(studied, "reports", "models")
    with unwritable(studied / folder, how):
        proc = run_stage(studied, "select_model")
    assert_refused(proc, "select", studied / folder)
    assert run_ids(studied) == runs_before  # no select run (none FINISHED), nothing registered
    assert project_client(studied).search_registered_models() == []
    assert snapshot(studied, "reports", "models") == outputs_before
