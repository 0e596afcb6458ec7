"""Tabular models take their feature columns by name: a wine CSV fetched through the pipeline (header names in
dataset.json), a small network exported and logged the way the train stage does it with `feature_names`, then
registered and promoted. `dlpipe predict` on a CSV with the columns reversed gives identical predictions, a missing
or extra column is refused with exit 2, header-less CSVs and .npz files are read by position when the count fits,
`mlflow models serve` takes named columns in any order, and promotion's test-set scoring feeds named columns."""

from __future__ import annotations

import io
from dataclasses import dataclass
from pathlib import Path

import mlflow
import numpy as np
import pandas as pd
import pytest
import torch
from helpers.mlflow_store import install_mlflow_store
from helpers.processes import subprocess_env
from helpers.project import copy_project, write_params
from test_predict_serve import mlflow_serve, post

from dlpipe import cli
from dlpipe.config import load_params
from dlpipe.data.splits import Normalizer
from dlpipe.data.store import SPLITS_FILE, load_saved_dataset, load_splits
from dlpipe.paths import ProjectPaths
from dlpipe.stages import fetch, prepare
from dlpipe.stages import promote as promote_stage
from dlpipe.tracking import model_logging, registry, store

pytestmark = pytest.mark.slow

NAME = "dlpipe-csv"
CHAMPION = f"models:/{NAME}@champion"


@dataclass
class Wine:
    root: Path
    uri: str
    features: pd.DataFrame  # the 13 wine features, training column order
    target: np.ndarray
    expected: np.ndarray  # class names the trained network predicts for `features`
    class_names: list[str]

    @property
    def env(self) -> dict[str, str]:
        return {**subprocess_env(self.root), "MLFLOW_TRACKING_URI": self.uri}


def train_linear(X: torch.Tensor, y: torch.Tensor, classes: int) -> torch.nn.Module:
    """A softmax regression on standardised features: quick, deterministic, and sensitive to column order."""
    torch.manual_seed(0)
    net = torch.nn.Linear(X.shape[1], classes)
    opt = torch.optim.Adam(net.parameters(), lr=0.05)
    for _ in range(200):
        opt.zero_grad()
        torch.nn.functional.cross_entropy(net(X), y).backward()
        opt.step()
    return net.eval()


@pytest.fixture(scope="module")
def wine(tmp_path_factory: pytest.TempPathFactory, mlflow_template_db: Path):
    from sklearn.datasets import load_wine

    root = copy_project(tmp_path_factory.mktemp("wine") / "project")
    bunch = load_wine(as_frame=True)
    frame = bunch.frame.rename(columns={"od280/od315_of_diluted_wines": "od280_od315"})
    frame.to_csv(root / "wine.csv", index=False)
    with pytest.MonkeyPatch.context() as mp:
        mp.setenv("DLPIPE_ROOT", str(root))
        mp.delenv("MLFLOW_TRACKING_URI", raising=False)
        mp.chdir(root)
        uri = install_mlflow_store(root, mlflow_template_db)
        data = {"name": "csv", "csv": {"path": "wine.csv", "target": "target"}, "folds": 3}
        write_params(root, {"data": data, "architectures": ["perceptron"]})
        params, paths = load_params(root / "params.yaml"), ProjectPaths(root)
        fetch.run(params, paths)
        prepare.run(params, paths)
        ds = load_saved_dataset(paths.raw)
        assert ds.feature_names == [c for c in frame.columns if c != "target"]  # the header, from dataset.json
        norm = Normalizer.fit(ds.X)
        net = train_linear(norm(ds.X), ds.y, len(ds.class_names))
        program = root / "model.pt2"
        model_logging.export_program(net, norm, ds.X[:4], program)
        store.configure(None, root, params.experiment_name)
        with mlflow.start_run():
            info = model_logging.log_classifier(
                program, ds.class_names, ds.input_shape, ds.X[:5].numpy(), feature_names=ds.feature_names
            )
        registry.register_challenger(NAME, info.model_uri, info.model_id, {"architecture": "linear"})
        registry.promote(NAME, metric="f1_macro", force=True)
        with torch.no_grad():
            predicted = net(norm(ds.X)).argmax(dim=1).numpy()
        names = np.asarray(ds.class_names, dtype=object)
        features = frame.drop(columns=["target"])
        yield Wine(root, uri, features, frame["target"].to_numpy(), names[predicted], list(ds.class_names))


