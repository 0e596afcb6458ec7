"""Feature names of tabular datasets: from the CSV header and scikit-learn, kept in dataset.json (older files
without them still load), and turned into a named-column MLflow signature (images keep the tensor one)."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
import torch

from dlpipe.config import CsvParams, DataParams
from dlpipe.data import load_dataset
from dlpipe.data.base import Dataset
from dlpipe.data.csv_set import read_csv_dataset
from dlpipe.data.store import dataset_feature_names, load_saved_dataset, save_dataset
from dlpipe.tracking.model_logging import signature


def test_csv_header_gives_the_feature_names_in_column_order(tmp_path: Path) -> None:
    path = tmp_path / "d.csv"
    path.write_text("z,label,a,m\n1,x,2,3\n4,y,5,6\n")
    ds = read_csv_dataset(path, "label")
    assert ds.feature_names == ["z", "a", "m"]
    assert ds.X.tolist() == [[1, 2, 3], [4, 5, 6]]


def test_breast_cancer_has_scikit_learns_feature_names() -> None:
    ds = load_dataset("breast_cancer", ".", DataParams(name="breast_cancer"))
    assert len(ds.feature_names) == 30
    assert ds.feature_names[:2] == ["mean radius", "mean texture"] and ds.feature_names[-1] == "worst fractal dimension"


def test_image_datasets_have_no_feature_names() -> None:
    assert load_dataset("digits", ".", DataParams()).feature_names is None


def test_dataset_json_keeps_the_names_and_loads_them_back(tmp_path: Path) -> None:
    path = tmp_path / "d.csv"
    path.write_text("b,a,target\n1,2,0\n3,4,1\n")
    ds = load_dataset("csv", tmp_path, DataParams(name="csv", csv=CsvParams(path=str(path))))
    raw = tmp_path / "raw"
    meta = save_dataset(ds, raw)
    assert meta["feature_names"] == ["b", "a"]
    assert json.loads((raw / "dataset.json").read_text())["feature_names"] == ["b", "a"]
    assert load_saved_dataset(raw, verify=True).feature_names == ["b", "a"]
    assert dataset_feature_names(raw) == ["b", "a"]


def test_an_older_dataset_json_without_names_still_loads(tmp_path: Path) -> None:
    ds = Dataset("old", torch.zeros(4, 3), torch.tensor([0, 1, 0, 1]), "tabular", ["a", "b"])
    meta = save_dataset(ds, tmp_path)
    assert "feature_names" not in meta
    back = load_saved_dataset(tmp_path, verify=True)
    assert back.feature_names is None and back.input_shape == (3,)
    assert dataset_feature_names(tmp_path) is None


def test_dataset_checks_its_feature_names() -> None:
    X, y = torch.zeros(4, 3), torch.zeros(4, dtype=torch.int64)
    with pytest.raises(ValueError, match="feature_names must name each of X's"):
        Dataset("d", X, y, "tabular", ["a"], feature_names=["x", "y"])
    with pytest.raises(ValueError, match="2 distinct"):
        Dataset("d", X, y, "tabular", ["a"], feature_names=["x", "y", "x"])
    assert Dataset("d", X, y, "tabular", ["a"], feature_names=[1, 2, 3]).feature_names == ["1", "2", "3"]


def test_signature_is_named_columns_for_tabular_and_a_tensor_otherwise() -> None:
    named = signature((3,), ["neg", "pos"], ["b", "a", "c"])
    assert not named.inputs.is_tensor_spec() and named.inputs.input_names() == ["b", "a", "c"]
    assert {s.type.name for s in named.inputs.inputs} == {"double"}
    tensor = signature((1, 8, 8), ["0", "1"])
    assert tensor.inputs.is_tensor_spec() and tensor.inputs.inputs[0].shape == (-1, 1, 8, 8)
    assert tensor.inputs.inputs[0].type == np.dtype(np.float32)
    with pytest.raises(ValueError, match="2 names for input shape"):
        signature((3,), ["neg", "pos"], ["a", "b"])
    with pytest.raises(ValueError, match="input shape"):
        signature((1, 8, 8), ["0"], [str(i) for i in range(64)])
