"""A CSV with text columns, from fetch to a served prediction: fetched through the pipeline (vocabularies in
dataset.json), a wide & deep fitted on the prepared split with a cross, exported and logged like the train stage
does it, registered and promoted. The logged model takes the raw text: its signature has a string column per
categorical feature, `dlpipe predict` reads them as text (in any column order), a category it never saw is the
unknown category, and an .npz of numbers is refused for such a model."""

from __future__ import annotations

import io
import json
from dataclasses import dataclass
from pathlib import Path

import mlflow
import numpy as np
import pandas as pd
import pytest
import torch
from helpers.mlflow_store import install_mlflow_store
from helpers.project import copy_project, write_params
from helpers.training import CPU

from dlpipe import cli
from dlpipe.config import load_params
from dlpipe.data.prepared import PreparedData
from dlpipe.paths import ProjectPaths
from dlpipe.stages import fetch, prepare
from dlpipe.tracking import model_logging, registry, store
from dlpipe.training.fit import ModelSpec, fit

pytestmark = pytest.mark.slow

NAME = "dlpipe-csv"
CHAMPION = f"models:/{NAME}@champion"
COLOURS = ["red", "green", "blue"]
CITIES = ["Oslo", "Lima", "Pune", "Kobe"]


def mixed_frame(n: int, seed: int) -> pd.DataFrame:
    """Numbers and text; the label needs both (colour x size cross, and the amount)."""
    rng = np.random.default_rng(seed)
    colour = rng.choice(COLOURS, n)
    size = rng.choice(["S", "L"], n)
    amount = rng.normal(0, 1, n).round(3)
    good = ((colour == "red") ^ (size == "L")) | (amount > 1.2)
    frame = pd.DataFrame({"amount": amount, "colour": colour, "city": rng.choice(CITIES, n), "size": size})
    return frame.assign(zip=rng.choice(["02134", "10001"], n), label=np.where(good, "good", "bad"))


@dataclass
class Trained:
    root: Path
    features: pd.DataFrame  # raw feature columns, training order
    net: torch.nn.Module
    split_normalizer: object
    class_names: list[str]


@pytest.fixture(scope="module")
def trained(tmp_path_factory: pytest.TempPathFactory, mlflow_template_db: Path):
    root = copy_project(tmp_path_factory.mktemp("mixed") / "project")
    frame = mixed_frame(400, seed=0)
    frame.to_csv(root / "mixed.csv", index=False)
    with pytest.MonkeyPatch.context() as mp:
        mp.setenv("DLPIPE_ROOT", str(root))
        mp.delenv("MLFLOW_TRACKING_URI", raising=False)
        mp.chdir(root)
        install_mlflow_store(root, mlflow_template_db)
        data = {"name": "csv", "csv": {"path": "mixed.csv", "target": "label", "categorical": ["zip"]}, "folds": 3}
        write_params(root, {"data": data, "architectures": ["wide_deep"]})
        params, paths = load_params(root / "params.yaml"), ProjectPaths(root)
        fetch.run(params, paths)
        prepare.run(params, paths)
        meta = json.loads((paths.raw / "dataset.json").read_text())
        vocabularies = {
            "colour": sorted(COLOURS),
            "city": sorted(CITIES),
            "size": ["L", "S"],
            "zip": ["02134", "10001"],
        }
        assert meta["categories"] == vocabularies
        prepared = PreparedData.load(paths.raw, paths.prepared)
        split = prepared.holdout(0.1, seed=0)
        model = params.models.wide_deep.model_copy(update={"crosses": [("colour", "size")], "hidden": [16]})
        spec = ModelSpec("wide_deep", model, params.train.model_copy(update={"max_epochs": 30, "lr": 0.02}))
        result = fit(spec, split, prepared.dataset.class_names, CPU, seed=0)
        net = result.module.model.cpu().eval()
        program = root / "model.pt2"
        raw = prepared.raw(split.train.idx)
        model_logging.export_program(net, split.normalizer, raw[:4], program, check=raw)
        store.configure(None, root, params.experiment_name)
        ds = prepared.dataset
        with mlflow.start_run():
            info = model_logging.log_classifier(
                program, ds.class_names, ds.input_shape, raw[:5].numpy(), feature_names=ds.feature_names
            )
        registry.register_challenger(NAME, info.model_uri, info.model_id, {"architecture": "wide_deep"})
        registry.promote(NAME, metric="f1_macro", force=True)
        features = frame.drop(columns=["label"])
        yield Trained(root, features, net, split.normalizer, list(ds.class_names))


