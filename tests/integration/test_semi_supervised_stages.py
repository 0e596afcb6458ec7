"""The autoencoder and the GAN through the stages, with a quarter of the labels: cv and train record their pictures in
MLflow (reconstructions and per-class errors; generated samples), the trained classifiers are exported as raw input
-> probabilities, and `dlpipe predict`, a fresh process and `mlflow models serve` reproduce their test accuracy."""

from __future__ import annotations

import json
import subprocess
import sys
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
import torch
from helpers.mlflow_store import install_mlflow_store
from helpers.processes import subprocess_env
from helpers.project import copy_project, prepare_project
from mlflow.tracking import MlflowClient
from test_predict_serve import LOAD_SCRIPT, mlflow_serve, post

from dlpipe import cli
from dlpipe.data.prepared import PreparedData
from dlpipe.stages import cv, train, tune

pytestmark = pytest.mark.slow

ARCHS = ("autoencoder", "gan")
STUDY = {
    "architectures": list(ARCHS),
    "data": {"labeled_fraction": 0.25},
    "models": {"autoencoder": {"latent": 16}, "gan": {"latent": 16}},
    "train": {"max_epochs": 6, "early_stopping": {"enabled": False}},  # the GAN's samples at epochs 0 and 5
    "tune": {"n_trials": 2, "max_epochs": 2},
}
EXPECTED = {  # artifact files every cv fold run and train run of the architecture holds
    "autoencoder": {"reconstruction/grid.png", "reconstruction/per_class.json"},
    "gan": {"samples/epoch_000.png", "samples/epoch_005.png", "samples/final.png"},
}


@dataclass
class Study:
    root: Path
    uri: str
    tuned: dict[str, dict]  # reports/tuning/<arch>.json
    reports: dict[str, dict]  # reports/test/<arch>.json
    cv_run: dict[str, str]  # the cv parent run of each architecture
    X: np.ndarray  # raw test inputs
    y: np.ndarray
    class_names: list[str]

    @property
    def env(self) -> dict[str, str]:
        return {**subprocess_env(self.root), "MLFLOW_TRACKING_URI": self.uri}


@pytest.fixture(scope="module")
def study(tmp_path_factory: pytest.TempPathFactory, mlflow_template_db: Path):
    root = copy_project(tmp_path_factory.mktemp("semi-study") / "project")
    with pytest.MonkeyPatch.context() as mp:
        mp.setenv("DLPIPE_ROOT", str(root))
        mp.delenv("MLFLOW_TRACKING_URI", raising=False)
        mp.chdir(root)
        uri = install_mlflow_store(root, mlflow_template_db)
        params, paths = prepare_project(root, STUDY)
        tuned = {arch: tune.run(params, paths, arch) for arch in ARCHS}
        cv_runs = {arch: cv.run(params, paths, arch)["mlflow_run_id"] for arch in ARCHS}
        reports = {arch: train.run(params, paths, arch) for arch in ARCHS}
        data = PreparedData.load(paths.raw, paths.prepared)
        idx = torch.from_numpy(data.splits.test_idx)
        yield Study(
            root,
            uri,
            tuned,
            reports,
            cv_runs,
            data.dataset.X[idx].numpy(),
            data.dataset.y[idx].numpy(),
            data.dataset.class_names,
        )


def artifact_files(client: MlflowClient, run_id: str, path: str | None = None) -> set[str]:
    out = set()
    for item in client.list_artifacts(run_id, path):
        out |= artifact_files(client, run_id, item.path) if item.is_dir else {item.path}
    return out


@pytest.mark.parametrize("arch", ARCHS)
def test_each_family_is_tuned_on_its_own_search_space(study: Study, arch: str) -> None:
    report = study.tuned[arch]
    assert report["finished"] == 2 and report["trials"]["FAIL"] == 0
    own = {
        "autoencoder": {"model.latent", "model.depth", "model.noise", "model.reconstruction_weight"},
        "gan": {"model.latent", "model.lr_generator", "model.betas_generator"},
    }[arch]
    assert own <= set(report["best_params"]) and "train.lr" in report["best_params"]
    client = MlflowClient(study.uri)
    exp = client.get_run(report["mlflow_run_id"]).info.experiment_id
    trials = client.search_runs([exp], f"tags.mlflow.parentRunId = '{report['mlflow_run_id']}'")
    assert len(trials) == 2
    for run in trials:  # trials log metrics, not pictures (they would cost every trial)
        assert not artifact_files(client, run.info.run_id) & EXPECTED[arch]


