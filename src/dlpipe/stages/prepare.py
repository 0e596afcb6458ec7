"""prepare: a stratified holdout test set (or, with data.split: official, the dataset's official test set) and
stratified k-fold indices over the rest (indices only: every model fits its normaliser on exactly the samples it
trains on)."""

from __future__ import annotations

import logging

import numpy as np

from dlpipe.config import Params
from dlpipe.data.splits import Splits, make_splits, stratified_subset
from dlpipe.data.store import SPLITS_FILE, load_saved_dataset, save_splits
from dlpipe.errors import DataError
from dlpipe.io import write_json
from dlpipe.paths import ProjectPaths

log = logging.getLogger(__name__)
SUMMARY_FILE = "summary.json"  # dvc metrics: sizes and class counts of train/test
FOLDS_FILE = "folds.json"  # class counts of every fold


def run(params: Params, paths: ProjectPaths) -> dict:
    ds = load_saved_dataset(paths.raw, verify=True)
    y = ds.y.numpy()
    subset = np.arange(len(y))
    if params.data.limit is not None:
        subset = stratified_subset(y, params.data.limit, params.seed)
        y = y[subset]
    official = None
    if params.data.split == "official":
        if ds.official_test is None:
            raise DataError(f"data.split: the fetched {ds.name} data has no official test set; allowed: random")
        official = ds.official_test.numpy()[subset]
    splits = make_splits(y, params.data.test_size, params.data.folds, params.seed, official)
    summary = summarise(y, splits, ds.class_names, params.data.name)
    summary["split"] = params.data.split
    save_splits(splits, subset, paths.prepared / SPLITS_FILE)
    write_json(paths.prepared / FOLDS_FILE, fold_counts(y, splits, ds.class_names))
    write_json(paths.prepared / SUMMARY_FILE, summary)
    log.info(
        "prepared %s: %d train (%d folds), %d test", ds.name, len(splits.train_idx), splits.folds, len(splits.test_idx)
    )
    return summary


def _counts(y: np.ndarray, idx: np.ndarray, class_names: list[str]) -> dict[str, int]:
    bins = np.bincount(y[idx], minlength=len(class_names))
    return {name: int(n) for name, n in zip(class_names, bins, strict=True)}


def summarise(y: np.ndarray, splits: Splits, class_names: list[str], dataset: str) -> dict:
    return {
        "dataset": dataset,
        "n_samples": len(y),
        "n_train": len(splits.train_idx),
        "n_test": len(splits.test_idx),
        "n_classes": len(class_names),
        "folds": splits.folds,
        "class_counts": {
            "train": _counts(y, splits.train_idx, class_names),
            "test": _counts(y, splits.test_idx, class_names),
        },
    }


def fold_counts(y: np.ndarray, splits: Splits, class_names: list[str]) -> dict[str, dict[str, int]]:
    return {f"fold_{k}": _counts(y, splits.fold_indices(k)[1], class_names) for k in range(splits.folds)}
