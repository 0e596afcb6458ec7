"""A user's CSV file: numeric feature columns plus one target column (numbers or text labels)."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
import torch

from dlpipe.data.base import Dataset
from dlpipe.data.registry import register_dataset
from dlpipe.errors import DataError


@register_dataset("csv", "tabular", "your CSV file: data.csv.path, target column data.csv.target")
def load_csv_dataset(root: Path, data_params: Any) -> Dataset:
    csv = data_params.csv
    if not csv.path:
        raise DataError("data.csv.path: required when data.name is 'csv'")
    return read_csv_dataset(Path(csv.path), csv.target)


def read_csv_dataset(path: Path, target: str) -> Dataset:
    """Parse a CSV into a tabular Dataset; every problem is a DataError naming the file and column."""
    if not path.is_file():
        raise DataError(f"data.csv.path: no such file {str(path)!r}")
    try:
        frame = pd.read_csv(path)
    except (pd.errors.ParserError, pd.errors.EmptyDataError, UnicodeDecodeError) as exc:
        raise DataError(f"{path}: not a readable CSV file ({exc})") from None
    if target not in frame.columns:
        raise DataError(
            f"{path}: target column {target!r} (data.csv.target) not found; "
            f"columns: {', '.join(map(str, frame.columns))}"
        )
    missing = frame.isna().sum()
    missing = missing[missing > 0]
    if len(missing):
        detail = ", ".join(f"{col} ({n})" for col, n in missing.items())
        raise DataError(f"{path}: missing values in column(s) {detail}; fill or drop them first")
    features = frame.drop(columns=[target])
    if features.shape[1] == 0:
        raise DataError(f"{path}: no feature columns besides the target {target!r}")
    non_numeric = [str(c) for c in features.columns if not pd.api.types.is_numeric_dtype(features[c])]
    if non_numeric:
        raise DataError(f"{path}: non-numeric feature column(s) {', '.join(non_numeric)}; encode them as numbers")
    labels = frame[target]
    classes = sorted(labels.unique(), key=lambda v: (str(type(v)), v))
    if len(classes) < 2:
        raise DataError(f"{path}: target column {target!r} has {len(classes)} class; at least 2 are needed")
    index = {c: i for i, c in enumerate(classes)}
    y = torch.from_numpy(labels.map(index).to_numpy(np.int64, copy=True))  # writable (pandas copy-on-write)
    X = torch.from_numpy(features.to_numpy(np.float32, copy=True))
    names = [str(c) for c in features.columns]
    return Dataset("csv", X, y, "tabular", [str(c) for c in classes], feature_names=names)
