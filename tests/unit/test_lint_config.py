"""`make repro` then `make test` in one clone: the folders a study writes at the project root (optuna/, mlruns/,
reports/, models/, data/) must not change how ruff judges the code. A root folder named `optuna` once made ruff take
`import optuna` for first-party code and report I001 in every file importing it."""

from __future__ import annotations

import shutil
import subprocess
import sys
from pathlib import Path

import pytest
from helpers.project import REPO_ROOT

from dlpipe.paths import ProjectPaths

CODE = ("src", "tests", "pipelines", "scripts", "benchmarks")


def ruff() -> str:
    found = shutil.which("ruff", path=str(Path(sys.executable).parent)) or shutil.which("ruff")
    if found is None:
        pytest.skip("ruff is not installed (pip install -e '.[dev]')")
    return found


def copy_code(dest: Path) -> Path:
    shutil.copy2(REPO_ROOT / "pyproject.toml", dest / "pyproject.toml")
    for folder in CODE:
        shutil.copytree(REPO_ROOT / folder, dest / folder, ignore=shutil.ignore_patterns("__pycache__", "*.egg-info"))
    return dest


def run_study_folders(root: Path) -> list[Path]:
    """The folders a study leaves at the root, as the stages name them, each with a file inside."""
    paths = ProjectPaths(root)
    folders = [paths.optuna, paths.mlruns, paths.reports, paths.models, paths.raw, paths.prepared]
    for folder in folders:
        folder.mkdir(parents=True, exist_ok=True)
        (folder / "placeholder").write_text("written by a study\n")
    (paths.optuna / "journal.log").write_text("{}\n")
    return folders


def test_ruff_is_clean_with_a_study_s_folders_at_the_root(tmp_path: Path) -> None:
    project = copy_code(tmp_path)
    folders = run_study_folders(project)
    assert (project / "optuna").is_dir() and (project / "mlruns").is_dir() and (project / "reports").is_dir()
    for args in (["check", "--no-cache", "."], ["format", "--check", "--no-cache", "."]):
        done = subprocess.run([ruff(), *args], cwd=project, capture_output=True, text=True, timeout=120)
        assert done.returncode == 0, (
            f"ruff {' '.join(args)} with {[f.name for f in folders]} at the root:\n{done.stdout}{done.stderr}"
        )
