"""Dataset files in their published formats, written by tests: MNIST-style IDX files and CIFAR-10 python batches."""

from __future__ import annotations

import pickle
import struct
from pathlib import Path

import numpy as np
from torchvision.datasets import CIFAR10
from torchvision.datasets.utils import calculate_md5

from dlpipe.data.torchvision_sets import CIFAR_DIR

CIFAR_LABELS = ["airplane", "automobile", "bird", "cat", "deer", "dog", "frog", "horse", "ship", "truck"]


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


def publish_md5s(monkeypatch, folder: Path) -> None:
    """Make the md5 of the CIFAR-10 files in `folder` the published ones (torchvision's list)."""
    md5 = {p.name: calculate_md5(str(p)) for p in folder.iterdir()}
    monkeypatch.setattr(CIFAR10, "train_list", [[n, md5[n]] for n, _ in CIFAR10.train_list])
    monkeypatch.setattr(CIFAR10, "test_list", [[n, md5[n]] for n, _ in CIFAR10.test_list])
    monkeypatch.setattr(CIFAR10, "meta", {**CIFAR10.meta, "md5": md5[CIFAR10.meta["filename"]]})