@pytest.mark.parametrize("arch", ARCHS)
def test_cv_folds_and_the_final_fit_log_their_pictures(study: Study, arch: str) -> None:
    client = MlflowClient(study.uri)
    exp = client.get_run(study.cv_run[arch]).info.experiment_id
    folds = client.search_runs([exp], f"tags.mlflow.parentRunId = '{study.cv_run[arch]}'")
    assert len(folds) == 3
    runs = [*folds, client.get_run(study.reports[arch]["mlflow_run_id"])]
    for run in runs:
        files = artifact_files(client, run.info.run_id)
        assert EXPECTED[arch] <= files, (run.info.run_name, sorted(files))
        if arch == "autoencoder":
            per_class = json.loads(
                Path(client.download_artifacts(run.info.run_id, "reconstruction/per_class.json")).read_text()
            )["per_class"]
            assert set(per_class) == set(study.class_names)
            logged = {k: v for k, v in run.data.metrics.items() if k.startswith("recon_error_class_")}
            assert logged == pytest.approx({f"recon_error_class_{c}": v for c, v in per_class.items()})
            assert all(v > 0 for v in per_class.values())
            history = client.get_metric_history(run.info.run_id, "train_recon_loss")
            assert len(history) == 6 and history[-1].value < history[0].value
        else:
            assert len(client.get_metric_history(run.info.run_id, "train_g_loss")) == 6
    trial_free = {"samples/final.png", "reconstruction/grid.png"}  # not logged for runs without a logger (trials)
    assert trial_free & artifact_files(client, study.cv_run[arch]) == set()


@pytest.mark.parametrize("arch", ARCHS)
def test_the_logged_classifier_reproduces_its_test_accuracy_in_a_fresh_process(
    study: Study, arch: str, tmp_path: Path
) -> None:
    report = study.reports[arch]
    assert 0.2 < report["n_train"] / (9 * report["n_val"]) < 0.3  # a quarter of the training labels (val: 10%)
    np.savez(tmp_path / "test.npz", X=study.X, y=study.y)
    proc = subprocess.run(
        [sys.executable, "-c", LOAD_SCRIPT, str(tmp_path / "test.npz"), report["model_uri"]],
        env=study.env,
        cwd=tmp_path,
        capture_output=True,
        text=True,
        timeout=180,
    )
    assert proc.returncode == 0, proc.stderr[-2000:]
    out = json.loads(proc.stdout.strip().splitlines()[-1])
    assert out["accuracy"] == pytest.approx(report["accuracy"], abs=1e-6)
    assert out["accuracy"] > 0.3 and out["argmax_agrees"] and not out["dlpipe_imported"]
    assert np.allclose(out["row_sums"], 1.0, atol=1e-5)


@pytest.mark.parametrize("arch", ARCHS)
def test_dlpipe_predict_and_mlflow_serve_answer_with_the_trained_classifier(
    study: Study, arch: str, tmp_path: Path, capsys, monkeypatch
) -> None:
    report = study.reports[arch]
    monkeypatch.chdir(study.root)
    monkeypatch.setenv("DLPIPE_ROOT", str(study.root))
    np.savez(tmp_path / "x.npz", X=study.X)
    code = cli.main(
        [
            "predict",
            "--model",
            report["model_uri"],
            "--input",
            str(tmp_path / "x.npz"),
            "--output",
            str(tmp_path / "p.csv"),
        ]
    )
    assert code == 0, capsys.readouterr().err
    predicted = pd.read_csv(tmp_path / "p.csv")["prediction"].astype(int).to_numpy()
    assert (predicted == study.y).mean() == pytest.approx(report["accuracy"], abs=1e-6)
    with mlflow_serve(report["model_uri"], study.env, tmp_path) as base:
        status, body = post(f"{base}/invocations", {"inputs": study.X.tolist()})
        assert status == 200, body
        served = pd.DataFrame(body["predictions"])["prediction"].astype(int).to_numpy()
        assert np.array_equal(served, predicted)
