"""cv@<arch> logging to a real MLflow tracking server (SQLite backend, proxied artifacts) on 127.0.0.1."""

from __future__ import annotations

import shutil
from pathlib import Path

import mlflow
import pytest
from helpers import servers
from helpers.project import prepare_project
from mlflow.tracking import MlflowClient

from dlpipe.io import read_json
from dlpipe.stages import cv

ARCH = "perceptron"


@pytest.fixture
def mlflow_server(tmp_path: Path, mlflow_template_db: Path, monkeypatch: pytest.MonkeyPatch):
    """`mlflow server` on a free loopback port (backend: a copy of the migrated template DB); yields (url, art)."""
    db = tmp_path / "server" / "srv.db"
    db.parent.mkdir()
    shutil.copy2(mlflow_template_db, db)
    monkeypatch.setenv("NO_PROXY", servers.HOST)
    monkeypatch.setenv("no_proxy", servers.HOST)
    with servers.mlflow_server(db.parent, f"sqlite:///{db}") as url:
        yield url, db.parent / "art"


@pytest.mark.slow
def test_cv_logs_runs_metrics_and_artifacts_to_a_tracking_server(
    project: Path, mlflow_server, monkeypatch: pytest.MonkeyPatch
) -> None:
    url, art = mlflow_server
    params, paths = prepare_project(project, {"data": {"folds": 2}, "train": {"max_epochs": 2}})
    monkeypatch.setenv("MLFLOW_TRACKING_URI", url)
    out = cv.run(params, paths, ARCH)

    client = MlflowClient(tracking_uri=url)
    exp = client.get_experiment_by_name("dlpipe/digits")
    assert exp is not None
    assert exp.artifact_location.startswith("mlflow-artifacts:")  # the server's proxied store, not a local path
    runs = client.search_runs([exp.experiment_id])
    parents = [r for r in runs if "mlflow.parentRunId" not in r.data.tags]
    assert len(parents) == 1
    parent = parents[0]
    assert parent.info.run_id == out["mlflow_run_id"]
    assert parent.info.status == "FINISHED"
    assert parent.data.tags["stage"] == "cv" and parent.data.tags["architecture"] == ARCH
    assert parent.data.params["data.folds"] == "2"
    assert parent.data.metrics["mean_accuracy"] == pytest.approx(out["mean"]["accuracy"], abs=1e-12)
    assert parent.inputs.dataset_inputs and parent.inputs.dataset_inputs[0].dataset.name == "digits"
    assert "cv_summary.json" in {a.path for a in client.list_artifacts(parent.info.run_id)}
    plots = {a.path for a in client.list_artifacts(parent.info.run_id, "plots")}
    assert plots == {"plots/confusion_matrix.png", "plots/learning_curves.png"}

    kids = [r for r in runs if r.data.tags.get("mlflow.parentRunId") == parent.info.run_id]
    assert sorted((r.data.tags["fold"], r.info.status) for r in kids) == [("0", "FINISHED"), ("1", "FINISHED")]
    for kid in kids:
        history = client.get_metric_history(kid.info.run_id, "val_loss")
        assert sorted(m.step for m in history) == [0, 1]
        assert len(client.get_metric_history(kid.info.run_id, "train_loss")) == 2
        assert not client.list_artifacts(kid.info.run_id, "plots")  # the curves are one picture on the parent
        report = mlflow.artifacts.load_dict(f"{kid.info.artifact_uri}/fold_report.json")["report"]
        assert report["accuracy"] == pytest.approx(kid.data.metrics["accuracy"], abs=1e-12)

    # the artifacts went through the server into its destination; nothing local in the project
    assert len(list(art.rglob("*.png"))) == 2
    assert not (project / "mlruns").exists()
    assert read_json(paths.cv_report(ARCH))["mlflow_run_id"] == parent.info.run_id

    # resuming through the server (fold reports read back over HTTP): nothing trained, no new runs
    trained: list[int] = []
    monkeypatch.setattr(cv, "run_fold", lambda *a, **k: trained.append(a[2]))
    again = cv.run(params, paths, ARCH)
    assert trained == []
    assert again["mlflow_run_id"] == parent.info.run_id and again["mean"] == out["mean"]
    assert len(client.search_runs([exp.experiment_id])) == 3
