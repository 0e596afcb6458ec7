"""Trained classifiers as runnable MLflow models: raw inputs in; the predicted class and its probabilities out.

The network, the training normaliser and the softmax are exported together with `torch.export` (`model.pt2`), and
logged as a pyfunc from code (`pyfunc_model.py`, copied into the model), so loading or serving a model needs
torch, numpy, pandas and mlflow but not dlpipe. Outputs: `prediction` (the class name, under the model's operating
point: argmax, or a threshold on the positive class's probability) and `prob_<class>` per class. Inputs:
- image models (and tabular models logged without feature names): a float32 tensor of the dataset's shape
  (N x C x H x W images in [0, 1], or N x F features), matched by position;
- tabular models logged with `feature_names`: one named column per feature, so MLflow's schema enforcement, the
  served model and `dlpipe predict` match columns by name, in any order; the pyfunc reorders them by name before
  the exported program. Numeric columns are doubles; categorical columns are strings (the raw text), which the
  pyfunc maps to codes with the vocabularies the program carries (`features.json`; an unseen category is unknown,
  and the output column `unknown_categories` names, per row, the columns that held one).
- text models (a CSV's `data.csv.text_column`): one string column, named as in the CSV, of raw text; the pyfunc
  tokenizes it with the tokenizer fitted on the model's training rows (its JSON is in `serving.json`) into the
  token ids the program takes (N x 1 x max_tokens, NaN after each text's last token). Loading one also needs
  Hugging Face `tokenizers` (in its requirements).
"""

from __future__ import annotations

import json
import logging
import tempfile
import warnings
from pathlib import Path
from typing import Any

import mlflow
import numpy as np
import pandas as pd
import torch
from mlflow.models import ModelSignature
from mlflow.models.model import ModelInfo
from mlflow.types import ColSpec, DataType, Schema, TensorSpec
from torch import nn

from dlpipe.data.base import Features
from dlpipe.data.splits import Normalizer
from dlpipe.data.text import TextEncoder
from dlpipe.errors import ModelError

log = logging.getLogger(__name__)
MODEL_CODE = Path(__file__).with_name("pyfunc_model.py")
PROGRAM_FILE = "model.pt2"
META_FILE = "serving.json"
FEATURES_FILE = "features.json"  # inside the exported program: the tabular columns and their vocabularies
PREDICTION = "prediction"  # the output column with the predicted class name (under the model's operating point)
UNKNOWN = "unknown_categories"  # output column of models with categorical inputs: the row's unseen categories' columns


class ServingNet(nn.Module):
    """Raw input -> the training normaliser (standardisation; codes the training data never showed -> unknown) ->
    network -> (temperature) -> class probabilities."""

    def __init__(self, net: nn.Module, normalizer: Normalizer, temperature: float = 1.0):
        super().__init__()
        self.net = net
        self.normalize = normalizer.module()
        self.register_buffer("temperature", torch.tensor(float(temperature)))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return torch.softmax(self.net(self.normalize(x)) / self.temperature, dim=1)


def export_program(
    net: nn.Module,
    normalizer: Normalizer,
    example: torch.Tensor,
    path: Path,
    temperature: float = 1.0,
    check: torch.Tensor | None = None,
) -> None:
    """Export `ServingNet(net, normalizer, temperature)` (CPU, eval mode, any batch size) to `path`, reload it and
    check it gives the network's probabilities on `check` (raw inputs, e.g. the whole test set; default `example`).
    A normaliser with categorical columns puts their vocabularies into the program (`program_features`)."""
    serving = ServingNet(net, normalizer, temperature).cpu().eval()
    example = example[:4].float().cpu()
    if len(example) < 2:  # a batch of 1 would let the exporter specialise the batch size
        example = example.repeat(2, *([1] * (example.dim() - 1)))
    check = example if check is None else check.float().cpu()
    features = normalizer.features
    extra = {FEATURES_FILE: json.dumps(features.to_json())} if features is not None and features.vocabularies else None
    try:
        with warnings.catch_warnings():
            # nn.RNN/LSTM/GRU refresh their `_flat_weights` list (views of their registered parameters) in forward;
            # torch.export notes it as attributes assigned during export, yet the program holds the parameters
            # (the reload check below compares its probabilities with the network's)
            warnings.filterwarnings("ignore", r"The tensor attributes .*_flat_weights\[", UserWarning)
            program = torch.export.export(
                serving, (example,), dynamic_shapes={"x": {0: torch.export.Dim("batch", min=1)}}
            )
        torch.export.save(program, str(path), extra_files=extra)
        reloaded = torch.export.load(str(path)).module()
        with torch.no_grad():
            worst = float((reloaded(check) - serving(check)).abs().max()) if len(check) else 0.0
    except Exception as exc:  # torch.export raises many kinds of errors
        raise ModelError(f"could not export the model for serving: {type(exc).__name__}: {exc}") from exc
    if worst > 1e-5:
        raise ModelError(f"the exported model's probabilities differ from the trained network's by up to {worst:.2g}")


