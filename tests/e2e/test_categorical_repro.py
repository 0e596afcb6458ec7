"""A CSV with numeric and text columns through the whole study (`dvc repro` on a fresh git + DVC project, the
three tabular architectures, wide & deep with a cross), then `dlpipe predict` with the champion on raw rows, one
of them with a category the data never had."""

from __future__ import annotations

import io
import json
import subprocess
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
from helpers.mlflow_store import project_client
from helpers.processes import subprocess_env
from helpers.project import copy_dvc_study, git_dvc_init

pytestmark = pytest.mark.slow

ARCHS = ["perceptron", "mlp", "wide_deep"]
OVERRIDE = {
    "data": {"name": "csv", "csv": {"path": "shop.csv", "target": "bought"}, "folds": 2},
    "architectures": ARCHS,
    "models": {"mlp": {"hidden": [32]}, "wide_deep": {"hidden": [32], "crosses": [["colour", "size"]]}},
    "train": {"max_epochs": 20},
    "trainer": {"accelerator": "cpu", "progress_bar": False},
    "tune": {"n_trials": 2, "max_epochs": 10, "space": {"train.lr": {"type": "float", "low": 0.005, "high": 0.02}}},
    "baselines": {"models": ["logreg"]},
}
TIMEOUT = 900


def shop(n: int, seed: int) -> pd.DataFrame:
    rng = np.random.default_rng(seed)
    colour, size = rng.choice(["red", "green", "blue"], n), rng.choice(["S", "M", "L"], n)
    price = rng.uniform(5, 50, n).round(2)
    bought = ((colour == "red") & (size != "L")) | ((colour == "blue") & (size == "L")) | (price < 10)
    frame = pd.DataFrame({"price": price, "colour": colour, "size": size, "shop": rng.choice(["north", "south"], n)})
    return frame.assign(bought=np.where(bought, "yes", "no"))


def run(cmd: list[str], cwd: Path, timeout: int = TIMEOUT) -> subprocess.CompletedProcess:
    proc = subprocess.run(cmd, cwd=cwd, env=subprocess_env(cwd), capture_output=True, text=True, timeout=timeout)
    assert proc.returncode == 0, (
        f"{' '.join(cmd)} exited {proc.returncode}\n{proc.stdout[-3000:]}\n{proc.stderr[-3000:]}"
    )
    return proc


@pytest.fixture(scope="module")
def study(tmp_path_factory: pytest.TempPathFactory) -> Path:
    root = tmp_path_factory.mktemp("e2e-csv") / "study"
    copy_dvc_study(root, OVERRIDE)
    shop(600, seed=0).to_csv(root / "shop.csv", index=False)
    for cmd in git_dvc_init("study"):
        run(cmd, root)
    run(["dvc", "repro"], root)
    return root


def test_the_study_trains_every_tabular_architecture_on_text_columns(study: Path):
    meta = json.loads((study / "data" / "raw" / "dataset.json").read_text())
    assert meta["feature_names"] == ["price", "colour", "size", "shop"]
    assert meta["categories"] == {
        "colour": ["blue", "green", "red"],
        "size": ["L", "M", "S"],
        "shop": ["north", "south"],
    }
    accuracy = {a: json.loads((study / "reports" / "test" / f"{a}.json").read_text())["accuracy"] for a in ARCHS}
    assert all(value > 0.65 for value in accuracy.values()), accuracy  # above the majority class (about 0.58)
    assert accuracy["wide_deep"] > 0.85, accuracy
    wide = json.loads((study / "models" / "wide_deep" / "params.json").read_text())
    assert wide["model"]["crosses"] == [["colour", "size"]]
    assert wide["normalizer"]["mean"][1:] == [0.0, 0.0, 0.0]  # codes are never scaled
    client = project_client(study)
    champion = client.get_model_version_by_alias("dlpipe-csv-shop", "champion")  # named after shop.csv
    assert champion.tags["architecture"] in ARCHS


def test_predict_with_the_champion_on_raw_rows_and_an_unseen_category(study: Path):
    rows = shop(20, seed=1).drop(columns=["bought"])
    rows.loc[0, "colour"] = "purple"  # a colour the data never had
    rows.loc[1, "shop"] = "east"
    rows[["shop", "size", "colour", "price"]].to_csv(study / "rows.csv", index=False)
    proc = run(["dlpipe", "predict", "--model", "models:/dlpipe-csv-shop@champion", "--input", "rows.csv"], study)
    assert "2 of 20 row(s) hold a category the model never saw (colour 1, shop 1)" in proc.stderr
    got = pd.read_csv(io.StringIO(proc.stdout), keep_default_na=False)
    assert list(got["unknown_categories"][:3]) == ["colour", "shop", ""]
    assert len(got) == 20 and set(got["prediction"]) <= {"yes", "no"}
    assert np.allclose(got[["prob_no", "prob_yes"]].sum(axis=1), 1, atol=1e-5)
