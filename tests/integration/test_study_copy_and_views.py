"""A finished small study (baselines, cv and train of two architectures, select with registration) read through the
command-line views, then copied elsewhere: a stage and a registry read in the copy use the copy's own mlruns/ and
leave the original byte for byte as it was, also when the original is gone."""

from __future__ import annotations

import re
import shutil
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pytest
import yaml
from helpers.mlflow_store import install_mlflow_store
from helpers.project import copy_project, prepare_project, write_params
from mlflow.tracking import MlflowClient

from dlpipe import cli
from dlpipe.config import Params, load_params
from dlpipe.io import read_json, sha256_file
from dlpipe.paths import ProjectPaths
from dlpipe.stages import baselines, cv, select, train

pytestmark = pytest.mark.slow

ARCHS = ["perceptron", "mlp"]
QUICK = {
    "data": {"folds": 2},
    "train": {"max_epochs": 1},
    "architectures": ARCHS,
    "tune": {"enabled": False},
    "baselines": {"models": ["logreg"]},
}
NAME, EXPERIMENT = "dlpipe-digits", "dlpipe/digits"


@dataclass
class Study:
    root: Path
    params: Params
    selected: dict


@pytest.fixture(scope="module")
def study(tmp_path_factory: pytest.TempPathFactory, mlflow_template_db: Path):
    root = copy_project(tmp_path_factory.mktemp("views") / "project").resolve()
    with pytest.MonkeyPatch.context() as mp:
        mp.setenv("DLPIPE_ROOT", str(root))
        mp.delenv("MLFLOW_TRACKING_URI", raising=False)
        mp.chdir(root)
        install_mlflow_store(root, mlflow_template_db)
        params, paths = prepare_project(root, QUICK)
        baselines.run(params, paths)
        for arch in ARCHS:
            cv.run(params, paths, arch)
            train.run(params, paths, arch)
        yield Study(root, params, select.run(params, paths))


def tree_hashes(folder: Path) -> dict[str, str]:
    return {str(p.relative_to(folder)): sha256_file(p) for p in sorted(folder.rglob("*")) if p.is_file()}


def use_project(monkeypatch: pytest.MonkeyPatch, root: Path) -> None:
    monkeypatch.setenv("DLPIPE_ROOT", str(root))
    monkeypatch.delenv("MLFLOW_TRACKING_URI", raising=False)
    monkeypatch.chdir(root)


def test_leaderboard_and_runs_of_a_real_study(study: Study, capsys, monkeypatch) -> None:
    use_project(monkeypatch, study.root)
    assert cli.main(["leaderboard"]) == 0
    out = capsys.readouterr().out
    winner = study.selected["winner"]
    models = [m.group(1) for m in re.finditer(r"^\s*\d+\s+(\S+)", out, re.MULTILINE)]
    assert sorted(models) == sorted([*ARCHS, "logreg"])
    assert re.search(rf"^\s*\d+\s+{winner} \*", out, re.MULTILINE)  # the champion is marked
    assert f"Champion: {winner} on the cross-validated F1 (macro)" in out
    assert max(len(line) for line in out.splitlines()) <= 120

    assert cli.main(["runs"]) == 0
    out = capsys.readouterr().out
    client = MlflowClient()
    exp_id = client.get_experiment_by_name(EXPERIMENT).experiment_id
    select_run = study.selected["mlflow_run_id"]
    mode = "?workflowType=machine_learning"  # MLflow's UI in model-training mode, not GenAI
    assert f"select run: {select_run}\n  http://127.0.0.1:5000/#/experiments/{exp_id}/runs/{select_run}{mode}" in out
    assert client.get_experiment(exp_id).tags["mlflow.experimentKind"] == "custom_model_development"
    assert max(len(line) for line in out.splitlines()) <= 120
    version = study.selected["registry"]["version"]
    assert out.splitlines()[0].startswith(f"champion: {NAME} version {version} (alias champion)")
    for arch in ARCHS:
        for stage in ("cv", "train"):
            rid = study.selected["runs"][arch][stage]
            assert client.get_run(rid).data.tags["architecture"] == arch
            assert f"    {stage:<5}  http://127.0.0.1:5000/#/experiments/{exp_id}/runs/{rid}{mode}\n" in out
    assert cli.main(["runs", "--ui-url", "http://mlflow.lab:8080/"]) == 0
    assert f"http://mlflow.lab:8080/#/experiments/{exp_id}/runs/{select_run}{mode}" in capsys.readouterr().out


def test_a_copied_project_reads_and_writes_only_its_own_store(study: Study, tmp_path: Path, capsys, monkeypatch):
    original = study.root
    before = tree_hashes(original)
    copy = (tmp_path / "copy of the study").resolve()
    shutil.copytree(original, copy, symlinks=True)
    use_project(monkeypatch, copy)

    # a stage in the copy (new params: a new cv run) records into the copy
    write_params(copy, {"train": {"max_epochs": 2}}, base=yaml.safe_load((copy / "params.yaml").read_text()))
    params = load_params(copy / "params.yaml")
    result = cv.run(params, ProjectPaths(copy), "perceptron")
    client = MlflowClient(tracking_uri=f"sqlite:///{copy / 'mlruns' / 'mlflow.db'}")
    new_run = client.get_run(result["mlflow_run_id"])
    assert new_run.info.artifact_uri.startswith((copy / "mlruns" / "artifacts").as_uri() + "/")
    assert list((copy / "mlruns" / "artifacts").rglob(f"{new_run.info.run_id}/artifacts/*"))
    assert read_json(copy / "reports" / "cv" / "perceptron.json")["mlflow_run_id"] == new_run.info.run_id
    assert tree_hashes(original) == before

    # with the original gone, the registry and the runs still read (from the copy), and nothing recreates it
    parked = original.with_name(original.name + ".parked")
    original.rename(parked)
    try:
        np.savez(copy / "x.npz", X=np.zeros((3, 1, 8, 8), dtype=np.float32))
        assert cli.main(["predict", "--model", f"models:/{NAME}@champion", "--input", "x.npz"]) == 0
        out = capsys.readouterr().out
        assert out.splitlines()[0].startswith("prediction") and len(out.splitlines()) == 4
        assert cli.main(["runs"]) == 0
        assert "(not in the MLflow store)" not in capsys.readouterr().out
        assert not original.exists()
    finally:
        parked.rename(original)
    assert tree_hashes(original) == before
