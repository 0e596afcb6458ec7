"""MNIST, Fashion-MNIST (IDX files) and CIFAR-10 (python pickle batches) parsed from tiny generated files.

No test here touches the network: the download functions are replaced by fakes that raise URLError, and a guard
makes any socket connection fail loudly. CIFAR-10 files are unpickled only when their md5 is the published one: the
tests publish the md5 of the files they write (torchvision's list, patched), as the real files' md5 are published.
"""

from __future__ import annotations

import pickle
import socket
import urllib.error
from pathlib import Path

import numpy as np
import pytest
import torch
import torchvision.datasets.mnist as tv_mnist
import torchvision.datasets.utils as tv_utils
from helpers.dataset_files import CIFAR_LABELS, make_idx_files, publish_md5s, write_cifar
from torchvision.datasets import CIFAR10, MNIST, FashionMNIST

from dlpipe.config import DataParams
from dlpipe.data import load_dataset
from dlpipe.data.torchvision_sets import CIFAR_DIR
from dlpipe.errors import DataError, DatasetUnavailableError

IDX_SETS = [
    pytest.param("mnist", MNIST, "MNIST", id="mnist"),
    pytest.param("fashion_mnist", FashionMNIST, "FashionMNIST", id="fashion_mnist"),
]


@pytest.fixture(autouse=True)
def no_network(monkeypatch):
    def refuse(*args, **kwargs):
        raise AssertionError("a test tried to open a network connection")

    monkeypatch.setattr(socket.socket, "connect", refuse)
    monkeypatch.setattr(socket, "create_connection", refuse)


@pytest.mark.parametrize(("name", "tv_class", "folder"), IDX_SETS)
def test_idx_files_parse(tmp_path, name, tv_class, folder):
    parts = make_idx_files(tmp_path, folder, n_train=12, n_test=5, seed=len(name))
    ds = load_dataset(name, tmp_path, DataParams(name=name))
    assert ds.name == name and ds.kind == "image"
    assert ds.X.shape == (17, 1, 28, 28) and ds.input_shape == (1, 28, 28)
    assert ds.X.dtype == torch.uint8 and ds.y.dtype == torch.int64  # the 8-bit pixels, as the files hold them
    inputs = ds.inputs()
    assert inputs.dtype == torch.float32 and inputs.min().item() == 0.0 and inputs.max().item() == 1.0
    # the official train and test files are pooled, train first
    images = np.concatenate([parts["train"][0], parts["t10k"][0]])
    labels = np.concatenate([parts["train"][1], parts["t10k"][1]])
    assert ds.y.tolist() == labels.tolist()
    assert np.array_equal(ds.X[:, 0].numpy(), images)
    assert inputs[3, 0, 5, 7].item() == pytest.approx(images[3, 5, 7] / 255.0)
    assert ds.class_names == list(tv_class.classes) and len(ds.class_names) == 10


@pytest.mark.parametrize(("name", "tv_class", "folder"), IDX_SETS)
def test_idx_without_files_or_network_is_unavailable(tmp_path, monkeypatch, name, tv_class, folder):
    tried = []

    def offline(url, *args, **kwargs):
        tried.append(url)
        raise urllib.error.URLError("offline")

    monkeypatch.setattr(tv_mnist, "download_and_extract_archive", offline)
    with pytest.raises(DatasetUnavailableError) as info:
        load_dataset(name, tmp_path, DataParams(name=name))
    message = str(info.value)
    url = tv_class.mirrors[0] + tv_class.resources[0][0]
    assert message.startswith(f"{name}: could not download from {url} (")
    assert "\n" not in message
    assert tried and tried[0] == url  # the download was attempted (through the fake) and failed
    assert DatasetUnavailableError.exit_code == 1  # a failure, not bad input


class Touch:
    """Unpickling this creates `path`: what a hostile pickle could do instead."""

    def __init__(self, path: Path):
        self.path = path

    def __reduce__(self):
        return (Path.touch, (self.path,))


