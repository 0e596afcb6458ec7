"""Predictions from a logged model (`dlpipe predict`): read inputs, check their shape, write class probabilities.

Inputs, raw like the dataset the model was trained on (the model normalises them itself):
- a CSV file of features (tabular) or flattened pixels, one sample per row, with or without a header row;
- a NumPy `.npz` file with an array `X` (or a single array) of shape (N, *input_shape) or (N, prod(input_shape));
- a folder of images (.png, .jpg, .jpeg, .bmp, .gif, .webp), each of the model's height and width exactly (no
  resizing), converted to grayscale or RGB for 1 or 3 channels and scaled to [0, 1] like the image datasets.
Output: one row per sample with `prediction` (a class name) and `prob_<class>` per class (image folders also get
a `file` column first), as CSV.
"""

from __future__ import annotations

import csv
import math
from pathlib import Path

import numpy as np
import pandas as pd

from dlpipe.errors import BadInputError, ModelError

IMAGE_SUFFIXES = {".png", ".jpg", ".jpeg", ".bmp", ".gif", ".webp"}


def shape_text(shape: tuple[int, ...]) -> str:
    return "(N, " + ", ".join(str(d) for d in shape) + ")"


def expected_text(shape: tuple[int, ...]) -> str:
    size = math.prod(shape)
    if len(shape) == 1:
        return f"{size} features per row, i.e. {shape_text(shape)}"
    return f"{shape_text(shape)} or {size} values per row (flattened)"


def _fit_shape(X: np.ndarray, shape: tuple[int, ...], source: str) -> np.ndarray:
    """X as (N, *shape) float32: as it is, or un-flattened; BadInputError naming the expected shape otherwise."""
    X = np.asarray(X)
    if X.ndim >= 1 and tuple(X.shape[1:]) == tuple(shape):
        return X.astype(np.float32, copy=False)
    if X.ndim == 2 and X.shape[1] == math.prod(shape):
        return X.reshape((len(X), *shape)).astype(np.float32, copy=False)
    got = tuple(X.shape)
    raise BadInputError(f"{source}: input of shape {got} does not fit the model; expected {expected_text(shape)}")


def _is_number(text: str) -> bool:
    try:
        float(text)
    except ValueError:
        return False
    return True


def read_csv(path: Path, shape: tuple[int, ...], drop: list[str] | None = None) -> np.ndarray:
    """Rows of features or flattened pixels; a header row is detected (a field that is not a number)."""
    with open(path, newline="") as fh:
        first = next(csv.reader(fh), None)
    if not first:
        raise BadInputError(f"{path}: empty CSV file")
    header = not all(_is_number(f) for f in first)
    try:
        frame = pd.read_csv(path, header=0 if header else None)
    except (pd.errors.ParserError, UnicodeDecodeError) as exc:
        raise BadInputError(f"{path}: not a readable CSV file ({' '.join(str(exc).split())})") from None
    if drop:
        missing = [c for c in drop if c not in frame.columns]
        if missing:
            raise BadInputError(f"--drop: no column(s) {', '.join(missing)} in {path}")
        frame = frame.drop(columns=drop)
    bad = [str(c) for c in frame.columns if not pd.api.types.is_numeric_dtype(frame[c])]
    if bad:
        raise BadInputError(f"{path}: non-numeric column(s) {', '.join(bad[:10])}; drop them with --drop")
    if frame.isna().any().any():
        raise BadInputError(f"{path}: missing values; every feature must be a number")
    return _fit_shape(frame.to_numpy(np.float32), shape, str(path))


def read_npz(path: Path, shape: tuple[int, ...]) -> np.ndarray:
    try:
        with np.load(path, allow_pickle=False) as npz:
            names = list(npz.files)
            if "X" in names:
                X = npz["X"]
            elif len(names) == 1:
                X = npz[names[0]]
            else:
                raise BadInputError(f"{path}: no array named X (arrays: {', '.join(names) or 'none'})")
    except (OSError, ValueError) as exc:
        raise BadInputError(f"{path}: not a readable .npz file ({exc})") from None
    if not np.issubdtype(X.dtype, np.number):
        raise BadInputError(f"{path}: X must be numeric, got dtype {X.dtype}")
    return _fit_shape(X, shape, str(path))


