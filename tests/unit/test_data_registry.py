"""Dataset registry, the common in-memory Dataset form, the on-disk store, and `dlpipe list`."""

from __future__ import annotations

import json

import numpy as np
import pytest
import torch

from dlpipe import cli
from dlpipe.config import DataParams
from dlpipe.data import DATASETS, Dataset, get_dataset_info, load_dataset
from dlpipe.data.series_sets import SERIES_SETS
from dlpipe.data.store import dataset_digest, load_saved_dataset, load_splits, save_dataset
from dlpipe.errors import ConfigError, DataError
from dlpipe.io import sha256_file
from dlpipe.models import ARCHITECTURES

EXPECTED_KINDS = {
    "digits": "image",
    "breast_cancer": "tabular",
    "csv": "tabular",
    "mnist": "image",
    "fashion_mnist": "image",
    "cifar10": "image",
    **{spec.name: "sequence" for spec in SERIES_SETS},
    "images": "image",
}


def test_registry_names_kinds_and_network_flags():
    assert {name: info.kind for name, info in DATASETS.items()} == EXPECTED_KINDS
    assert {name for name, info in DATASETS.items() if info.needs_network} == {"mnist", "fashion_mnist", "cifar10"}
    assert get_dataset_info("digits") is DATASETS["digits"]


def test_published_class_counts_are_the_data_s():
    """The check stage judges splits from these counts before anything is fetched."""
    for name in ("digits", "breast_cancer"):  # offline: compare with the data itself
        y = load_dataset(name, ".", DataParams(name=name)).y.numpy()
        assert DATASETS[name].class_counts == tuple(np.bincount(y).tolist())
    sizes = {"mnist": 70000, "fashion_mnist": 70000, "cifar10": 60000}  # train + test, pooled
    assert {name: sum(DATASETS[name].class_counts) for name in sizes} == sizes
    assert all(len(DATASETS[name].class_counts) == 10 for name in sizes)
    assert DATASETS["csv"].class_counts is None  # known only once the file is read


def test_unknown_dataset_is_a_config_error_listing_the_choices():
    with pytest.raises(ConfigError) as info:
        get_dataset_info("nope")
    assert str(info.value) == (
        "data.name: unknown dataset 'nope'; allowed: digits, breast_cancer, csv, mnist, fashion_mnist, cifar10, "
        + ", ".join(spec.name for spec in SERIES_SETS)
        + ", images"
    )
    with pytest.raises(ConfigError, match="unknown dataset 'nope'"):
        load_dataset("nope", ".", DataParams())


def test_digits(tmp_path):
    ds = load_dataset("digits", tmp_path, DataParams())
    assert ds.name == "digits" and ds.kind == "image"
    assert ds.X.shape == (1797, 1, 8, 8) and ds.input_shape == (1, 8, 8)
    assert ds.X.dtype == torch.float32 and ds.y.dtype == torch.int64
    assert ds.X.min().item() == 0.0 and ds.X.max().item() == 1.0
    assert ds.class_names == [str(i) for i in range(10)] and ds.num_classes == 10
    assert len(ds) == 1797
    assert np.bincount(ds.y.numpy()).tolist() == [178, 182, 177, 183, 181, 182, 181, 179, 174, 180]
    assert list(tmp_path.iterdir()) == []  # offline, nothing written


def test_breast_cancer():
    ds = load_dataset("breast_cancer", ".", DataParams(name="breast_cancer"))
    assert ds.kind == "tabular" and ds.input_shape == (30,)
    assert ds.X.dtype == torch.float32 and ds.y.dtype == torch.int64
    assert ds.class_names == ["malignant", "benign"]
    assert np.bincount(ds.y.numpy()).tolist() == [212, 357]


def test_dataset_checks_its_own_form():
    X, y = torch.zeros(4, 1, 2, 2), torch.zeros(4, dtype=torch.int64)
    with pytest.raises(TypeError, match=r"X must be float32 \(or uint8 images\) and y int64"):
        Dataset("d", X.double(), y, "image", ["a"])
    with pytest.raises(TypeError, match=r"X must be float32 \(or uint8 images\) and y int64"):
        Dataset("d", X, y.int(), "image", ["a"])
    with pytest.raises(ValueError, match="4 samples but 3 labels"):
        Dataset("d", X, y[:3], "image", ["a"])
    with pytest.raises(ValueError, match=r"image data must be N x C x H x W, got \(4, 4\)"):
        Dataset("d", X.view(4, 4), y, "image", ["a"])
    assert Dataset("d", X.view(4, 4), y, "tabular", ["a"]).input_shape == (4,)


def test_store_round_trip_with_checksum(tmp_path):
    ds = load_dataset("breast_cancer", ".", DataParams(name="breast_cancer"))
    meta = save_dataset(ds, tmp_path)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["dataset.json", "dataset.npz"]
    on_disk = json.loads((tmp_path / "dataset.json").read_text())
    assert on_disk == meta
    assert meta["sha256"] == sha256_file(tmp_path / "dataset.npz") == dataset_digest(tmp_path)
    assert meta["input_shape"] == [30] and meta["n_samples"] == 569 and meta["kind"] == "tabular"
    back = load_saved_dataset(tmp_path, verify=True)
    assert torch.equal(back.X, ds.X) and torch.equal(back.y, ds.y)
    assert (back.name, back.kind, back.class_names) == (ds.name, ds.kind, ds.class_names)


def test_store_detects_tampering_only_when_verifying(tmp_path):
    ds = load_dataset("digits", ".", DataParams())
    save_dataset(ds, tmp_path)
    data_path = tmp_path / "dataset.npz"
    with np.load(data_path) as npz:
        X, y = npz["X"].copy(), npz["y"]
    X[0, 0, 0, 0] = 0.5
    with open(data_path, "wb") as fh:
        np.savez(fh, X=X, y=y)
    with pytest.raises(DataError, match="checksum does not match") as info:
        load_saved_dataset(tmp_path, verify=True)
    assert str(data_path) in str(info.value)
    assert load_saved_dataset(tmp_path).X[0, 0, 0, 0].item() == 0.5


def test_store_missing_files_are_data_errors(tmp_path):
    with pytest.raises(DataError, match="no fetched dataset here; run the fetch stage first"):
        load_saved_dataset(tmp_path)
    with pytest.raises(DataError, match="no prepared splits; run the prepare stage first"):
        load_splits(tmp_path / "splits.npz")


def test_dlpipe_list_in_process(capsys):
    assert cli.main(["list"]) == 0
    out = capsys.readouterr().out
    lines = out.splitlines()
    assert lines[0] == "architectures:"
    assert "datasets:" in lines
    for arch in ARCHITECTURES.values():
        assert any(line.split()[:2] == [arch.name, "/".join(sorted(arch.kinds))] for line in lines), arch.name
    for name, kind in EXPECTED_KINDS.items():
        assert any(line.split()[:2] == [name, kind] for line in lines), name
