"""The CSV loader: numeric or text labels, and a clear DataError for each malformed file."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch

from dlpipe.config import CsvParams, DataParams
from dlpipe.data import load_dataset
from dlpipe.data.csv_set import read_csv_dataset
from dlpipe.errors import BadInputError, DataError


def write_csv(path: Path, text: str) -> Path:
    path.write_text(text.strip() + "\n")
    return path


def csv_params(path: Path, target: str = "target") -> DataParams:
    return DataParams(name="csv", csv=CsvParams(path=str(path), target=target))


def test_numeric_labels(tmp_path):
    path = write_csv(tmp_path / "d.csv", "a,b,target\n1,2.5,0\n3,4.5,2\n5,6.5,1\n7,8.5,2\n")
    ds = load_dataset("csv", tmp_path, csv_params(path))
    assert ds.name == "csv" and ds.kind == "tabular"
    assert ds.X.dtype == torch.float32 and ds.y.dtype == torch.int64
    assert ds.X.tolist() == [[1.0, 2.5], [3.0, 4.5], [5.0, 6.5], [7.0, 8.5]]
    assert ds.y.tolist() == [0, 2, 1, 2]
    assert ds.class_names == ["0", "1", "2"]
    assert ds.input_shape == (2,)


def test_numeric_labels_are_sorted_not_taken_as_indices(tmp_path):
    path = write_csv(tmp_path / "d.csv", "x,label\n0.1,10\n0.2,3\n0.3,10\n0.4,7\n")
    ds = read_csv_dataset(path, "label")
    assert ds.class_names == ["3", "7", "10"]  # numeric order, not string order
    assert ds.y.tolist() == [2, 0, 2, 1]


def test_text_labels_map_to_sorted_classes(tmp_path):
    path = write_csv(tmp_path / "d.csv", "species,x1,x2\ncat,1,2\nant,3,4\nbee,5,6\ncat,7,8\nant,9,10\n")
    ds = load_dataset("csv", tmp_path, csv_params(path, target="species"))
    assert ds.class_names == ["ant", "bee", "cat"]
    assert ds.y.tolist() == [2, 0, 1, 2, 0]
    assert ds.X.tolist() == [[1, 2], [3, 4], [5, 6], [7, 8], [9, 10]]  # target column dropped, order kept


def test_missing_file(tmp_path):
    missing = tmp_path / "nope.csv"
    with pytest.raises(DataError) as info:
        load_dataset("csv", tmp_path, csv_params(missing))
    assert str(info.value) == f"data.csv.path: no such file {str(missing)!r}"
    assert isinstance(info.value, BadInputError)


def test_no_path_given(tmp_path):
    with pytest.raises(DataError, match=r"data\.csv\.path: required when data\.name is 'csv'"):
        load_dataset("csv", tmp_path, DataParams(name="csv"))


def test_missing_target_column_lists_the_columns(tmp_path):
    path = write_csv(tmp_path / "d.csv", "a,b,label\n1,2,0\n3,4,1\n")
    with pytest.raises(DataError) as info:
        read_csv_dataset(path, "target")
    message = str(info.value)
    assert str(path) in message
    assert "target column 'target' (data.csv.target) not found; columns: a, b, label" in message


def test_missing_values_name_the_column_and_count(tmp_path):
    path = write_csv(tmp_path / "d.csv", "a,b,target\n1,,0\n2,,1\n,5,0\n4,6,1\n")
    with pytest.raises(DataError) as info:
        read_csv_dataset(path, "target")
    message = str(info.value)
    assert "missing values in column(s) a (1), b (2)" in message
    assert str(path) in message


def test_missing_labels_are_reported_too(tmp_path):
    path = write_csv(tmp_path / "d.csv", "a,target\n1,0\n2,\n3,1\n")
    with pytest.raises(DataError, match=r"missing values in column\(s\) target \(1\)"):
        read_csv_dataset(path, "target")


def test_text_feature_columns_become_category_codes_with_their_vocabulary(tmp_path):
    path = write_csv(tmp_path / "d.csv", "a,colour,target,size\n1,red,0,L\n2,blue,1,S\n3,red,1,M\n4,green,0,S\n")
    ds = read_csv_dataset(path, "target")
    assert ds.feature_names == ["a", "colour", "size"]
    assert ds.categories == {"colour": ["blue", "green", "red"], "size": ["L", "M", "S"]}
    assert ds.X.tolist() == [[1, 3, 1], [2, 1, 3], [3, 3, 2], [4, 2, 3]]  # code i + 1 for vocabulary[i]
    features = ds.features
    assert features.categorical == [1, 2] and features.numeric == [0]
    assert features.cardinality("colour") == 4  # three colours and the unknown code 0
    assert features.encode("colour", ["red", "purple", None]).tolist() == [3, 0, 0]


def test_listed_numeric_columns_are_categories_read_as_text(tmp_path):
    path = write_csv(tmp_path / "d.csv", "zip,x,target\n02134,1.5,0\n10001,2.5,1\n02134,3.5,1\n")
    ds = read_csv_dataset(path, "target", categorical=["zip"])
    assert ds.categories == {"zip": ["02134", "10001"]}  # the text as written: the leading zero is kept
    assert ds.X[:, 0].tolist() == [1, 2, 1] and ds.X[:, 1].tolist() == [1.5, 2.5, 3.5]
    params = DataParams(name="csv", csv=CsvParams(path=str(path), categorical=["zip"]))
    assert load_dataset("csv", tmp_path, params).categories == ds.categories


def test_a_listed_categorical_column_must_exist_and_not_be_the_target(tmp_path):
    path = write_csv(tmp_path / "d.csv", "a,b,target\n1,2,0\n3,4,1\n")
    with pytest.raises(DataError) as info:
        read_csv_dataset(path, "target", categorical=["b", "colour"])
    assert str(info.value) == f"data.csv.categorical: no column(s) colour in {path}; columns: a, b, target"
    with pytest.raises(DataError, match=r"data\.csv\.categorical: 'target' is the target column"):
        read_csv_dataset(path, "target", categorical=["target"])


def test_missing_categories_are_refused_like_missing_numbers(tmp_path):
    path = write_csv(tmp_path / "d.csv", "a,colour,target\n1,red,0\n2,,1\n3,red,1\n")
    with pytest.raises(DataError, match=r"missing values in column\(s\) colour \(1\)"):
        read_csv_dataset(path, "target")


def test_a_single_class_is_rejected(tmp_path):
    path = write_csv(tmp_path / "d.csv", "a,target\n1,yes\n2,yes\n3,yes\n")
    with pytest.raises(DataError, match="target column 'target' has 1 class; at least 2 are needed"):
        read_csv_dataset(path, "target")


def test_only_a_target_column(tmp_path):
    path = write_csv(tmp_path / "d.csv", "target\n0\n1\n")
    with pytest.raises(DataError, match="no feature columns besides the target 'target'"):
        read_csv_dataset(path, "target")


def test_empty_file(tmp_path):
    path = tmp_path / "empty.csv"
    path.write_text("")
    with pytest.raises(DataError, match="not a readable CSV file"):
        read_csv_dataset(path, "target")
