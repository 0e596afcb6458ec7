"""The MLflow pyfunc of a dlpipe classifier, logged as code: MLflow copies this file into the model.

Self-contained on purpose (torch, numpy, pandas and mlflow only; no dlpipe import), so a logged model loads and
serves wherever those are installed. Its artifacts:
- `program`: a `torch.export` program (`model.pt2`) that maps raw inputs (float32, the dataset's X shape, e.g.
  N x C x H x W images in [0, 1] or N x F features) to class probabilities; the training normaliser is inside it.
- `meta`: JSON with `class_names`, `input_shape` and, for tabular models, `feature_names` (the training columns)
  and `categories` (each categorical column's vocabulary: the program takes code i + 1 for vocabulary[i], 0 for
  anything else).

`predict` returns a DataFrame: `prediction` (the class name under the model's decision rule from `meta`: argmax,
or a threshold on one class's probability), `prob_<class>` per class name and, for a model with categorical columns,
`unknown_categories`: the columns whose value in that row is outside the model's vocabulary (";"-separated, "" when
none). Inputs may be any array-like of
shape (N, *input_shape), or flattened to (N, prod(input_shape)) (a CSV row of pixels, a DataFrame). A model with
feature names takes a DataFrame's columns by name, in any order (extra columns are ignored, as MLflow's schema
enforcement does; a missing one is an error); only unnamed columns (0..F-1) are taken by position. Categorical
columns take the raw text; a category outside the vocabulary (or a missing value) is the unknown code 0.
A text model (`meta["text"]`: the column, the tokenizer's JSON, max_tokens) takes that one column of raw text (a
DataFrame, or an array of strings) and tokenizes it as training did (Hugging Face `tokenizers`, imported only for
text models): token ids, cut at max_tokens, NaN after each text's last token, an empty text one `[UNK]`.
Bad input (a NaN or infinite number, a wrong shape, a missing column) raises `InputError`: served, an HTTP 400 whose
message leads with what is wrong (the scoring server's echo of the request is cut short).
"""

from __future__ import annotations

import json
import math
import sys

import mlflow
import numpy as np
import pandas as pd
import torch
from mlflow.exceptions import MlflowException
from mlflow.protos.databricks_pb2 import INVALID_PARAMETER_VALUE
from mlflow.pyfunc import PythonModel

BATCH = 4096
UNKNOWN = "unknown_categories"  # output column (model_logging.UNKNOWN): the row's columns with an unseen category
ECHO = 120  # characters of the scoring server's echo of the request kept after the message
SHOWN = 10  # rows or columns named in one message


