"""A study within a budget (study.budget) on digits, 300 samples: each architecture's tuning stops once its trials
spent the epochs (trials pruned by successive halving), and an architecture whose first fold is far below the
leader's is dropped: its other folds and its final fit never run, and select reports it as dropped, never scored,
never champion."""

from __future__ import annotations

import re
from pathlib import Path

import pandas as pd
import pytest
from helpers.mlflow_store import install_mlflow_store
from helpers.project import copy_project, prepare_project
from mlflow.tracking import MlflowClient

from dlpipe.io import read_json
from dlpipe.stages import select
from dlpipe.stages import study as study_stage

pytestmark = pytest.mark.slow

BUDGETED = {
    "architectures": ["mlp", "perceptron"],  # serially, mlp's folds are scored before perceptron's first
    "train": {"max_epochs": 3, "lr": 0.01},
    "trainer": {"workers": 1},
    "tune": {
        "n_trials": 4,
        "max_epochs": 2,
        "cv_folds": 0,  # a trial is one fit of at most 2 epochs
        "space": {"train.batch_size": {"type": "categorical", "choices": [32]}},
        "spaces": {
            "mlp": {"train.lr": {"type": "float", "low": 0.005, "high": 0.02, "log": True}},
            "perceptron": {"train.lr": {"type": "float", "low": 1e-7, "high": 2e-7, "log": True}},  # learns nothing
        },
    },
    "study": {"budget": {"epochs": 3, "drop_after_folds": 1, "drop_margin": 0.2}},
}


@pytest.fixture(scope="module")
def budgeted(tmp_path_factory: pytest.TempPathFactory, mlflow_template_db: Path):
    root = copy_project(tmp_path_factory.mktemp("budget") / "project")
    with pytest.MonkeyPatch.context() as mp:
        mp.setenv("DLPIPE_ROOT", str(root))
        mp.delenv("MLFLOW_TRACKING_URI", raising=False)
        mp.chdir(root)
        uri = install_mlflow_store(root, mlflow_template_db)
        params, paths = prepare_project(root, BUDGETED)
        study_stage.run(params, paths)
        selected = select.run(params, paths)
        yield paths, selected, MlflowClient(tracking_uri=uri)


def test_tuning_stops_when_its_epochs_are_spent(budgeted) -> None:
    paths, _, _ = budgeted
    for arch in ("mlp", "perceptron"):
        report = read_json(paths.tuning_report(arch))
        assert report["stopped"] == "epochs", report
        assert report["pruner"] == "successive_halving"
        assert report["epochs_trained"] == 3  # a ceiling: the trial that reaches it stops there
        assert report["finished"] == 2


def test_a_bad_architecture_is_dropped_and_never_scored(budgeted) -> None:
    paths, selected, client = budgeted
    cv = read_json(paths.cv_report("perceptron"))
    why = cv["dropped"]
    assert why["leader"] == "mlp" and why["after_folds"] == 1
    assert why["leader_mean"] - why["mean"] > 0.2
    assert list(cv["per_fold"]) == ["fold_0"]  # folds 1 and 2 never ran
    assert "mean" not in cv
    assert not paths.test_report("perceptron").exists()  # nor did its final fit
    assert paths.test_report("mlp").is_file()
    run = client.get_run(cv["mlflow_run_id"])
    assert run.info.status == "FINISHED" and "below the leader" in run.data.tags["dropped"]
    folds = client.search_runs(
        [run.info.experiment_id], f"tags.mlflow.parentRunId = '{run.info.run_id}'", max_results=10
    )
    assert len(folds) == 1

    assert selected["winner"] == "mlp"
    assert selected["dropped"]["perceptron"]["leader"] == "mlp"
    board = pd.read_csv(paths.leaderboard_csv)
    assert list(board.loc[board["kind"] == "deep", "architecture"]) == ["mlp"]
    text = paths.leaderboard_md.read_text()
    assert "Dropped by the study budget" in text and re.search(r"\| perceptron +\| dropped +\|", text)