@pytest.fixture
def in_project(wine: Wine, monkeypatch: pytest.MonkeyPatch) -> Wine:
    monkeypatch.chdir(wine.root)
    monkeypatch.setenv("DLPIPE_ROOT", str(wine.root))
    monkeypatch.delenv("MLFLOW_TRACKING_URI", raising=False)
    return wine


def predict_cli(capsys: pytest.CaptureFixture, *args: str) -> tuple[int, str, str]:
    code = cli.main(["predict", "--model", CHAMPION, *args])
    out, err = capsys.readouterr()
    return code, out, err


def predictions(out: str) -> pd.DataFrame:
    return pd.read_csv(io.StringIO(out), dtype={"prediction": str})


def test_the_logged_model_has_a_named_column_signature(in_project: Wine) -> None:
    wine = in_project
    store.connect(None, wine.root)
    model = mlflow.pyfunc.load_model(CHAMPION)
    schema = model.metadata.get_input_schema()
    assert not schema.is_tensor_spec()
    assert schema.input_names() == list(wine.features.columns)
    assert model_logging.feature_names_of(model) == list(wine.features.columns)
    assert model_logging.input_shape_of(model) == (13,)
    reordered = wine.features[wine.features.columns[::-1]]
    out = model.predict(reordered)  # MLflow's schema enforcement reorders by name
    assert (out["prediction"].to_numpy() == wine.expected).all()
    own = model.unwrap_python_model().predict(None, reordered)  # and so does the pyfunc itself, without MLflow
    prob_columns = [f"prob_{c}" for c in wine.class_names]
    assert list(own["prediction"]) == list(out["prediction"])
    assert np.allclose(own[prob_columns].to_numpy(), out[prob_columns].to_numpy(), atol=1e-6)


def test_reversed_columns_give_identical_predictions(in_project: Wine, tmp_path: Path, capsys) -> None:
    w = in_project
    w.features.to_csv(tmp_path / "in_order.csv", index=False)
    code, out, err = predict_cli(capsys, "--input", str(tmp_path / "in_order.csv"))
    assert code == 0, err
    in_order = predictions(out)
    assert (in_order["prediction"].to_numpy() == w.expected).all()

    w.features[w.features.columns[::-1]].to_csv(tmp_path / "reversed.csv", index=False)
    code, out, err = predict_cli(capsys, "--input", str(tmp_path / "reversed.csv"))
    assert code == 0, err
    pd.testing.assert_frame_equal(predictions(out), in_order)
    # the same values by position would disagree on many rows: the test can tell the difference
    positional = w.features[w.features.columns[::-1]].to_numpy()
    np.savetxt(tmp_path / "reversed_no_header.csv", positional, delimiter=",")
    code, out, err = predict_cli(capsys, "--input", str(tmp_path / "reversed_no_header.csv"))
    assert code == 0, err
    assert (predictions(out)["prediction"].to_numpy() != w.expected).sum() > 20

    # a label column to drop, in the middle of shuffled columns
    shuffled = w.features.assign(target=w.target)[["hue", "target", *w.features.columns.drop("hue")]]
    shuffled.to_csv(tmp_path / "with_target.csv", index=False)
    code, out, err = predict_cli(capsys, "--input", str(tmp_path / "with_target.csv"), "--drop", "target")
    assert code == 0, err
    pd.testing.assert_frame_equal(predictions(out), in_order)


