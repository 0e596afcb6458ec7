"""A project for a test: this repository's params.yaml, dvc.yaml and pipelines/ copied, params overridden, data
fetched and prepared in-process."""

from __future__ import annotations

import shutil
from pathlib import Path

REPO_ROOT = Path(__file__).resolve().parents[2]
PROJECT_FILES = ("params.yaml", "dvc.yaml")

SMALL_STUDY = {  # a quick study for integration tests: small data, tiny models, few epochs
    "data": {"limit": 300, "folds": 3},
    "architectures": ["perceptron", "mlp"],
    "models": {"mlp": {"hidden": [32]}},
    "train": {"max_epochs": 3, "early_stopping": {"patience": 2}},
    "trainer": {"accelerator": "cpu", "progress_bar": False},
    "tune": {"n_trials": 2},
    "baselines": {"models": []},  # the baselines stage has tests of its own
}


def copy_project(dest: Path) -> Path:
    """A fresh project: params.yaml, dvc.yaml and pipelines/ of this repository copied into `dest`."""
    dest.mkdir(parents=True, exist_ok=True)
    for name in PROJECT_FILES:
        shutil.copy2(REPO_ROOT / name, dest / name)
    shutil.copytree(REPO_ROOT / "pipelines", dest / "pipelines", ignore=shutil.ignore_patterns("__pycache__"))
    return dest


def copy_dvc_study(dest: Path, overrides: dict) -> Path:
    """A project `dvc repro` can run from scratch: dvc.yaml, .gitignore, pyproject.toml, pipelines/ and src/ of this
    repository copied into `dest` (a new folder), params.yaml overridden with `overrides`."""
    dest.mkdir(parents=True)
    for name in ("dvc.yaml", ".gitignore", "pyproject.toml"):
        shutil.copy2(REPO_ROOT / name, dest / name)
    for folder in ("pipelines", "src"):
        shutil.copytree(REPO_ROOT / folder, dest / folder, ignore=shutil.ignore_patterns("__pycache__", "*.egg-info"))
    write_params(dest, overrides)
    return dest


def git_dvc_init(message: str) -> list[list[str]]:
    """The commands that make a copied study a git + DVC repository with everything committed as `message`."""
    return [
        ["git", "init", "-q"],
        ["git", "config", "user.email", "e2e@example.com"],
        ["git", "config", "user.name", "e2e"],
        ["dvc", "init", "-q"],
        ["dvc", "config", "core.analytics", "false"],
        ["git", "add", "-A"],
        ["git", "commit", "-qm", message],
    ]


def deep_merge(base: dict, override: dict) -> dict:
    """`base` with `override` merged in, nested dicts key by key (neither argument is changed)."""
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


def load_script(name: str):
    """scripts/<name>.py imported as a module (the scripts folder is no package)."""
    import importlib.util

    spec = importlib.util.spec_from_file_location(name, REPO_ROOT / "scripts" / f"{name}.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module
