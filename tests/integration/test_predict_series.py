"""Series end to end: an lstm trained on JapaneseVowels (12 channels, unequal lengths 7-29) with its official split
and per-series z-normalisation, selected and promoted; the champion reproduces its test accuracy from raw padded
series, `dlpipe predict` reads the official test `.ts` file and an `.npz` with `lengths`, and `mlflow models serve`
answers NaN-padded series; a series longer than the model's is refused with exit code 2 (never truncated)."""

from __future__ import annotations

import io
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
import torch
from helpers.mlflow_store import install_mlflow_store
from helpers.processes import subprocess_env
from helpers.project import copy_project, prepare_project
from integration.test_predict_serve import mlflow_serve, post

from dlpipe import cli
from dlpipe.data.prepared import PreparedData
from dlpipe.data.series_sets import bundled_file
from dlpipe.io import write_json
from dlpipe.metric_names import SCALAR_METRICS
from dlpipe.stages import select, train

pytestmark = pytest.mark.slow

CHAMPION = "models:/dlpipe-japanese_vowels@champion"
STUDY = {
    "data": {"name": "japanese_vowels", "split": "official", "znormalize": True, "limit": None},
    "architectures": ["lstm"],
    "models": {"lstm": {"hidden_size": 32}},
    "train": {"max_epochs": 6, "lr": 0.01},
}


def fake_cv_report(folds: int, class_names: list[str]) -> dict:
    per_fold = {f"fold_{k}": {m: 0.8 for m in SCALAR_METRICS} for k in range(folds)}
    return {
        "architecture": "lstm",
        "params_hash": "hand",
        "mlflow_run_id": None,
        "folds": folds,
        "mean": {m: 0.8 for m in SCALAR_METRICS},
        "std": {m: 0.0 for m in SCALAR_METRICS},
        "per_fold": per_fold,
        "confusion_matrix": [],
        "class_names": class_names,
    }


@pytest.fixture(scope="module")
def champion(tmp_path_factory: pytest.TempPathFactory, mlflow_template_db: Path):
    root = copy_project(tmp_path_factory.mktemp("series-study") / "project")
    with pytest.MonkeyPatch.context() as mp:
        mp.setenv("DLPIPE_ROOT", str(root))
        mp.delenv("MLFLOW_TRACKING_URI", raising=False)
        mp.chdir(root)
        uri = install_mlflow_store(root, mlflow_template_db)
        params, paths = prepare_project(root, STUDY)
        data = PreparedData.load(paths.raw, paths.prepared)
        write_json(paths.cv_report("lstm"), fake_cv_report(params.data.folds, data.dataset.class_names))
        report = train.run(params, paths, "lstm")
        assert select.run(params, paths)["registry"]["champion"] == 1
        idx = torch.from_numpy(data.splits.test_idx)
        yield root, data.dataset.X[idx].numpy(), data.dataset.y[idx].numpy(), report, uri


def predict_cli(capsys: pytest.CaptureFixture, *args: str) -> tuple[int, str, str]:
    code = cli.main(["predict", "--model", CHAMPION, *args])
    out, err = capsys.readouterr()
    return code, out, err


def test_champion_reads_series_from_ts_and_npz_files(champion, tmp_path, capsys, monkeypatch):
    root, X, y, report, _ = champion
    monkeypatch.chdir(root)
    monkeypatch.setenv("DLPIPE_ROOT", str(root))
    monkeypatch.delenv("MLFLOW_TRACKING_URI", raising=False)
    assert len(y) == 370 and report["accuracy"] > 0.5  # 9 speakers; the official test set
    code, out, err = predict_cli(capsys, "--input", str(bundled_file("JapaneseVowels", "TEST")))
    assert code == 0, err
    from_ts = pd.read_csv(io.StringIO(out))["prediction"].astype(str).to_numpy()
    class_names = [str(c) for c in range(1, 10)]
    truth = np.asarray(class_names)[y]
    assert (from_ts == truth).mean() == pytest.approx(report["accuracy"], abs=1e-6)

    lengths = (~np.isnan(X).all(axis=1)).sum(axis=1)
    np.savez(tmp_path / "x.npz", X=np.nan_to_num(X, nan=-7.0), lengths=lengths)  # padding values are ignored
    code, out, err = predict_cli(capsys, "--input", str(tmp_path / "x.npz"))
    assert code == 0, err
    assert (pd.read_csv(io.StringIO(out))["prediction"].astype(str).to_numpy() == from_ts).all()

    too_long = np.zeros((1, 12, X.shape[2] + 1), dtype=np.float32)
    np.savez(tmp_path / "long.npz", X=too_long)
    code, _, err = predict_cli(capsys, "--input", str(tmp_path / "long.npz"))
    assert code == 2 and f"series 0 has {X.shape[2] + 1} steps, more than the {X.shape[2]} this model takes" in err
    assert len(err.strip().splitlines()) == 1


def test_the_served_champion_takes_nan_padded_series(champion, tmp_path):
    root, X, y, report, uri = champion
    env = {**subprocess_env(root), "MLFLOW_TRACKING_URI": uri}
    with mlflow_serve(CHAMPION, env, tmp_path) as base:
        status, body = post(f"{base}/invocations", {"inputs": X.tolist()})  # padding as NaN (JSON's NaN token)
        assert status == 200, body
        answer = pd.DataFrame(body["predictions"])
        accuracy = (answer["prediction"].astype(str).to_numpy() == np.asarray([str(c) for c in range(1, 10)])[y]).mean()
        assert accuracy == pytest.approx(report["accuracy"], abs=1e-6)