def program_features(path: Path) -> Features | None:
    """The tabular columns with categorical vocabularies an exported program carries (None: it has none)."""
    extra = {FEATURES_FILE: ""}
    torch.export.load(str(path), extra_files=extra)
    return Features.from_json(json.loads(extra[FEATURES_FILE])) if extra[FEATURES_FILE] else None


def input_frame(X: np.ndarray, feature_names: list[str], features: Features | None = None) -> pd.DataFrame:
    """Rows of raw X (categorical columns as codes) as a model with named columns takes them: numeric columns as
    doubles, categorical ones as their text (the unknown code as a missing value)."""
    flat = np.asarray(X).reshape(len(X), -1)
    frame = pd.DataFrame(flat.astype(np.float64), columns=feature_names)
    for name in features.vocabularies if features is not None else ():
        if name not in feature_names:
            continue
        frame[name] = pd.Series(features.decode(name, flat[:, feature_names.index(name)]), dtype=object)
    return frame


def check_feature_names(feature_names: list[str] | None, input_shape: tuple[int, ...]) -> list[str] | None:
    """The names as strings; ValueError unless they name each feature of a (F,) input once."""
    if feature_names is None:
        return None
    names = [str(n) for n in feature_names]
    if len(input_shape) != 1 or len(names) != input_shape[0] or len(set(names)) != len(names):
        raise ValueError(
            f"feature_names: {len(names)} names for input shape {tuple(input_shape)}; need one distinct name per "
            f"feature of a tabular (F,) input"
        )
    return names


def signature(
    input_shape: tuple[int, ...],
    class_names: list[str],
    feature_names: list[str] | None = None,
    categorical: list[str] | None = None,
) -> ModelSignature:
    """Tensor input (by position), or with `feature_names` one column per feature (by name): a string for each
    `categorical` one, else a double."""
    names = check_feature_names(feature_names, input_shape)
    if names is None:
        inputs = Schema([TensorSpec(np.dtype(np.float32), (-1, *input_shape))])
    else:  # double: JSON numbers arrive as float64/int64
        text = set(categorical or ())
        inputs = Schema([ColSpec("string" if name in text else "double", name) for name in names])
    columns = [ColSpec("string", PREDICTION)] + [ColSpec("float", f"prob_{name}") for name in class_names]
    if names is not None and categorical:
        columns.append(ColSpec("string", UNKNOWN))
    outputs = Schema(columns)
    return ModelSignature(inputs=inputs, outputs=outputs)


def requirements(text: bool = False) -> list[str]:
    import pandas

    pins = [
        f"mlflow=={mlflow.__version__}",
        f"torch=={torch.__version__.split('+')[0]}",
        f"numpy=={np.__version__}",
        f"pandas=={pandas.__version__}",
    ]
    if text:
        import tokenizers

        pins.append(f"tokenizers=={tokenizers.__version__}")
    return pins


