"""Helpers the tests import (plain functions, classes and constants; the fixtures live in tests/conftest.py).

One job per module:
- `project`: a project copy, its params.yaml (SMALL_STUDY, deep_merge, write_params) and in-process preparation.
- `processes`: the environment for dlpipe/dvc subprocesses (VENV_BIN first on PATH).
- `mlflow_store`: an MLflow store for a project (a copy of a migrated template).
- `training`: in-memory datasets, splits and fits for the training-core tests (no DVC stages).
- `reports`: fixture reports in the select stage's contract for the command-line views.
- `servers`: a throwaway PostgreSQL cluster and an `mlflow server` on loopback.
- `capabilities`: what the machine offers (PostgreSQL, a GPU, the network) for the capability markers.

Importable as `helpers.<module>`: pyproject.toml's [tool.pytest.ini_options] pythonpath puts tests/ on sys.path.
"""
