"""Trained classifiers as runnable MLflow models: raw inputs in, class probabilities (one column per class) out.

The network, the training normaliser and the softmax are exported together with `torch.export` (`model.pt2`), and
logged as a pyfunc from code (`pyfunc_model.py`, copied into the model), so loading or serving a model needs
torch, numpy, pandas and mlflow but not dlpipe. The signature takes a float32 tensor of the dataset's shape
(N x C x H x W images in [0, 1], or N x F features) and returns a column of probabilities per class name.
"""

from __future__ import annotations

import json
import logging
import tempfile
from pathlib import Path
from typing import Any

import mlflow
import numpy as np
import torch
from mlflow.models import ModelSignature
from mlflow.models.model import ModelInfo
from mlflow.types import ColSpec, Schema, TensorSpec
from torch import nn

from dlpipe.data.splits import Normalizer
from dlpipe.errors import ModelError

log = logging.getLogger(__name__)
MODEL_CODE = Path(__file__).with_name("pyfunc_model.py")
PROGRAM_FILE = "model.pt2"
META_FILE = "serving.json"


class ServingNet(nn.Module):
    """Raw input -> normalise with the training statistics -> network -> class probabilities."""

    def __init__(self, net: nn.Module, normalizer: Normalizer):
        super().__init__()
        self.net = net
        self.register_buffer("mean", normalizer.mean.detach().float().cpu().clone())
        self.register_buffer("std", normalizer.std.detach().float().cpu().clone())

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return torch.softmax(self.net((x - self.mean) / self.std), dim=1)


def export_program(net: nn.Module, normalizer: Normalizer, example: torch.Tensor, path: Path) -> None:
    """Export `ServingNet(net, normalizer)` (CPU, eval mode, any batch size) to `path` and check it reloads."""
    serving = ServingNet(net, normalizer).cpu().eval()
    example = example[:4].float().cpu()
    if len(example) < 2:  # a batch of 1 would let the exporter specialise the batch size
        example = example.repeat(2, *([1] * (example.dim() - 1)))
    try:
        program = torch.export.export(serving, (example,), dynamic_shapes={"x": {0: torch.export.Dim("batch", min=1)}})
        torch.export.save(program, str(path))
        reloaded = torch.export.load(str(path)).module()
        with torch.no_grad():
            same = torch.allclose(reloaded(example), serving(example), atol=1e-5)
    except Exception as exc:  # torch.export raises many kinds of errors
        raise ModelError(f"could not export the model for serving: {type(exc).__name__}: {exc}") from exc
    if not same:
        raise ModelError("the exported model's outputs differ from the trained network's")


def signature(input_shape: tuple[int, ...], class_names: list[str]) -> ModelSignature:
    inputs = Schema([TensorSpec(np.dtype(np.float32), (-1, *input_shape))])
    outputs = Schema([ColSpec("float", str(name)) for name in class_names])
    return ModelSignature(inputs=inputs, outputs=outputs)


def requirements() -> list[str]:
    import pandas

    return [
        f"mlflow=={mlflow.__version__}",
        f"torch=={torch.__version__.split('+')[0]}",
        f"numpy=={np.__version__}",
        f"pandas=={pandas.__version__}",
    ]


def log_classifier(
    program_path: Path,
    class_names: list[str],
    input_shape: tuple[int, ...],
    input_example: np.ndarray,
    *,
    name: str = "model",
    params: dict[str, Any] | None = None,
    tags: dict[str, str] | None = None,
) -> ModelInfo:
    """Log an exported program (see `export_program`) as a pyfunc model of the active run."""
    with tempfile.TemporaryDirectory(prefix="dlpipe-model-") as tmp:
        meta = Path(tmp) / META_FILE
        meta.write_text(json.dumps({"class_names": [str(c) for c in class_names], "input_shape": list(input_shape)}))
        return mlflow.pyfunc.log_model(
            name=name,
            python_model=str(MODEL_CODE),
            artifacts={"program": str(program_path), "meta": str(meta)},
            signature=signature(input_shape, class_names),
            input_example=np.asarray(input_example, dtype=np.float32),
            pip_requirements=requirements(),
            params={k: str(v) for k, v in (params or {}).items()} or None,
            tags=tags,
        )


def load(model_uri: str) -> mlflow.pyfunc.PyFuncModel:
    """Load a logged model (`models:/name@champion`, `runs:/...`, `models:/m-...`, a local MLflow model dir)."""
    return mlflow.pyfunc.load_model(model_uri)


def input_shape_of(model: mlflow.pyfunc.PyFuncModel) -> tuple[int, ...] | None:
    """The per-sample input shape from a model's signature (None when it has no tensor signature)."""
    schema = model.metadata.get_input_schema()
    if schema is None or not schema.is_tensor_spec():
        return None
    shape = schema.inputs[0].shape
    return tuple(int(d) for d in shape[1:])


def class_names_of(model: mlflow.pyfunc.PyFuncModel) -> list[str] | None:
    schema = model.metadata.get_output_schema()
    return None if schema is None else [str(n) for n in schema.input_names()]