class InputError(MlflowException):
    """Input the model cannot take (HTTP 400 when served). The scoring server rewrites an error's message as
    "Failed to predict data '<the whole request>'. Error: <message>"; this one keeps its own line first and the echo
    short."""

    def __init__(self, message: str):
        self._line = None
        super().__init__(message, error_code=INVALID_PARAMETER_VALUE)

    @property
    def message(self) -> str:
        return self._message

    @message.setter
    def message(self, value: str) -> None:
        if self._line is None:
            self._line = self._message = value
        elif value != self._message:
            echo = " ".join(value.replace(self._line, "").split())
            self._message = f"{self._line} [{echo[:ECHO]}{'...' if len(echo) > ECHO else ''}]"


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
        self.text = meta.get("text")
        self.tokenizer = None
        if self.text is not None:
            from tokenizers import Tokenizer

            self.tokenizer = Tokenizer.from_str(self.text["tokenizer"])
        self.program = torch.export.load(context.artifacts["program"]).module()
        if "mlflow.pyfunc.scoring_server" in sys.modules:  # `mlflow models serve`: a process of this model's own
            _short_echoes()

    def _as_array(self, model_input) -> tuple[np.ndarray, list[str] | None]:
        if isinstance(model_input, dict):  # a named-tensor request: take its only tensor
            if len(model_input) != 1:
                raise InputError(f"expected one input tensor, got {sorted(model_input)}")
            model_input = next(iter(model_input.values()))
        if self.tokenizer is not None:
            return self._tokens(model_input), None
        if self.codes and not isinstance(model_input, pd.DataFrame) and np.asarray(model_input).dtype == object:
            model_input = pd.DataFrame(np.asarray(model_input).reshape(len(model_input), -1))  # text by position
        unknown = None
        if isinstance(model_input, pd.DataFrame):
            model_input, unknown = self._encode(self._by_name(model_input))
        try:
            x = np.asarray(model_input, dtype=np.float32)
        except (TypeError, ValueError) as exc:
            raise InputError(f"input is not numbers: {' '.join(str(exc).split())[:200]}") from None
        size = math.prod(self.input_shape)
        if x.shape[1:] != self.input_shape:
            if x.ndim >= 1 and x.size % size == 0 and math.prod(x.shape[1:]) == size:
                x = x.reshape((len(x), *self.input_shape))
            else:
                dims = ", ".join(map(str, self.input_shape))
                raise InputError(f"input shape {tuple(x.shape)} does not match the model's (N, {dims}) or (N, {size})")
        self._check_finite(x)
        return np.ascontiguousarray(x), unknown

    def _tokens(self, model_input) -> np.ndarray:
        """Raw text (the model's text column of a DataFrame, or one string per row) as token ids (N x 1 x max)."""
        if isinstance(model_input, pd.DataFrame):
            column = self.text["column"]
            if column not in {str(c) for c in model_input.columns}:
                raise InputError(f"input is missing the text column {column}; the model takes raw text in it")
            model_input = model_input[next(c for c in model_input.columns if str(c) == column)]
        texts = np.asarray(model_input, dtype=object).reshape(-1)
        longest = self.text["max_tokens"]
        out = np.full((len(texts), 1, longest), np.nan, dtype=np.float32)
        unk = self.tokenizer.token_to_id("[UNK]")
        strings = ["" if _text(t) is None else _text(t) for t in texts]  # a missing value: an empty text
        for i, encoding in enumerate(self.tokenizer.encode_batch(strings)):
            ids = encoding.ids[:longest] or [unk]  # as dlpipe.data.text.encode_ids
            out[i, 0, : len(ids)] = ids
        return out

    def _check_finite(self, x: np.ndarray) -> None:
        """InputError naming the rows (and, for named columns, the columns) that hold a NaN or an infinity. Series
        (channels x length) may end in NaN steps: that is their padding, never a value inside a series."""
        bad = ~np.isfinite(x.reshape(len(x), -1))
        if len(self.input_shape) == 2:
            step_is_nan = np.isnan(x).all(axis=1)  # (N, length)
            padding = np.flip(np.logical_and.accumulate(np.flip(step_is_nan, axis=1), axis=1), axis=1)
            bad = (~np.isfinite(x) & ~padding[:, None, :]).reshape(len(x), -1)
        if not bad.any():
            return
        rows = np.flatnonzero(bad.any(axis=1))
        where = f"row(s) {_listed(rows.tolist())}"
        if self.feature_names is not None and bad.shape[1] == len(self.feature_names):
            where += f", column(s) {_listed([self.feature_names[j] for j in np.flatnonzero(bad.any(axis=0))])}"
        raise InputError(
            f"input holds {int(bad.sum())} NaN or infinite value(s) ({where}); the model takes finite numbers only"
        )

    def _by_name(self, frame: pd.DataFrame) -> pd.DataFrame:
        """The model's feature columns, in training order; unnamed (0..n-1) columns are left as they are."""
        if self.feature_names is None or list(frame.columns) == list(range(frame.shape[1])):
            return frame
        columns = {str(c): c for c in frame.columns}
        missing = [n for n in self.feature_names if n not in columns]
        if missing:
            raise InputError(
                f"input is missing feature column(s) {', '.join(missing)}; the model takes "
                f"{len(self.feature_names)} named columns (any order): {', '.join(self.feature_names)}"
            )
        return frame[[columns[n] for n in self.feature_names]]

    def _encode(self, frame: pd.DataFrame) -> tuple[np.ndarray, list[str] | None]:
        """The feature columns as float32, categorical text mapped to its codes (unknown: 0); with them, per row,
        the columns whose category the model never saw (None: the model has no categorical columns)."""
        if not self.codes or frame.shape[1] != len(self.feature_names):
            return frame.to_numpy(), None  # (a wrong column count is refused by the shape check)
        out = np.empty(frame.shape, dtype=np.float32)
        unseen = np.zeros(frame.shape, dtype=bool)
        for j, name in enumerate(self.feature_names):
            column = frame.iloc[:, j]
            if name in self.codes:
                index = self.codes[name]
                out[:, j] = [index.get(_text(v), 0) for v in column]
                unseen[:, j] = out[:, j] == 0
            else:
                try:
                    out[:, j] = column.to_numpy(dtype=np.float32)
                except (TypeError, ValueError):
                    raise InputError(f"column {name}: not numbers (e.g. {column.iloc[0]!r})") from None
        names = np.asarray(self.feature_names, dtype=object)
        return out, [";".join(names[row]) for row in unseen]

    def predict(self, context, model_input, params=None) -> pd.DataFrame:
        array, unknown = self._as_array(model_input)
        x = torch.from_numpy(array)
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
        if self.codes:
            out[UNKNOWN] = unknown if unknown is not None else [""] * len(out)
        return out


def _short_echoes() -> None:
    """Print arrays and frames summarised: MLflow's schema errors (a wrong shape, a missing column) quote the whole
    request twice before the line that says what is wrong; summarised, the quotes stay short."""
    np.set_printoptions(threshold=16, edgeitems=2)
    pd.set_option("display.max_rows", 4)
    pd.set_option("display.max_columns", 6)


def _listed(items: list) -> str:
    shown = ", ".join(str(i) for i in items[:SHOWN])
    return shown + (f", ... ({len(items) - SHOWN} more)" if len(items) > SHOWN else "")


def _text(value) -> str | None:
    """A cell as the vocabulary holds it: text as it is; numbers (JSON, pandas) as text; missing as None."""
    if value is None or isinstance(value, str):
        return value
    if isinstance(value, float) and math.isnan(value):
        return None
    return str(value)


mlflow.models.set_model(DlpipeClassifier())