def read_images(folder: Path, shape: tuple[int, ...]) -> tuple[np.ndarray, list[str]]:
    """Every image file in `folder` (sorted by name) as (N, C, H, W) in [0, 1]."""
    from PIL import Image, UnidentifiedImageError

    if len(shape) != 3 or shape[0] not in (1, 3):
        raise BadInputError(f"{folder}: the model takes {expected_text(shape)}, not images")
    channels, height, width = shape
    files = sorted(p for p in folder.iterdir() if p.is_file() and p.suffix.lower() in IMAGE_SUFFIXES)
    if not files:
        raise BadInputError(f"{folder}: no image files ({', '.join(sorted(IMAGE_SUFFIXES))})")
    images = []
    for path in files:
        try:
            with Image.open(path) as img:
                img = img.convert("L" if channels == 1 else "RGB")
                if img.size != (width, height):
                    raise BadInputError(
                        f"{path}: image is {img.size[0]}x{img.size[1]} (width x height) but the model takes "
                        f"{width}x{height} images with {channels} channel(s), i.e. {shape_text(shape)}; "
                        f"resize it first"
                    )
                array = np.asarray(img, dtype=np.float32) / 255.0
        except (UnidentifiedImageError, OSError) as exc:
            raise BadInputError(f"{path}: not a readable image ({exc})") from None
        images.append(array[None, :, :] if channels == 1 else array.transpose(2, 0, 1))
    return np.stack(images).astype(np.float32), [p.name for p in files]


def load_inputs(path: str | Path, shape: tuple[int, ...], drop: list[str] | None = None
                ) -> tuple[np.ndarray, list[str] | None]:  # fmt: skip
    """(X of shape (N, *shape), file names for image folders else None)."""
    path = Path(path)
    if path.is_dir():
        return read_images(path, shape)
    if not path.is_file():
        raise BadInputError(f"--input: no such file or folder {str(path)!r}")
    suffix = path.suffix.lower()
    if suffix == ".npz":
        return read_npz(path, shape), None
    if suffix in (".csv", ".txt"):
        return read_csv(path, shape, drop), None
    raise BadInputError(f"--input: {path.name}: unsupported format; use .csv, .npz or a folder of images")


def predictions_frame(probs: pd.DataFrame, files: list[str] | None = None) -> pd.DataFrame:
    """prediction (class name of the highest probability) and prob_<class> columns (plus file)."""
    names = [str(c) for c in probs.columns]
    values = probs.to_numpy(dtype=float)
    out = pd.DataFrame({"prediction": np.asarray(names, dtype=object)[values.argmax(axis=1)] if len(values) else []})
    for i, name in enumerate(names):
        out[f"prob_{name}"] = values[:, i]
    if files is not None:
        out.insert(0, "file", files)
    return out


def use_project_store(root: Path, model_uri: str) -> str:
    """Point MLflow at the project's store: $MLFLOW_TRACKING_URI, params' mlflow.tracking_uri, or mlruns/mlflow.db."""
    import mlflow

    from dlpipe.config import load_params
    from dlpipe.errors import ConfigError
    from dlpipe.tracking import store

    configured = None
    if (root / "params.yaml").is_file():
        try:
            configured = load_params(root / "params.yaml").mlflow.tracking_uri
        except ConfigError:
            configured = None
    uri = store.resolve_tracking_uri(configured, root)
    local_db = Path(uri.removeprefix("sqlite:///")) if store.is_local(uri) else None
    if model_uri.startswith(("models:/", "runs:/")) and local_db is not None and not local_db.is_file():
        raise ModelError(f"--model: {model_uri!r} needs an MLflow store, but {local_db} does not exist (set "
                         f"DLPIPE_ROOT to the project, or MLFLOW_TRACKING_URI)")  # fmt: skip
    mlflow.set_tracking_uri(uri)
    mlflow.set_registry_uri(uri)
    return uri


def predict(model_uri: str, input_path: str | Path, drop: list[str] | None = None) -> pd.DataFrame:
    """Load `model_uri`, read and check `input_path`, return the predictions frame (MLflow must be configured)."""
    from mlflow.exceptions import MlflowException

    from dlpipe.tracking.model_logging import input_shape_of, load

    if not Path(input_path).exists():
        raise BadInputError(f"--input: no such file or folder {str(input_path)!r}")
    try:
        model = load(model_uri)
    except (MlflowException, OSError) as exc:
        raise ModelError(f"--model: cannot load {model_uri!r} ({' '.join(str(exc).split())[:300]})") from None
    shape = input_shape_of(model)
    if shape is None:
        raise ModelError(f"--model: {model_uri!r} has no tensor input signature; not a dlpipe model?")
    X, files = load_inputs(input_path, shape, drop)
    try:
        probs = model.predict(X)
    except MlflowException as exc:
        raise BadInputError(f"--input: the model rejected the input ({' '.join(str(exc).split())[:300]})") from None
    return predictions_frame(probs, files)
