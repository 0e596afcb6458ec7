"""select and `dlpipe promote` on a CSV study with text columns, run again and again as a researcher does: the gate
scores the new version and the champion on the raw text their signatures take (unicode column names, a numeric
column with one text cell), compares them only on rows neither trained on (a new seed or new data: no comparison,
the decision left to the user, said plainly), and each CSV file gets its own registered model."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
from helpers.mlflow_store import install_mlflow_store
from helpers.project import deep_merge, prepare_project
from mlflow.tracking import MlflowClient

from dlpipe import cli
from dlpipe.io import read_json
from dlpipe.stages import cv, select, train

pytestmark = pytest.mark.slow

NAME = "dlpipe-csv-churn"  # named after the CSV file
STUDY = {
    "data": {"name": "csv", "csv": {"path": "churn.csv", "target": "churned"}, "limit": None, "folds": 2},
    "architectures": ["perceptron"],
    "train": {"max_epochs": 2, "lr": 0.05},
}


def churn(n: int, seed: int) -> pd.DataFrame:
    """Three text columns (one with a unicode name, one numeric but for a single text cell), one number; the label
    comes from plan x région."""
    rng = np.random.default_rng(seed)
    plan = rng.choice(["basic", "pro", "team"], n)
    region = rng.choice(["nord", "sud", "île"], n)
    tenure = rng.normal(0, 1, n).round(3)
    score = rng.integers(0, 50, n).astype(object)
    score[3] = "unknown"  # one text cell: the whole column is categorical
    churned = ((plan == "pro") ^ (region == "sud")) | (tenure > 1.5)
    return pd.DataFrame({"plan": plan, "région": region, "tenure": tenure, "score": score, "churned": churned})


def study(root: Path, overrides: dict) -> dict:
    """fetch, prepare, cv, train and select in-process; returns select's summary."""
    params, paths = prepare_project(root, deep_merge(STUDY, overrides))
    for arch in params.architectures:
        cv.run(params, paths, arch)
        train.run(params, paths, arch)
    return select.run(params, paths)


@pytest.fixture
def churn_project(project: Path, mlflow_template_db: Path, monkeypatch: pytest.MonkeyPatch) -> tuple[Path, str]:
    monkeypatch.delenv("MLFLOW_TRACKING_URI", raising=False)
    uri = install_mlflow_store(project, mlflow_template_db)
    churn(240, seed=0).to_csv(project / "churn.csv", index=False)
    return project, uri


def promote_cli(capsys: pytest.CaptureFixture, *args: str) -> tuple[int, str, str]:
    code = cli.main(["promote", *args])
    out, err = capsys.readouterr()
    return code, out, err


def test_the_gate_scores_text_columns_and_compares_only_on_rows_neither_trained_on(churn_project, capsys) -> None:
    root, uri = churn_project
    client = MlflowClient(tracking_uri=uri, registry_uri=uri)

    first = study(root, {})
    assert first["registry"]["name"] == NAME and first["registry"]["promotion"]["action"] == "promoted"

    # the same data and split, another model: both versions are scored on the test set's raw text
    second = study(root, {"train": {"lr": 0.01, "max_epochs": 3}})
    decision = second["registry"]["promotion"]
    assert second["registry"]["version"] == 2 and decision["action"] in ("promoted", "refused"), decision
    tags = {v: client.get_model_version(NAME, str(v)).tags for v in (1, 2)}
    # each model scores on the test set what its training run recorded: it got the text its signature takes
    assert decision["score"] == pytest.approx(float(tags[2]["test_f1_macro"]), abs=1e-6)
    assert decision["previous_score"] == pytest.approx(float(tags[1]["test_f1_macro"]), abs=1e-6)
    assert read_json(root / "reports" / "selection.json")["registry"]["version"] == 2
    assert read_json(root / "reports" / "metrics.json")["version"] == 2

    # `dlpipe promote` compares them the same way
    code, out, err = promote_cli(capsys, "--version", "1" if decision["action"] == "promoted" else "2")
    assert code == 0, err
    assert "beat" in out and f"{decision['score']:.4f}" in out and f"{decision['previous_score']:.4f}" in out

    # a new seed draws another test set: the champion trained on some of its rows, so no comparison is made
    champion = int(client.get_registered_model(NAME).aliases["champion"])
    third = study(root, {"seed": 7})
    decision = third["registry"]["promotion"]
    assert third["registry"]["version"] == 3 and decision["action"] == "not_compared", decision
    assert int(client.get_registered_model(NAME).aliases["champion"]) == champion
    assert "different held-out test sets" in decision["message"]
    assert "dlpipe promote --version 3 --force" in decision["message"]
    assert "not compared" in client.get_model_version(NAME, "3").tags["promotion_undecided"]
    audit = json.loads(client.get_registered_model(NAME).tags["champion_audit"])
    assert audit[-1]["action"] == "not_compared" and audit[-1]["version"] == 3
    code, out, err = promote_cli(capsys)
    assert code == 0 and out.startswith("not compared:") and "--force" in out, (out, err)
    assert int(client.get_registered_model(NAME).aliases["champion"]) == champion


def test_each_csv_file_has_its_own_registered_model(churn_project) -> None:
    root, uri = churn_project
    client = MlflowClient(tracking_uri=uri, registry_uri=uri)
    assert study(root, {})["registry"]["name"] == NAME
    other = pd.DataFrame({"x": np.arange(120) % 7, "colour": np.where(np.arange(120) % 2, "red", "blue")})
    other.assign(churned=other["colour"] == "red").to_csv(root / "other.csv", index=False)
    chosen = study(root, {"data": {"csv": {"path": "other.csv"}}})
    assert chosen["registry"]["name"] == "dlpipe-csv-other"
    assert chosen["registry"]["promotion"]["action"] == "promoted"  # its first champion: nothing to compare with
    assert sorted(m.name for m in client.search_registered_models()) == ["dlpipe-csv-churn", "dlpipe-csv-other"]
