"""A final fit recorded by a unit whose files never came back (issue #25): on a remote executor the train run holds
the unit's outputs, and the unit run again (Ray's retry, in a fresh scratch project without them) installs them
from that run instead of training; a run not tagged recorded is not reused. Run in-process, without Ray: the unit
function with `study.executor: ray`, the project standing in for a node's scratch copy."""

from __future__ import annotations

import logging
import shutil
from dataclasses import dataclass
from pathlib import Path

import pytest
from helpers.mlflow_store import install_mlflow_store
from helpers.project import copy_project, prepare_project
from mlflow.tracking import MlflowClient

from dlpipe.config import Params
from dlpipe.paths import ProjectPaths
from dlpipe.stages import train
from dlpipe.tracking.runs import RECORDED_TAG

ARCH = "perceptron"
EXPERIMENT = "dlpipe/digits"


@dataclass
class Fit:
    params: Params
    paths: ProjectPaths
    client: MlflowClient
    summary: dict
    files: dict[str, bytes]  # the unit's output files, by path in the project


class Refit(Exception):
    pass


def no_fit(*_a, **_k):
    raise Refit("trained again")


@pytest.fixture(scope="module")
def fit(tmp_path_factory: pytest.TempPathFactory, mlflow_template_db: Path):
    """One final fit of perceptron run as a Ray unit would run it, in a project with its own store."""
    root = copy_project(tmp_path_factory.mktemp("train-recorded") / "project")
    with pytest.MonkeyPatch.context() as mp:
        mp.setenv("DLPIPE_ROOT", str(root))
        mp.delenv("MLFLOW_TRACKING_URI", raising=False)
        mp.chdir(root)
        uri = install_mlflow_store(root, mlflow_template_db)
        params, paths = prepare_project(root, {"study": {"executor": "ray"}, "train": {"max_epochs": 1}})
        summary = train.train_unit(train.TrainJob(params, paths, ARCH))
        yield Fit(params, paths, MlflowClient(tracking_uri=uri), summary, outputs(paths))


def outputs(paths: ProjectPaths) -> dict[str, bytes]:
    files = [*paths.model_dir(ARCH).iterdir(), paths.test_report(ARCH), paths.test_predictions(ARCH)]
    return {p.relative_to(paths.root).as_posix(): p.read_bytes() for p in files}


def lose_outputs(paths: ProjectPaths) -> None:
    """What a fresh node's scratch project lacks: the unit's models/<arch> and reports."""
    shutil.rmtree(paths.model_dir(ARCH), ignore_errors=True)
    shutil.rmtree(paths.reports / "test", ignore_errors=True)


def train_runs(fit: Fit) -> list[str]:
    exp = fit.client.get_experiment_by_name(EXPERIMENT)
    return [r.info.run_id for r in fit.client.search_runs([exp.experiment_id], "tags.stage = 'train'")]


def test_a_train_unit_run_again_reuses_its_recorded_run_and_trains_nothing(fit: Fit, monkeypatch, caplog) -> None:
    run_id = fit.summary["mlflow_run_id"]
    assert fit.client.get_run(run_id).data.tags[RECORDED_TAG] == "true"
    before = train_runs(fit)
    lose_outputs(fit.paths)
    monkeypatch.setattr(train, "fit_final", no_fit)
    with caplog.at_level(logging.INFO, logger="dlpipe"):
        again = train.train_unit(train.TrainJob(fit.params, fit.paths, ARCH))
    assert f"train {ARCH}: reusing run {run_id}, which recorded it (an earlier attempt)" in caplog.text
    assert again == fit.summary
    assert outputs(fit.paths) == fit.files  # the same model files, test report and predictions
    assert train_runs(fit) == before  # no second train run
    assert train.reusable(train.worker_context(fit.params, fit.paths), ARCH) == fit.summary  # whole, in place
    assert not [p for p in fit.paths.models.iterdir() if p.name.startswith(".")]  # no temp dirs left


def test_a_train_run_not_tagged_recorded_is_not_reused(fit: Fit, monkeypatch) -> None:
    run_id = fit.summary["mlflow_run_id"]
    lose_outputs(fit.paths)
    fit.client.delete_tag(run_id, RECORDED_TAG)
    monkeypatch.setattr(train, "fit_final", no_fit)
    try:
        with pytest.raises(Refit):
            train.train_unit(train.TrainJob(fit.params, fit.paths, ARCH))
    finally:
        fit.client.set_tag(run_id, RECORDED_TAG, "true")
    assert not fit.paths.model_dir(ARCH).exists()
