"""On-disk form of fetched datasets and prepared splits (NumPy .npz plus JSON metadata; no pickles).

dataset.json: name, kind, input_shape, class_names, n_samples, sha256 (of dataset.npz) and, for tabular data,
feature_names (X's column names in order) and, when some are categorical, `categories` (column name -> vocabulary;
X holds code i + 1 for vocabulary[i], 0 for unknown), and `official_test` (the size of the official test set, whose
flags dataset.npz holds) for data that comes with one; for text data, `text` (the column, max_tokens, vocab_size;
dataset.npz holds the strings as `texts`). Files written before feature_names existed still load.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import torch

from dlpipe.data.base import Dataset, Features, TextColumn
from dlpipe.data.splits import Splits
from dlpipe.errors import DataError
from dlpipe.io import atomic_path, read_json, sha256_file, write_json

DATASET_FILE = "dataset.npz"
DATASET_META = "dataset.json"
SPLITS_FILE = "splits.npz"


def save_dataset(ds: Dataset, folder: Path) -> dict:
    """Write `ds` to folder/dataset.npz and its metadata (with the file's sha256) to dataset.json."""
    data_path = folder / DATASET_FILE
    arrays = {"X": ds.X.numpy(), "y": ds.y.numpy()}
    if ds.official_test is not None:
        arrays["official_test"] = ds.official_test.numpy()
    if ds.text is not None:
        arrays["texts"] = np.asarray(ds.text.texts, dtype=str)  # fixed-width unicode: no pickle
    with atomic_path(data_path) as tmp, open(tmp, "wb") as fh:
        np.savez(fh, **arrays)
    meta = {
        "name": ds.name,
        "kind": ds.kind,
        "input_shape": list(ds.input_shape),
        "class_names": ds.class_names,
        "n_samples": len(ds),
        "sha256": sha256_file(data_path),
    }
    if ds.feature_names is not None:
        meta["feature_names"] = list(ds.feature_names)
    if ds.categories:
        meta["categories"] = {name: list(vocab) for name, vocab in ds.categories.items()}
    if ds.official_test is not None:
        meta["official_test"] = int(ds.official_test.sum())
    if ds.text is not None:
        meta["text"] = {"column": ds.text.column, "max_tokens": ds.text.max_tokens, "vocab_size": ds.text.vocab_size}
    write_json(folder / DATASET_META, meta)
    return meta


def load_saved_dataset(folder: Path, verify: bool = False) -> Dataset:
    data_path, meta_path = folder / DATASET_FILE, folder / DATASET_META
    if not data_path.is_file() or not meta_path.is_file():
        raise DataError(f"{folder}: no fetched dataset here; run the fetch stage first (dvc repro fetch)")
    meta = read_json(meta_path)
    if verify and sha256_file(data_path) != meta["sha256"]:
        raise DataError(f"{data_path}: checksum does not match {meta_path}; run the fetch stage again")
    with np.load(data_path) as npz:
        X, y = torch.from_numpy(npz["X"]), torch.from_numpy(npz["y"])
        official = torch.from_numpy(npz["official_test"]) if "official_test" in npz.files else None
        texts = tuple(str(t) for t in npz["texts"]) if "texts" in npz.files else None
    names, categories = meta.get("feature_names"), meta.get("categories")
    text = None if texts is None else TextColumn(texts=texts, **meta["text"])
    return Dataset(meta["name"], X, y, meta["kind"], list(meta["class_names"]), names, categories, official, text)


def dataset_digest(folder: Path) -> str:
    """The recorded sha256 of the fetched dataset (for MLflow tags)."""
    return read_json(folder / DATASET_META)["sha256"]


def dataset_feature_names(folder: Path) -> list[str] | None:
    """The fetched tabular dataset's feature column names, in X's order (None: images, or an older dataset.json)."""
    names = read_json(folder / DATASET_META).get("feature_names")
    return None if names is None else [str(n) for n in names]


def dataset_features(folder: Path) -> Features | None:
    """The fetched tabular dataset's columns with their categorical vocabularies (None: images, or older data)."""
    meta = read_json(folder / DATASET_META)
    names = meta.get("feature_names")
    return None if names is None else Features(tuple(names), meta.get("categories") or {})


def save_splits(splits: Splits, subset: np.ndarray, path: Path) -> None:
    """The indices only: normalisation statistics are fitted by whoever trains, on what it trains on."""
    with atomic_path(path) as tmp, open(tmp, "wb") as fh:
        np.savez(fh, subset=subset, train_idx=splits.train_idx, test_idx=splits.test_idx, fold=splits.fold)


def load_splits(path: Path) -> tuple[Splits, np.ndarray]:
    """(splits, subset): `subset` indexes the fetched dataset (data.limit), the splits index that subset."""
    if not path.is_file():
        raise DataError(f"{path}: no prepared splits; run the prepare stage first (dvc repro prepare)")
    with np.load(path) as npz:
        fold = npz["fold"]
        splits = Splits(npz["train_idx"], npz["test_idx"], fold, int(fold.max()) + 1)
        return splits, npz["subset"]
