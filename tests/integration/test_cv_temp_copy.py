"""The study stage run from a copy of the project, as `dvc exp run --temp` (and `dvc queue`) run it under
`<project>/.dvc/tmp/exps/<tmp>/`, still records to the original project's mlruns/ store."""

from __future__ import annotations

import shutil
import subprocess
import sys
from pathlib import Path

import pytest
from helpers.processes import subprocess_env
from helpers.project import prepare_project
from mlflow.tracking import MlflowClient

from dlpipe.io import read_json
from dlpipe.paths import ProjectPaths
from dlpipe.stages import cv

ARCH = "perceptron"
QUICK = {"data": {"folds": 2}, "train": {"max_epochs": 1}, "architectures": [ARCH], "tune": {"enabled": False}}


def make_temp_copy(project: Path) -> Path:
    """What DVC puts in a temp experiment workspace: params, pipelines and the (checked-out) data."""
    copy = project / ".dvc" / "tmp" / "exps" / "tmpabc123"
    copy.mkdir(parents=True)
    for name in ("params.yaml", "dvc.yaml"):
        shutil.copy2(project / name, copy / name)
    for name in ("pipelines", "data"):
        shutil.copytree(project / name, copy / name, ignore=shutil.ignore_patterns("__pycache__"))
    return copy


@pytest.mark.slow
def test_a_study_in_a_dvc_temp_copy_logs_to_the_original_projects_store(
    project: Path, mlflow_store: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    params, _ = prepare_project(project, QUICK)
    copy = make_temp_copy(project)
    env = subprocess_env(None)  # DLPIPE_ROOT unset: the stage finds its project from the working directory
    env.pop("MLFLOW_TRACKING_URI", None)
    proc = subprocess.run(
        [sys.executable, "pipelines/study.py"],
        cwd=copy,
        env=env,
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert proc.returncode == 0, proc.stderr[-3000:]

    client = MlflowClient(tracking_uri=mlflow_store)  # the ORIGINAL project's mlruns/mlflow.db
    exp = client.get_experiment_by_name("dlpipe/digits")
    assert exp is not None
    assert exp.artifact_location == (project.resolve() / "mlruns" / "artifacts" / "dlpipe_digits").as_uri()
    runs = client.search_runs([exp.experiment_id])
    parents = [r for r in runs if "mlflow.parentRunId" not in r.data.tags]
    assert sorted(r.data.tags["stage"] for r in parents) == ["cv", "train"]
    parent = next(r for r in parents if r.data.tags["stage"] == "cv")
    assert parent.info.status == "FINISHED"
    assert parent.data.tags["stage"] == "cv" and parent.data.tags["architecture"] == ARCH
    kids = [r for r in runs if r.data.tags.get("mlflow.parentRunId") == parent.info.run_id]
    assert sorted((r.data.tags["fold"], r.info.status) for r in kids) == [("0", "FINISHED"), ("1", "FINISHED")]
    assert len(client.get_metric_history(kids[0].info.run_id, "val_loss")) == 1

    # nothing MLflow in the copy; artifacts in the original project; the report is the copy's DVC output
    assert not (copy / "mlruns").exists()
    assert not list(copy.rglob("mlflow.db"))
    assert len(list((project / "mlruns" / "artifacts").rglob("cv_summary.json"))) == 1
    report = read_json(copy / "reports" / "cv" / f"{ARCH}.json")
    assert report["mlflow_run_id"] == parent.info.run_id
    assert not (project / "reports").exists() and not (project / "models").exists()

    # the original project sees the same store: cv there reuses the finished run, training nothing
    trained: list[int] = []
    monkeypatch.setattr(cv, "run_fold", lambda *a, **k: trained.append(a[2]))
    out = cv.run(params, ProjectPaths(project), ARCH)
    assert trained == []
    assert out["mlflow_run_id"] == parent.info.run_id
    assert out["mean"] == report["mean"]
    assert len(client.search_runs([exp.experiment_id])) == 4