@pytest.fixture
def in_project(trained: Trained, monkeypatch: pytest.MonkeyPatch) -> Trained:
    monkeypatch.chdir(trained.root)
    monkeypatch.setenv("DLPIPE_ROOT", str(trained.root))
    monkeypatch.delenv("MLFLOW_TRACKING_URI", raising=False)
    return trained


def predict_cli(capsys: pytest.CaptureFixture, *args: str) -> tuple[int, str, str]:
    code = cli.main(["predict", "--model", CHAMPION, *args])
    out, err = capsys.readouterr()
    return code, out, err


def in_process(t: Trained, frame: pd.DataFrame) -> np.ndarray:
    """The fitted network's class names for raw rows, encoded here with the dataset's vocabularies."""
    from dlpipe.data.store import dataset_features

    features = dataset_features(t.root / "data" / "raw")
    X = np.stack(
        [features.encode(n, frame[n]) if n in features.vocabularies else frame[n].to_numpy() for n in features.names],
        axis=1,
    ).astype(np.float32)
    with torch.no_grad():
        logits = t.net(t.split_normalizer(torch.from_numpy(X)))
    return np.asarray(t.class_names, dtype=object)[logits.argmax(dim=1).numpy()]


def test_the_signature_has_a_text_column_per_category(in_project: Trained) -> None:
    store.connect(None, in_project.root)
    model = mlflow.pyfunc.load_model(CHAMPION)
    types = {c.name: c.type.name for c in model.metadata.get_input_schema().inputs}
    assert types == {"amount": "double", "colour": "string", "city": "string", "size": "string", "zip": "string"}
    assert model_logging.categorical_of(model) == ["colour", "city", "size", "zip"]
    assert model.unwrap_python_model().codes["colour"] == {"blue": 1, "green": 2, "red": 3}  # the vocabulary


def test_predict_takes_raw_text_and_an_unseen_category(in_project: Trained, tmp_path: Path, capsys) -> None:
    t = in_project
    rows = mixed_frame(60, seed=1).drop(columns=["label"])
    rows.loc[:9, "colour"] = "purple"  # never seen
    rows.loc[5:14, "city"] = "Quito"
    rows[rows.columns[::-1]].to_csv(tmp_path / "rows.csv", index=False)  # any column order
    code, out, err = predict_cli(capsys, "--input", str(tmp_path / "rows.csv"))
    assert code == 0, err
    got = pd.read_csv(io.StringIO(out), dtype={"prediction": str}, keep_default_na=False)
    assert len(got) == 60 and np.allclose(got[["prob_bad", "prob_good"]].sum(axis=1), 1, atol=1e-5)
    # the unseen categories are counted, not silent: on stderr, and per row in the output
    assert "15 of 60 row(s) hold a category the model never saw (colour 10, city 10)" in err
    unknown = got["unknown_categories"]
    assert list(unknown[:5]) == ["colour"] * 5 and list(unknown[5:10]) == ["colour;city"] * 5
    assert list(unknown[10:15]) == ["city"] * 5 and (unknown[15:] == "").all()
    assert (got["prediction"].to_numpy() == in_process(t, rows)).all()
    # "purple" and "mauve" are both the unknown colour: the same probabilities
    other = rows.assign(colour=rows["colour"].replace("purple", "mauve"))
    other.to_csv(tmp_path / "other.csv", index=False)
    code, out2, err = predict_cli(capsys, "--input", str(tmp_path / "other.csv"))
    assert code == 0, err
    pd.testing.assert_frame_equal(pd.read_csv(io.StringIO(out2), dtype={"prediction": str}, keep_default_na=False), got)
    # the zip codes are text: "02134" keeps its leading zero (read as a number it would be unknown)
    assert "02134" in (tmp_path / "rows.csv").read_text()


