"""MNIST, Fashion-MNIST (IDX files) and CIFAR-10 (python pickle batches) parsed from tiny generated files.

No test here touches the network: the download functions are replaced by fakes that raise URLError, and a guard
makes any socket connection fail loudly.
"""

from __future__ import annotations

import pickle
import socket
import struct
import urllib.error
from pathlib import Path

import numpy as np
import pytest
import torch
import torchvision.datasets.mnist as tv_mnist
import torchvision.datasets.utils as tv_utils
from torchvision.datasets import CIFAR10, MNIST, FashionMNIST

from dlpipe.config import DataParams
from dlpipe.data import load_dataset
from dlpipe.data.torchvision_sets import CIFAR_DIR
from dlpipe.errors import DataError, DatasetUnavailableError

IDX_SETS = [
    pytest.param("mnist", MNIST, "MNIST", id="mnist"),
    pytest.param("fashion_mnist", FashionMNIST, "FashionMNIST", id="fashion_mnist"),
]
CIFAR_LABELS = ["airplane", "automobile", "bird", "cat", "deer", "dog", "frog", "horse", "ship", "truck"]


@pytest.fixture(autouse=True)
def no_network(monkeypatch):
    def refuse(*args, **kwargs):
        raise AssertionError("a test tried to open a network connection")

    monkeypatch.setattr(socket.socket, "connect", refuse)
    monkeypatch.setattr(socket, "create_connection", refuse)


def write_idx_images(path: Path, images: np.ndarray) -> None:
    n, h, w = images.shape
    path.write_bytes(struct.pack(">IIII", 0x00000803, n, h, w) + images.astype(np.uint8).tobytes())


def write_idx_labels(path: Path, labels: np.ndarray) -> None:
    path.write_bytes(struct.pack(">II", 0x00000801, len(labels)) + labels.astype(np.uint8).tobytes())


def make_idx_files(root: Path, folder: str, n_train: int, n_test: int, seed: int):
    """Uncompressed IDX files where torchvision looks for them: root/<folder>/raw/."""
    rng = np.random.default_rng(seed)
    raw = root / folder / "raw"
    raw.mkdir(parents=True)
    parts = {}
    for prefix, n in (("train", n_train), ("t10k", n_test)):
        images = rng.integers(0, 256, size=(n, 28, 28), dtype=np.uint8)
        images[0, 0, 0], images[0, 27, 27] = 0, 255  # make sure both ends of the range appear
        labels = rng.integers(0, 10, size=n, dtype=np.uint8)
        write_idx_images(raw / f"{prefix}-images-idx3-ubyte", images)
        write_idx_labels(raw / f"{prefix}-labels-idx1-ubyte", labels)
        parts[prefix] = (images, labels)
    return parts


@pytest.mark.parametrize(("name", "tv_class", "folder"), IDX_SETS)
def test_idx_files_parse(tmp_path, name, tv_class, folder):
    parts = make_idx_files(tmp_path, folder, n_train=12, n_test=5, seed=len(name))
    ds = load_dataset(name, tmp_path, DataParams(name=name))
    assert ds.name == name and ds.kind == "image"
    assert ds.X.shape == (17, 1, 28, 28) and ds.input_shape == (1, 28, 28)
    assert ds.X.dtype == torch.float32 and ds.y.dtype == torch.int64
    assert ds.X.min().item() == 0.0 and ds.X.max().item() == 1.0
    # the official train and test files are pooled, train first
    images = np.concatenate([parts["train"][0], parts["t10k"][0]])
    labels = np.concatenate([parts["train"][1], parts["t10k"][1]])
    assert ds.y.tolist() == labels.tolist()
    round_trip = (ds.X[:, 0] * 255).round().to(torch.uint8).numpy()
    assert np.array_equal(round_trip, images)
    assert ds.X[3, 0, 5, 7].item() == pytest.approx(images[3, 5, 7] / 255.0)
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


def write_cifar(root: Path, per_batch: int, seed: int) -> tuple[np.ndarray, np.ndarray]:
    """The CIFAR-10 python layout: 5 data batches + test_batch (data N x 3072 uint8, labels list) + batches.meta."""
    rng = np.random.default_rng(seed)
    folder = root / CIFAR_DIR
    folder.mkdir(parents=True)
    xs, ys = [], []
    for batch in [f"data_batch_{i}" for i in range(1, 6)] + ["test_batch"]:
        data = rng.integers(0, 256, size=(per_batch, 3072), dtype=np.uint8)
        data[0, 0], data[0, 1] = 0, 255  # make sure both ends of the range appear
        labels = rng.integers(0, 10, size=per_batch).tolist()
        with open(folder / batch, "wb") as fh:
            pickle.dump({"batch_label": batch, "data": data, "labels": labels, "filenames": []}, fh)
        xs.append(data)
        ys.extend(labels)
    with open(folder / "batches.meta", "wb") as fh:
        pickle.dump({"label_names": CIFAR_LABELS, "num_cases_per_batch": per_batch, "num_vis": 3072}, fh)
    return np.concatenate(xs), np.array(ys)


def test_cifar_batches_parse(tmp_path):
    data, labels = write_cifar(tmp_path, per_batch=3, seed=1)
    ds = load_dataset("cifar10", tmp_path, DataParams(name="cifar10"))
    assert ds.name == "cifar10" and ds.kind == "image"
    assert ds.X.shape == (18, 3, 32, 32) and ds.input_shape == (3, 32, 32)
    assert ds.X.dtype == torch.float32 and ds.y.dtype == torch.int64
    assert ds.X.min().item() == 0.0 and ds.X.max().item() == 1.0
    assert ds.y.tolist() == labels.tolist()
    assert ds.class_names == CIFAR_LABELS
    round_trip = (ds.X * 255).round().to(torch.uint8).numpy()
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
    (tmp_path / CIFAR_DIR / "data_batch_3").unlink()
    tried = []

    def offline(url, *args, **kwargs):
        tried.append(url)
        raise urllib.error.URLError("offline")

    monkeypatch.setattr(tv_utils, "download_and_extract_archive", offline)
    with pytest.raises(DatasetUnavailableError, match="cifar10: could not download"):
        load_dataset("cifar10", tmp_path, DataParams(name="cifar10"))
    assert tried == [CIFAR10.url]


def test_cifar_corrupt_batch_is_a_data_error(tmp_path):
    write_cifar(tmp_path, per_batch=2, seed=3)
    bad = tmp_path / CIFAR_DIR / "test_batch"
    bad.write_bytes(b"not a pickle")
    with pytest.raises(DataError, match="not a readable CIFAR-10 batch") as info:
        load_dataset("cifar10", tmp_path, DataParams(name="cifar10"))
    assert str(bad) in str(info.value)
