"""study.executor: validated like every key, and a Ray study refused at `check` (one line per store, exit 2) when its
MLflow tracking store or Optuna storage is a file on this machine, which nodes of a cluster cannot reach."""

from __future__ import annotations

import subprocess
import sys

import pytest
from helpers.processes import subprocess_env
from helpers.project import copy_project, write_params

from dlpipe.config import EXECUTORS, load_params, parse_params
from dlpipe.errors import ConfigError
from dlpipe.executors import check_stores, local_stores
from dlpipe.paths import ProjectPaths

SERVERS = {"mlflow": {"tracking_uri": "http://mlflow.example:5000"}, "tune": {"storage": "postgresql://u@db/optuna"}}


def test_an_unknown_executor_names_the_key_and_what_is_allowed():
    with pytest.raises(ConfigError) as info:
        parse_params({"study": {"executor": "slurm"}}, "p.yaml")
    assert "study.executor" in str(info.value)
    for name in EXECUTORS:
        assert repr(name) in str(info.value) or name in str(info.value)


def test_the_default_executor_is_local_and_needs_no_servers(tmp_path, monkeypatch):
    monkeypatch.delenv("MLFLOW_TRACKING_URI", raising=False)
    params = parse_params({}, "p.yaml")
    assert params.study.executor == "local"
    assert local_stores(params, ProjectPaths(tmp_path)) == []


@pytest.mark.parametrize(
    ("overrides", "keys"),
    [
        pytest.param({}, ["mlflow.tracking_uri", "tune.storage"], id="both-local"),
        pytest.param({"mlflow": SERVERS["mlflow"]}, ["tune.storage"], id="journal-file"),
        pytest.param(
            {"mlflow": {"tracking_uri": "file:///srv/mlruns"}, "tune": SERVERS["tune"]},
            ["mlflow.tracking_uri"],
            id="file-store",
        ),
        pytest.param({"mlflow": SERVERS["mlflow"], "tune": {"enabled": False}}, [], id="no-tuning"),
        pytest.param(SERVERS, [], id="servers"),
    ],
)
def test_a_ray_study_needs_server_stores(tmp_path, monkeypatch, overrides, keys):
    monkeypatch.delenv("MLFLOW_TRACKING_URI", raising=False)
    params = parse_params({**overrides, "study": {"executor": "ray"}}, "p.yaml")
    problems = local_stores(params, ProjectPaths(tmp_path))
    assert [p.split(":", 1)[0] for p in problems] == keys
    assert all("study.executor ray" in p for p in problems)


def test_mlflow_tracking_uri_from_the_environment_counts(tmp_path, monkeypatch):
    monkeypatch.setenv("MLFLOW_TRACKING_URI", "sqlite:////srv/mlflow.db")
    params = parse_params({"mlflow": SERVERS["mlflow"], "tune": SERVERS["tune"], "study": {"executor": "ray"}}, "p")
    with pytest.raises(ConfigError, match=r"mlflow.tracking_uri: 'sqlite:////srv/mlflow.db' is a file"):
        check_stores(params, ProjectPaths(tmp_path))


def test_check_stage_refuses_a_ray_study_on_local_stores_in_one_line_exit_2(tmp_path):
    project = copy_project(tmp_path / "p")
    write_params(project, {"study": {"executor": "ray"}, "tune": {"enabled": False}})
    load_params(project / "params.yaml")  # valid params: only the stores are refused
    proc = subprocess.run(
        [sys.executable, "pipelines/check.py"], cwd=project, env=subprocess_env(project), capture_output=True, text=True
    )
    assert proc.returncode == 2, proc.stderr
    lines = proc.stderr.strip().splitlines()
    assert len(lines) == 1, lines
    assert lines[0].startswith("dlpipe check: error: mlflow.tracking_uri: 'sqlite:///")
    assert not (project / "data" / "inputs.json").exists()


def test_dlpipe_check_refuses_it_too(tmp_path):
    project = copy_project(tmp_path / "p")
    write_params(project, {"study": {"executor": "ray"}, "mlflow": SERVERS["mlflow"]})
    proc = subprocess.run(
        ["dlpipe", "check", "params.yaml"], cwd=project, env=subprocess_env(project), capture_output=True, text=True
    )
    assert proc.returncode == 2, proc.stderr
    assert proc.stderr.strip().splitlines() == [
        f"dlpipe check: error: tune.storage: '{project / 'optuna' / 'journal.log'}' is a file on this machine, which "
        "trials on other ray nodes cannot reach; allowed with study.executor ray: a database server, e.g. "
        "postgresql://user@host/optuna"
    ]
    assert proc.stdout == ""
