"""The MLflow pyfunc of a dlpipe classifier, logged as code: MLflow copies this file into the model.

Self-contained on purpose (torch, numpy, pandas and mlflow only; no dlpipe import), so a logged model loads and
serves wherever those are installed. Its artifacts:
- `program`: a `torch.export` program (`model.pt2`) that maps raw inputs (float32, the dataset's X shape, e.g.
  N x C x H x W images in [0, 1] or N x F features) to class probabilities; the training normaliser is inside it.
- `meta`: JSON with `class_names`, `input_shape` and, for tabular models, `feature_names` (the training columns)
  and `categories` (each categorical column's vocabulary: the program takes code i + 1 for vocabulary[i], 0 for
  anything else).

`predict` returns a DataFrame: `prediction` (the class name under the model's decision rule from `meta`: argmax,
or a threshold on one class's probability) and `prob_<class>` per class name. Inputs may be any array-like of
shape (N, *input_shape), or flattened to (N, prod(input_shape)) (a CSV row of pixels, a DataFrame). A model with
feature names takes a DataFrame's columns by name, in any order (extra columns are ignored, as MLflow's schema
enforcement does; a missing one is an error); only unnamed columns (0..F-1) are taken by position. Categorical
columns take the raw text; a category outside the vocabulary (or a missing value) is the unknown code 0.
"""

from __future__ import annotations

import json
import math

import mlflow
import numpy as np
import pandas as pd
import torch
from mlflow.pyfunc import PythonModel

BATCH = 4096


class DlpipeClassifier(PythonModel):
    # The signature is given explicitly (a tensor or named columns in, one column per class out): no type-hint
    # validation wanted, and no warning that `predict` lacks type hints.
    _skip_type_hint_validation = True

    def load_context(self, context) -> None:
        with open(context.artifacts["meta"]) as fh:
            meta = json.load(fh)
        self.class_names = [str(c) for c in meta["class_names"]]
        self.input_shape = tuple(int(d) for d in meta["input_shape"])
        names = meta.get("feature_names")
        self.feature_names = None if names is None else [str(n) for n in names]
        categories = meta.get("categories") or {}
        self.codes = {str(name): {str(v): i + 1 for i, v in enumerate(vocab)} for name, vocab in categories.items()}
        decision = meta.get("decision") or {}
        self.threshold = decision.get("threshold")
        self.positive = self.class_names.index(str(decision["positive_class"])) if self.threshold is not None else None
        self.program = torch.export.load(context.artifacts["program"]).module()

    def _as_array(self, model_input) -> np.ndarray:
        if isinstance(model_input, dict):  # a named-tensor request: take its only tensor
            if len(model_input) != 1:
                raise ValueError(f"expected one input tensor, got {sorted(model_input)}")
            model_input = next(iter(model_input.values()))
        if self.codes and not isinstance(model_input, pd.DataFrame) and np.asarray(model_input).dtype == object:
            model_input = pd.DataFrame(np.asarray(model_input).reshape(len(model_input), -1))  # text by position
        if isinstance(model_input, pd.DataFrame):
            model_input = self._encode(self._by_name(model_input))
        x = np.asarray(model_input, dtype=np.float32)
        size = math.prod(self.input_shape)
        if x.shape[1:] != self.input_shape:
            if x.ndim >= 1 and x.size % size == 0 and math.prod(x.shape[1:]) == size:
                x = x.reshape((len(x), *self.input_shape))
            else:
                dims = ", ".join(map(str, self.input_shape))
                raise ValueError(f"input shape {tuple(x.shape)} does not match the model's (N, {dims}) or (N, {size})")
        return np.ascontiguousarray(x)

    def _by_name(self, frame: pd.DataFrame) -> pd.DataFrame:
        """The model's feature columns, in training order; unnamed (0..n-1) columns are left as they are."""
        if self.feature_names is None or list(frame.columns) == list(range(frame.shape[1])):
            return frame
        columns = {str(c): c for c in frame.columns}
        missing = [n for n in self.feature_names if n not in columns]
        if missing:
            raise ValueError(
                f"input is missing feature column(s) {', '.join(missing)}; the model takes "
                f"{len(self.feature_names)} named columns (any order): {', '.join(self.feature_names)}"
            )
        return frame[[columns[n] for n in self.feature_names]]

    def _encode(self, frame: pd.DataFrame) -> np.ndarray:
        """The feature columns as float32, categorical text mapped to its codes (unknown: 0)."""
        if not self.codes or frame.shape[1] != len(self.feature_names):
            return frame.to_numpy()  # (a wrong column count is refused by the shape check)
        out = np.empty(frame.shape, dtype=np.float32)
        for j, name in enumerate(self.feature_names):
            column = frame.iloc[:, j]
            if name in self.codes:
                index = self.codes[name]
                out[:, j] = [index.get(_text(v), 0) for v in column]
            else:
                out[:, j] = column.to_numpy(dtype=np.float32)
        return out

    def predict(self, context, model_input, params=None) -> pd.DataFrame:
        x = torch.from_numpy(self._as_array(model_input))
        with torch.no_grad():
            parts = [self.program(x[i : i + BATCH]) for i in range(0, len(x), BATCH)]
        probs = torch.cat(parts).numpy() if parts else np.empty((0, len(self.class_names)), dtype=np.float32)
        if self.threshold is None:
            chosen = probs.argmax(axis=1)
        else:  # binary: the positive class when its probability reaches the threshold
            chosen = np.where(probs[:, self.positive] >= self.threshold, self.positive, 1 - self.positive)
        out = pd.DataFrame({"prediction": np.asarray(self.class_names, dtype=object)[chosen]})
        for i, name in enumerate(self.class_names):
            out[f"prob_{name}"] = probs[:, i]
        return out


def _text(value) -> str | None:
    """A cell as the vocabulary holds it: text as it is; numbers (JSON, pandas) as text; missing as None."""
    if value is None or isinstance(value, str):
        return value
    if isinstance(value, float) and math.isnan(value):
        return None
    return str(value)


mlflow.models.set_model(DlpipeClassifier())