def test_the_model_learnt_the_categories(in_project: Trained) -> None:
    t = in_project
    rows = mixed_frame(400, seed=2)
    truth = rows.pop("label").to_numpy()
    assert (in_process(t, rows) == truth).mean() > 0.85  # colour x size decides most labels: the categories matter


def test_numbers_without_names_are_refused_for_a_text_model(in_project: Trained, tmp_path: Path, capsys) -> None:
    np.savez(tmp_path / "x.npz", X=np.ones((3, 5), dtype=np.float32))
    code, out, err = predict_cli(capsys, "--input", str(tmp_path / "x.npz"))
    assert code == 2 and out == ""
    assert "takes text column(s) colour, city, size, zip" in err and "header row" in err
    assert len(err.strip().splitlines()) == 1
    in_project.features.to_csv(tmp_path / "headerless.csv", index=False, header=False)
    code, _, err = predict_cli(capsys, "--input", str(tmp_path / "headerless.csv"))
    assert code == 2 and "headerless.csv: no header row (the first row, " in err and "is data" in err
    assert "add a header row naming them: amount, colour, city, size, zip" in err and "unexpected" not in err
    in_project.features.drop(columns=["city"]).to_csv(tmp_path / "missing.csv", index=False)
    code, _, err = predict_cli(capsys, "--input", str(tmp_path / "missing.csv"))
    assert code == 2 and "missing column(s) city" in err


def test_coded_rows_become_the_text_the_model_takes(in_project: Trained) -> None:
    """`input_frame` turns dataset rows (codes) back into text, as the promotion's test-set scoring needs."""
    from dlpipe.data.store import load_saved_dataset

    t = in_project
    store.connect(None, t.root)
    ds = load_saved_dataset(t.root / "data" / "raw")
    frame = model_logging.input_frame(ds.X[:50].numpy(), ds.feature_names, ds.features)
    assert frame["zip"].tolist() == t.features["zip"].astype(str).tolist()[:50]
    model = mlflow.pyfunc.load_model(CHAMPION)
    by_codes = model.predict(frame)  # MLflow's schema enforcement: text columns must hold text
    by_text = model.predict(t.features.iloc[:50].astype({"zip": str}))
    pd.testing.assert_frame_equal(by_codes, by_text)
    assert (by_text["unknown_categories"] == "").all()  # every category of the training data is known


def test_the_served_model_names_unseen_categories_and_refuses_nan(in_project: Trained) -> None:
    """What `mlflow models serve` answers is the pyfunc's frame: an `unknown_categories` field per row, and an
    InputError (HTTP 400) leading with the reason for a NaN."""
    from mlflow.exceptions import MlflowException

    store.connect(None, in_project.root)
    model = mlflow.pyfunc.load_model(CHAMPION)
    rows = in_project.features.iloc[:4].astype({"zip": str}).copy()
    rows.loc[1, "colour"], rows.loc[2, "size"] = "purple", "XL"
    assert list(model.predict(rows)["unknown_categories"]) == ["", "colour", "size", ""]
    assert model.metadata.get_output_schema().input_names()[-1] == "unknown_categories"
    rows.loc[3, "amount"] = np.nan
    with pytest.raises(MlflowException) as caught:
        model.predict(rows)
    assert caught.value.get_http_status_code() == 400
    assert (
        caught.value.message
        == "input holds 1 NaN or infinite value(s) (row(s) 3, column(s) amount); the model takes finite numbers only"
    )
