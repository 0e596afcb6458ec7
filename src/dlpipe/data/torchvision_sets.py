"""MNIST, Fashion-MNIST and CIFAR-10, parsed from their real formats in a torchvision root folder (data/downloads).

Files a user copied there are used as they are; what is missing is downloaded by torchvision. The layout is
torchvision's: <root>/MNIST/raw/ and <root>/FashionMNIST/raw/ hold the four IDX files (train-images-idx3-ubyte,
train-labels-idx1-ubyte, t10k-images-idx3-ubyte, t10k-labels-idx1-ubyte; or their original .gz files),
<root>/cifar-10-batches-py/ the CIFAR-10 python batches (or <root>/cifar-10-python.tar.gz, the archive). CIFAR-10
batches are pickles: each file's md5 must be the published one before it is unpickled.

The official train and test files are pooled; dlpipe draws its own stratified holdout set from the pool
(`data.test_size`), like every other dataset, or with `data.split: official` holds out the official test set
(`Dataset.official_test` flags it). The images stay 8-bit (X uint8; a model sees X / 255).
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
CIFAR_META = "batches.meta"


def cifar_md5s() -> dict[str, str]:
    """The published md5 of every CIFAR-10 python file, by name (torchvision's list)."""
    from torchvision.datasets import CIFAR10

    published = {name: md5 for name, md5 in CIFAR10.train_list + CIFAR10.test_list}
    published[CIFAR10.meta["filename"]] = CIFAR10.meta["md5"]
    return published


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
    images = torch.cat([p.data for p in parts]).unsqueeze(1)  # uint8: the model's input is X / 255 (Dataset.inputs)
    targets = torch.cat([p.targets for p in parts]).long()
    official_test = torch.arange(len(targets)) >= len(parts[0].targets)
    return Dataset(name, images, targets, "image", list(parts[0].classes), official_test=official_test)


@register_dataset(
    "mnist",
    "image",
    "MNIST handwritten digits, 70k 28x28 (downloads)",
    needs_network=True,
    official_split=True,
    class_counts=(6903, 7877, 6990, 7141, 6824, 6313, 6876, 7293, 6825, 6958),  # train + test, pooled
)
def load_mnist(root: Path, data_params: Any) -> Dataset:
    return _load_idx_dataset("mnist", "MNIST", root)


@register_dataset(
    "fashion_mnist",
    "image",
    "Fashion-MNIST, 70k 28x28 clothing (downloads)",
    needs_network=True,
    official_split=True,
    class_counts=(7000,) * 10,
)
def load_fashion_mnist(root: Path, data_params: Any) -> Dataset:
    return _load_idx_dataset("fashion_mnist", "FashionMNIST", root)


@register_dataset(
    "cifar10",
    "image",
    "CIFAR-10, 60k 32x32 colour images (downloads)",
    needs_network=True,
    official_split=True,
    class_counts=(6000,) * 10,
)
def load_cifar10(root: Path, data_params: Any) -> Dataset:
    from torchvision.datasets import CIFAR10
    from torchvision.datasets.utils import download_and_extract_archive

    folder = root / CIFAR_DIR
    if not all((folder / name).is_file() for name in [*CIFAR_BATCHES, CIFAR_META]):
        verify_cifar_files(folder, present_only=True)  # a file a user copied is refused before the archive is unpacked
        try:
            download_and_extract_archive(CIFAR10.url, str(root), filename=CIFAR10.filename, md5=CIFAR10.tgz_md5)
        except Exception as exc:
            raise DatasetUnavailableError(f"cifar10: could not download from {CIFAR10.url} ({_reason(exc)})") from None
    return read_cifar_batches(folder)


def verify_cifar_files(folder: Path, present_only: bool = False) -> None:
    """Refuse (DataError) a CIFAR-10 file whose md5 is not the published one: the batches are pickles, and unpickling
    runs whatever code a file names. `present_only`: only check the files that exist."""
    from torchvision.datasets.utils import check_md5

    for name, md5 in cifar_md5s().items():
        path = folder / name
        if not path.is_file():
            if present_only:
                continue
            raise DataError(f"{path}: missing; CIFAR-10 needs {', '.join([*CIFAR_BATCHES, CIFAR_META])} here")
        if not check_md5(str(path), md5):
            raise DataError(
                f"{path}: md5 is not the published CIFAR-10 {name} ({md5}), so it is not unpickled; copy the original "
                "file from cifar-10-python.tar.gz, or delete it to download it again"
            )


def read_cifar_batches(folder: Path) -> Dataset:
    """Parse the CIFAR-10 python pickle batches (data: N x 3072 uint8, labels) and batches.meta, each verified
    against its published md5 first."""
    verify_cifar_files(folder)
    xs, ys = [], []
    for batch in CIFAR_BATCHES:
        entry = _unpickle(folder / batch)
        xs.append(np.asarray(entry["data"], dtype=np.uint8).reshape(-1, 3, 32, 32))
        ys.append(np.asarray(entry.get("labels", entry.get("fine_labels")), dtype=np.int64))
    meta = _unpickle(folder / CIFAR_META)
    images = torch.from_numpy(np.concatenate(xs))  # uint8, as the files hold it
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
