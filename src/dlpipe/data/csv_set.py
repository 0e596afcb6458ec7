"""A user's CSV file: feature columns (numbers, or categories) plus one target column (numbers or text labels).

A feature column is categorical when it holds text (anything pandas does not read as numbers) or is listed in
`data.csv.categorical` (integer-coded categories such as zip codes). Categorical columns are read as text; their
sorted distinct values are the column's vocabulary (stored in dataset.json) and X holds codes 1..V for them, with 0
reserved for categories the data never showed (see `data.base.Features`). Models see only the categories of the
training part (`data.prepared.training_vocabularies`): this file's vocabulary describes the CSV, not what a model
learned.

With `data.csv.text_column` the CSV is text data: that column (free text) is the input, tokenized per training part
(`data.text`), and the target the label; the other columns are not read by the models (`log` says which).
"""

from __future__ import annotations

import logging
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
import torch

from dlpipe.data.base import Dataset, TextColumn
from dlpipe.data.registry import register_dataset
from dlpipe.errors import DataError

log = logging.getLogger(__name__)


@register_dataset(
    "csv",
    "tabular",
    "your CSV file: data.csv.path, target column data.csv.target; text data with data.csv.text_column",
)
def load_csv_dataset(root: Path, data_params: Any) -> Dataset:
    csv = data_params.csv
    if not csv.path:
        raise DataError("data.csv.path: required when data.name is 'csv'")
    return read_csv_dataset(Path(csv.path), csv.target, csv.categorical, csv.text_column, csv.max_tokens, csv.vocab_size)


def _read(path: Path, **kwargs: Any) -> pd.DataFrame:
    try:
        return pd.read_csv(path, **kwargs)
    except (pd.errors.ParserError, pd.errors.EmptyDataError, UnicodeDecodeError) as exc:
        reason = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
        raise DataError(f"{path}: not a readable CSV file ({reason})") from None


def read_csv_dataset(
    path: Path,
    target: str,
    categorical: Sequence[str] = (),
    text_column: str | None = None,
    max_tokens: int = 64,
    vocab_size: int = 2000,
) -> Dataset:
    """Parse a CSV into a tabular Dataset (or, with `text_column`, a text one); every problem is a DataError naming
    the file and column."""
    if not path.is_file():
        raise DataError(f"data.csv.path: no such file {str(path)!r}")
    with open(path, "rb") as fh:
        if b"\0" in fh.read(1 << 16):  # pandas would read a binary file's bytes as column names
            raise DataError(f"{path}: not a readable CSV file (binary content: NUL bytes)")
    columns = [str(c) for c in _read(path, nrows=0).columns]
    if target not in columns:
        raise DataError(f"{path}: target column {target!r} (data.csv.target) not found; columns: {', '.join(columns)}")
    listed = list(dict.fromkeys(str(c) for c in categorical))
    absent = [c for c in listed if c not in columns]
    if absent:
        raise DataError(
            f"data.csv.categorical: no column(s) {', '.join(absent)} in {path}; columns: {', '.join(columns)}"
        )
    if target in listed:
        raise DataError(f"data.csv.categorical: {target!r} is the target column (data.csv.target), not a feature")
    if text_column is not None:
        if text_column not in columns:
            raise DataError(
                f"data.csv.text_column: no column {text_column!r} in {path}; columns: {', '.join(columns)}"
            )
        if text_column == target:
            raise DataError(f"data.csv.text_column: {target!r} is the target column (data.csv.target), not a text")
        return _text_dataset(path, target, text_column, max_tokens, vocab_size, columns)
    frame = _read(path, dtype={c: str for c in listed})
    missing = frame.isna().sum()
    missing = missing[missing > 0]
    if len(missing):
        detail = ", ".join(f"{col} ({n})" for col, n in missing.items())
        raise DataError(f"{path}: missing values in column(s) {detail}; fill or drop them first")
    features = frame.drop(columns=[target])
    if features.shape[1] == 0:
        raise DataError(f"{path}: no feature columns besides the target {target!r}")
    features.columns = [str(c) for c in features.columns]
    coded = [c for c in features.columns if c in listed or not pd.api.types.is_numeric_dtype(features[c])]
    vocabularies = {}
    for name in coded:
        text = features[name].astype(str)
        vocab = sorted(text.unique())
        index = {v: i + 1 for i, v in enumerate(vocab)}
        features[name] = text.map(index).astype(np.float64)
        vocabularies[name] = vocab
    if vocabularies:
        shown = ", ".join(f"{n} ({len(v)} categories)" for n, v in vocabularies.items())
        log.info("%s: categorical column(s) %s", path, shown)
    y, class_names = _labels(path, frame[target], target)
    X = torch.from_numpy(features.to_numpy(np.float32, copy=True))
    names = list(features.columns)
    return Dataset("csv", X, y, "tabular", class_names, feature_names=names, categories=vocabularies or None)


def _labels(path: Path, labels: pd.Series, target: str) -> tuple[torch.Tensor, list[str]]:
    classes = sorted(labels.unique(), key=lambda v: (str(type(v)), v))
    if len(classes) < 2:
        raise DataError(f"{path}: target column {target!r} has {len(classes)} class; at least 2 are needed")
    index = {c: i for i, c in enumerate(classes)}
    y = torch.from_numpy(labels.map(index).to_numpy(np.int64, copy=True))  # writable (pandas copy-on-write)
    return y, [str(c) for c in classes]


def _text_dataset(
    path: Path, target: str, text_column: str, max_tokens: int, vocab_size: int, columns: list[str]
) -> Dataset:
    """The text column (read as text; an empty cell is an empty text) and the labels."""
    frame = _read(path, usecols=[target, text_column], dtype={text_column: str}, keep_default_na=False)
    labels = _read(path, usecols=[target])[target]  # numbers stay numbers, as for tabular data
    if labels.isna().any():
        raise DataError(f"{path}: missing values in column(s) {target} ({int(labels.isna().sum())}); fill or drop them")
    others = [c for c in columns if c not in (target, text_column)]
    if others:
        log.info("%s: text data: column(s) %s not read (data.csv.text_column is the input)", path, ", ".join(others))
    y, class_names = _labels(path, labels, target)
    texts = tuple(str(t) for t in frame[text_column])
    text = TextColumn(text_column, texts, max_tokens, vocab_size)
    X = torch.zeros((len(y), 0), dtype=torch.float32)
    return Dataset("csv", X, y, "text", class_names, text=text)