def log_classifier(
    program_path: Path,
    class_names: list[str],
    input_shape: tuple[int, ...],
    input_example: np.ndarray,
    *,
    name: str = "model",
    params: dict[str, Any] | None = None,
    tags: dict[str, str] | None = None,
    feature_names: list[str] | None = None,
    decision: dict[str, Any] | None = None,
    step: int = 0,
    text: tuple[str, TextEncoder] | None = None,
) -> ModelInfo:
    """Log an exported program (see `export_program`) as a pyfunc model named `name` of the active run.

    `feature_names` (tabular data only: X's column names, in order) makes the model take named columns; those the
    program's vocabularies name (see `export_program`) are text, `input_example` holds their codes. `decision` (an
    operating point: rule, threshold on P(positive_class)) decides the `prediction` column; the run's metrics at
    `step` (e.g. the kept epoch) are linked to the model. `text` (the text column's name and the fitted tokenizer)
    makes a text model: it takes that one column of raw text, and `input_example` holds raw text.
    """
    extra: dict[str, Any] = {"categories": None}
    if text is not None:  # one column of raw text; the tokenizer's JSON rides in serving.json
        column, encoder = text
        names, pins = [column], requirements(text=True)
        extra["text"] = {"column": column, "tokenizer": encoder.tokenizer_json, "max_tokens": encoder.max_tokens}
        example: np.ndarray | pd.DataFrame = pd.DataFrame({column: [str(t) for t in np.asarray(input_example)]})
        outputs = [ColSpec("string", PREDICTION)] + [ColSpec("float", f"prob_{c}") for c in class_names]
        model_signature = ModelSignature(inputs=Schema([ColSpec("string", column)]), outputs=Schema(outputs))
    else:
        names, pins = check_feature_names(feature_names, tuple(input_shape)), requirements()
        features = program_features(Path(program_path))
        if features is not None and (names is None or list(features.names) != names):
            raise ValueError(
                f"feature_names: {names} are not the columns the program was exported for {features.names}"
            )
        categories = {k: list(v) for k, v in features.vocabularies.items()} if features is not None else None
        extra["categories"] = categories
        example = np.asarray(input_example, dtype=np.float32)
        if names is not None:
            example = input_frame(example, names, features)
        model_signature = signature(input_shape, class_names, names, list(categories or ()))
    with tempfile.TemporaryDirectory(prefix="dlpipe-model-") as tmp:
        meta = Path(tmp) / META_FILE
        info = {
            "class_names": [str(c) for c in class_names],
            "input_shape": list(input_shape),
            "feature_names": names,
            **extra,
            "decision": decision or {"rule": "argmax", "threshold": None, "positive_class": None},
        }
        meta.write_text(json.dumps(info))
        return mlflow.pyfunc.log_model(
            name=name,
            python_model=str(MODEL_CODE),
            artifacts={"program": str(program_path), "meta": str(meta)},
            signature=model_signature,
            input_example=example,
            pip_requirements=pins,
            params={k: str(v) for k, v in (params or {}).items()} or None,
            tags=tags,
            step=step,
        )


def read_output(frame: pd.DataFrame) -> tuple[np.ndarray, pd.DataFrame]:
    """(predicted class names, probabilities with one column per class name) from a model's output. Models logged
    before the `prediction` column existed output bare class-name columns: their prediction is the argmax."""
    columns = [str(c) for c in frame.columns]
    if PREDICTION in columns:
        probs = frame[[c for c in frame.columns if str(c).startswith("prob_")]]
        probs = probs.rename(columns=lambda c: str(c).removeprefix("prob_"))
        return frame[PREDICTION].astype(str).to_numpy(dtype=object), probs
    probs = frame.rename(columns=str)
    names = np.asarray(columns, dtype=object)
    return (names[probs.to_numpy().argmax(axis=1)] if len(probs) else names[:0]), probs


def load(model_uri: str) -> mlflow.pyfunc.PyFuncModel:
    """Load a logged model (`models:/name@champion`, `runs:/...`, `models:/m-...`, a local MLflow model dir)."""
    return mlflow.pyfunc.load_model(model_uri)


def input_shape_of(model: mlflow.pyfunc.PyFuncModel) -> tuple[int, ...] | None:
    """The per-sample input shape from a model's signature: the tensor's, or (F,) for F named columns (None when
    it has neither)."""
    schema = model.metadata.get_input_schema()
    if schema is None:
        return None
    if schema.is_tensor_spec():
        return tuple(int(d) for d in schema.inputs[0].shape[1:])
    names = feature_names_of(model)
    return (len(names),) if names else None


def feature_names_of(model: mlflow.pyfunc.PyFuncModel) -> list[str] | None:
    """The named input columns of a tabular model logged with feature names, in the order it was trained on."""
    schema = model.metadata.get_input_schema()
    if schema is None or schema.is_tensor_spec() or not schema.has_input_names():
        return None
    return [str(n) for n in schema.input_names()]


def categorical_of(model: mlflow.pyfunc.PyFuncModel) -> list[str]:
    """The input columns a tabular model takes as text (its categorical features)."""
    schema = model.metadata.get_input_schema()
    if schema is None or schema.is_tensor_spec():
        return []
    return [str(c.name) for c in schema.inputs if c.name is not None and c.type == DataType.string]
