"""Serial and parallel studies give the same numbers (issue #12): the same small study run by the study stage with
`trainer.workers: 1` (every unit in the stage process) and `trainer.workers: 2` (units on two worker processes, in
whatever order they finish), in two projects. Every unit seeds itself, so the trials, every fold's metrics, the
tuned params and the final models' test metrics must be identical, not merely close."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import optuna
import pytest
from helpers.mlflow_store import install_mlflow_store, project_client
from helpers.processes import subprocess_env
from helpers.project import SMALL_STUDY, copy_project, deep_merge, write_params
from optuna.storages.journal import JournalFileBackend, JournalStorage

from dlpipe.config import load_params
from dlpipe.io import read_json
from dlpipe.metric_names import SCALAR_METRICS
from dlpipe.paths import ProjectPaths
from dlpipe.stages import fetch, prepare

pytestmark = pytest.mark.slow

ARCHS = ("perceptron", "mlp")
STUDY = deep_merge(
    SMALL_STUDY,
    {
        "data": {"limit": 300, "folds": 3},
        "architectures": list(ARCHS),
        "models": {"mlp": {"hidden": [16]}},
        "train": {"max_epochs": 3},
        "tune": {"n_trials": 2, "max_epochs": 3},
    },
)


def studied(root: Path, template: Path, workers: int) -> ProjectPaths:
    project = copy_project(root)
    write_params(project, deep_merge(STUDY, {"trainer": {"workers": workers}}))
    params, paths = load_params(project / "params.yaml"), ProjectPaths(project)
    fetch.run(params, paths)
    prepare.run(params, paths)
    install_mlflow_store(project, template)
    env = subprocess_env(project)
    env.pop("MLFLOW_TRACKING_URI", None)  # the project's own store
    proc = subprocess.run(
        [sys.executable, "pipelines/study.py"], cwd=project, env=env, capture_output=True, text=True, timeout=600
    )
    assert proc.returncode == 0, proc.stderr[-3000:]
    if workers > 1:
        assert f"study: {workers} worker processes" in proc.stderr
    return paths


def trials(paths: ProjectPaths, name: str) -> list[tuple]:
    storage = JournalStorage(JournalFileBackend(str(paths.optuna / "journal.log")))
    study = optuna.load_study(study_name=name, storage=storage)
    return [(t.number, t.state.name, t.params, t.value, t.intermediate_values) for t in study.trials]


def test_serial_and_parallel_studies_give_identical_trials_folds_and_test_metrics(tmp_path, mlflow_template_db):
    serial = studied(tmp_path / "serial", mlflow_template_db, workers=1)
    parallel = studied(tmp_path / "parallel", mlflow_template_db, workers=2)
    for arch in ARCHS:
        tuned = [read_json(p.tuning_report(arch)) for p in (serial, parallel)]
        assert tuned[0]["study_name"] == tuned[1]["study_name"]
        for key in ("best_params", "best_value", "best_trial", "trials"):
            assert tuned[0][key] == tuned[1][key], (arch, key)
        assert trials(serial, tuned[0]["study_name"]) == trials(parallel, tuned[1]["study_name"])

        cv = [read_json(p.cv_report(arch)) for p in (serial, parallel)]
        assert len(cv[0]["per_fold"]) == 3
        assert cv[0]["per_fold"] == cv[1]["per_fold"], arch  # every fold's metrics, exactly
        assert cv[0]["per_fold_per_class"] == cv[1]["per_fold_per_class"], arch
        assert cv[0]["params_hash"] == cv[1]["params_hash"]
        assert serial.oof_predictions(arch).read_text() == parallel.oof_predictions(arch).read_text()

        test = [read_json(p.test_report(arch)) for p in (serial, parallel)]
        assert {m: test[0][m] for m in SCALAR_METRICS} == {m: test[1][m] for m in SCALAR_METRICS}, arch
        assert test[0]["confusion_matrix"] == test[1]["confusion_matrix"]

        # in parallel the final fit (argmax: it needs nothing from the folds) runs beside cross-validation
        client = project_client(parallel.root)
        runs = client.search_runs([client.get_experiment_by_name("dlpipe/digits").experiment_id], max_results=500)
        started = {r.info.run_name: r.info.start_time for r in runs}
        fold_ends = [r.info.end_time for r in runs if r.info.run_name.startswith(f"cv-{arch}-fold")]
        assert len(fold_ends) == 3
        assert started[f"train-{arch}"] < max(fold_ends), arch
