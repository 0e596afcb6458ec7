"""MNIST, Fashion-MNIST and CIFAR-10: downloaded into data/raw by torchvision, parsed from their real formats.

The official train and test files are pooled; dlpipe draws its own stratified holdout set from the pool
(`data.test_size`), like every other dataset, or with `data.split: official` holds out the official test set
(`Dataset.official_test` flags it).
"""

from __future__ import annotations

import pickle
from pathlib import Path
from typing import Any

import numpy as np
import torch

from dlpipe.data.base import Dataset
from dlpipe.data.registry import register_dataset
from dlpipe.errors import DataError, DatasetUnavailableError

CIFAR_DIR = "cifar-10-batches-py"
CIFAR_BATCHES = [f"data_batch_{i}" for i in range(1, 6)] + ["test_batch"]


def _load_idx_dataset(name: str, cls_name: str, root: Path) -> Dataset:
    from torchvision import datasets

    cls = getattr(datasets, cls_name)
    url = cls.mirrors[0] + cls.resources[0][0]
    parts = []
    for train in (True, False):
        try:
            ds = cls(root, train=train, download=False)
        except RuntimeError:  # files absent: download them
            try:
                ds = cls(root, train=train, download=True)
            except Exception as exc:
                raise DatasetUnavailableError(f"{name}: could not download from {url} ({_reason(exc)})") from None
        parts.append(ds)
    images = torch.cat([p.data for p in parts]).unsqueeze(1).float().div_(255.0)
    targets = torch.cat([p.targets for p in parts]).long()
    official_test = torch.arange(len(targets)) >= len(parts[0].targets)
    return Dataset(name, images, targets, "image", list(parts[0].classes), official_test=official_test)


@register_dataset(
    "mnist", "image", "MNIST handwritten digits, 70k 28x28 (downloads)", needs_network=True, official_split=True
)
def load_mnist(root: Path, data_params: Any) -> Dataset:
    return _load_idx_dataset("mnist", "MNIST", root)


@register_dataset(
    "fashion_mnist", "image", "Fashion-MNIST, 70k 28x28 clothing (downloads)", needs_network=True, official_split=True
)
def load_fashion_mnist(root: Path, data_params: Any) -> Dataset:
    return _load_idx_dataset("fashion_mnist", "FashionMNIST", root)


@register_dataset(
    "cifar10", "image", "CIFAR-10, 60k 32x32 colour images (downloads)", needs_network=True, official_split=True
)
def load_cifar10(root: Path, data_params: Any) -> Dataset:
    from torchvision.datasets import CIFAR10
    from torchvision.datasets.utils import download_and_extract_archive

    folder = root / CIFAR_DIR
    if not all((folder / b).is_file() for b in CIFAR_BATCHES):
        try:
            download_and_extract_archive(CIFAR10.url, str(root), filename=CIFAR10.filename, md5=CIFAR10.tgz_md5)
        except Exception as exc:
            raise DatasetUnavailableError(f"cifar10: could not download from {CIFAR10.url} ({_reason(exc)})") from None
    return read_cifar_batches(folder)


def read_cifar_batches(folder: Path) -> Dataset:
    """Parse the CIFAR-10 python pickle batches (data: N x 3072 uint8, labels) and batches.meta."""
    xs, ys = [], []
    for batch in CIFAR_BATCHES:
        entry = _unpickle(folder / batch)
        xs.append(np.asarray(entry["data"], dtype=np.uint8).reshape(-1, 3, 32, 32))
        ys.append(np.asarray(entry.get("labels", entry.get("fine_labels")), dtype=np.int64))
    meta = _unpickle(folder / "batches.meta")
    images = torch.from_numpy(np.concatenate(xs)).float().div_(255.0)
    official_test = torch.arange(len(images)) >= len(images) - len(ys[-1])  # test_batch comes last
    labels = torch.from_numpy(np.concatenate(ys))
    return Dataset("cifar10", images, labels, "image", list(meta["label_names"]), official_test=official_test)


def _unpickle(path: Path) -> dict:
    try:
        with open(path, "rb") as fh:
            return pickle.load(fh, encoding="latin1")
    except (OSError, pickle.UnpicklingError, EOFError) as exc:
        raise DataError(f"{path}: not a readable CIFAR-10 batch ({exc})") from None


def _reason(exc: BaseException) -> str:
    text = str(exc).strip().splitlines()
    return text[0] if text else type(exc).__name__