def test_headerless_csv_and_npz_are_read_by_position(in_project: Wine, tmp_path: Path, capsys) -> None:
    w = in_project
    np.savetxt(tmp_path / "no_header.csv", w.features.to_numpy(), delimiter=",")
    code, out, err = predict_cli(capsys, "--input", str(tmp_path / "no_header.csv"))
    assert code == 0, err
    assert (predictions(out)["prediction"].to_numpy() == w.expected).all()
    np.savez(tmp_path / "x.npz", X=w.features.to_numpy(np.float32))
    code, out, err = predict_cli(capsys, "--input", str(tmp_path / "x.npz"))
    assert code == 0, err
    assert (predictions(out)["prediction"].to_numpy() == w.expected).all()

    np.savetxt(tmp_path / "short.csv", w.features.to_numpy()[:, :12], delimiter=",")
    code, _, err = predict_cli(capsys, "--input", str(tmp_path / "short.csv"))
    assert code == 2
    assert "(178, 12)" in err and "expected 13 features per row" in err and "matched by column names" in err
    assert len(err.strip().splitlines()) == 1


def test_missing_or_extra_columns_are_refused_with_exit_2(in_project: Wine, tmp_path: Path, capsys) -> None:
    w = in_project
    w.features.drop(columns=["proline", "hue"]).to_csv(tmp_path / "missing.csv", index=False)
    code, out, err = predict_cli(capsys, "--input", str(tmp_path / "missing.csv"))
    assert code == 2 and out == ""
    assert "missing column(s) hue, proline" in err and "the model takes 13 columns by name, in any order" in err
    assert "alcohol, malic_acid" in err and len(err.strip().splitlines()) == 1

    w.features.assign(color="red").to_csv(tmp_path / "extra.csv", index=False)
    code, out, err = predict_cli(capsys, "--input", str(tmp_path / "extra.csv"))
    assert code == 2 and out == ""
    assert "unexpected column(s) color (leave them out with --drop)" in err and "missing column" not in err
    assert len(err.strip().splitlines()) == 1
    code, out, err = predict_cli(capsys, "--input", str(tmp_path / "extra.csv"), "--drop", "color")
    assert code == 0, err
    assert (predictions(out)["prediction"].to_numpy() == w.expected).all()


def test_promotion_scores_a_named_column_model_on_the_test_set(in_project: Wine) -> None:
    w = in_project
    params, paths = load_params(w.root / "params.yaml"), ProjectPaths(w.root)
    store.connect(None, w.root)
    test = promote_stage.load_test_set(params, paths)
    assert test is not None and test.feature_names == list(w.features.columns)
    score = promote_stage.model_scorer(NAME, "accuracy", None, test)
    splits, subset = load_splits(paths.prepared / SPLITS_FILE)
    rows = subset[splits.test_idx]  # CSV rows of the held-out test set
    truth = np.asarray(w.class_names, dtype=object)[load_saved_dataset(paths.raw).y.numpy()[rows]]
    expected = float((w.expected[rows] == truth).mean())  # the network's own accuracy on them
    assert score(registry.get_alias(NAME, registry.CHAMPION)) == pytest.approx(expected, abs=1e-9)


def test_served_model_takes_named_columns_in_any_order(wine: Wine, tmp_path: Path) -> None:
    with mlflow_serve(CHAMPION, wine.env, tmp_path) as base:
        reversed_cols = list(wine.features.columns[::-1])
        payload = {"dataframe_split": {"columns": reversed_cols, "data": wine.features[reversed_cols].values.tolist()}}
        status, body = post(f"{base}/invocations", payload)
        assert status == 200, body
        answer = pd.DataFrame(body["predictions"])
        assert list(answer.columns) == ["prediction"] + [f"prob_{c}" for c in wine.class_names]
        assert (answer["prediction"].to_numpy() == wine.expected).all()
        missing = [c for c in reversed_cols if c != "proline"]
        payload = {"dataframe_split": {"columns": missing, "data": wine.features[missing].values.tolist()}}
        status, body = post(f"{base}/invocations", payload)
        assert status == 400 and "proline" in body.get("message", "")