def test_cifar_batches_parse(tmp_path, monkeypatch):
    data, labels = write_cifar(tmp_path, per_batch=3, seed=1)
    publish_md5s(monkeypatch, tmp_path / CIFAR_DIR)
    ds = load_dataset("cifar10", tmp_path, DataParams(name="cifar10"))
    assert ds.name == "cifar10" and ds.kind == "image"
    assert ds.X.shape == (18, 3, 32, 32) and ds.input_shape == (3, 32, 32)
    assert ds.X.dtype == torch.uint8 and ds.y.dtype == torch.int64
    assert ds.inputs().min().item() == 0.0 and ds.inputs().max().item() == 1.0
    assert ds.y.tolist() == labels.tolist()
    assert ds.class_names == CIFAR_LABELS
    round_trip = ds.X.numpy()
    assert np.array_equal(round_trip.reshape(18, 3072), data)
    # row layout: 1024 red, then 1024 green, then 1024 blue values, each 32 x 32 row-major
    i, h, w = 7, 4, 29
    for c in range(3):
        assert round_trip[i, c, h, w] == data[i, c * 1024 + h * 32 + w]


def test_cifar_without_files_or_network_is_unavailable(tmp_path, monkeypatch):
    tried = []

    def offline(url, *args, **kwargs):
        tried.append(url)
        raise urllib.error.URLError("offline")

    # load_cifar10 imports download_and_extract_archive from torchvision.datasets.utils when it is called
    monkeypatch.setattr(tv_utils, "download_and_extract_archive", offline)
    with pytest.raises(DatasetUnavailableError) as info:
        load_dataset("cifar10", tmp_path, DataParams(name="cifar10"))
    message = str(info.value)
    assert message.startswith(f"cifar10: could not download from {CIFAR10.url} (")
    assert "offline" in message
    assert tried == [CIFAR10.url]


def test_cifar_with_a_batch_missing_downloads_again(tmp_path, monkeypatch):
    write_cifar(tmp_path, per_batch=2, seed=2)
    publish_md5s(monkeypatch, tmp_path / CIFAR_DIR)
    (tmp_path / CIFAR_DIR / "data_batch_3").unlink()
    tried = []

    def offline(url, *args, **kwargs):
        tried.append(url)
        raise urllib.error.URLError("offline")

    monkeypatch.setattr(tv_utils, "download_and_extract_archive", offline)
    with pytest.raises(DatasetUnavailableError, match="cifar10: could not download"):
        load_dataset("cifar10", tmp_path, DataParams(name="cifar10"))
    assert tried == [CIFAR10.url]


def test_cifar_corrupt_batch_is_a_data_error(tmp_path, monkeypatch):
    write_cifar(tmp_path, per_batch=2, seed=3)
    publish_md5s(monkeypatch, tmp_path / CIFAR_DIR)
    bad = tmp_path / CIFAR_DIR / "test_batch"
    bad.write_bytes(b"not a pickle")
    with pytest.raises(DataError, match="md5 is not the published CIFAR-10 test_batch") as info:
        load_dataset("cifar10", tmp_path, DataParams(name="cifar10"))
    assert str(info.value).startswith(f"{bad}: ") and "\n" not in str(info.value)
    assert bad.read_bytes() == b"not a pickle"  # the user's file is kept


@pytest.mark.parametrize("name", ["data_batch_2", "test_batch", "batches.meta"])
def test_a_cifar_file_with_another_md5_is_never_unpickled(tmp_path, monkeypatch, name):
    """A user-copied pickle that is not the published file is refused before it is unpickled, also when other files
    are missing (no download overwrites it first)."""
    folder = tmp_path / CIFAR_DIR
    write_cifar(tmp_path, per_batch=2, seed=4)
    publish_md5s(monkeypatch, folder)
    marker = tmp_path / "unpickled"
    with open(folder / name, "wb") as fh:
        pickle.dump({"data": Touch(marker), "labels": [0], "label_names": Touch(marker)}, fh)
    hostile = (folder / name).read_bytes()
    pickle.loads(hostile)  # the file does what it says when unpickled ...
    assert marker.is_file()
    marker.unlink()

    tried = []
    monkeypatch.setattr(tv_utils, "download_and_extract_archive", lambda url, *a, **k: tried.append(url))
    for missing in ([], ["data_batch_1"] if name != "data_batch_1" else ["data_batch_3"]):
        for other in missing:
            (folder / other).unlink()
        with pytest.raises(DataError) as info:
            load_dataset("cifar10", tmp_path, DataParams(name="cifar10"))
        assert str(info.value).startswith(f"{folder / name}: md5 is not the published CIFAR-10 {name} (")
        assert not marker.exists()  # ... and dlpipe never unpickled it
        assert (folder / name).read_bytes() == hostile and tried == []
    assert DataError.exit_code == 2
