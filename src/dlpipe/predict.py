"""Predictions from a logged model (`dlpipe predict`): read inputs, check them, write class probabilities.

Inputs, raw like the dataset the model was trained on (the model normalises them itself):
- a CSV file, one sample per row. Tabular models logged with feature names match a header row's columns by name,
  in any order; a missing or an extra column (after --drop) is refused. A CSV without a header row (and a CSV for
  an image model, or for a tabular model logged without names) is read by position: its column count must match.
  Categorical columns (the model's text inputs) are read as text, as the training CSV was: a category the model
  never saw, or an empty cell, is the unknown category. A model with categorical columns needs a header row.
- a NumPy `.npz` file with an array `X` (or a single array) of shape (N, *input_shape) or (N, prod(input_shape)),
  read by position.
- series (a model taking channels x length): a `.ts` file (aeon's format), or an `.npz` with `X` (N x channels x
  length) and, for series of unequal length, `lengths`; NaN-padded to the model's length, never truncated.
- a folder of images (.png, .jpg, .jpeg, .bmp, .gif, .webp) of any size, converted to grayscale or RGB for 1 or 3
  channels, resized and centre-cropped to the model's height and width the way image folders are for training
  (`data.images.size`; an image of the model's size is taken as it is) and scaled to [0, 1] like the image
  datasets. CMYK and 16-bit grayscale images are refused, as in training. Any other file in the folder is refused
  (hidden files, named `.*`, and subfolders are ignored).
Output: one row per sample with `prediction` (a class name) and `prob_<class>` per class (image folders also get
a `file` column first; a model with categorical columns adds `unknown_categories`, the columns of that row holding a
category the model never saw, counted on stderr), as CSV.
"""

from __future__ import annotations

import csv
import math
import zipfile
import zlib
from pathlib import Path

import numpy as np
import pandas as pd

from dlpipe.errors import BadInputError, ModelError

IMAGE_SUFFIXES = {".png", ".jpg", ".jpeg", ".bmp", ".gif", ".webp"}
ZIP_MAGIC = (b"PK\x03\x04", b"PK\x05\x06")  # an .npz is a zip archive (the second: an empty one)
NAMES_SHOWN = 30  # column names listed in one error line


def shape_text(shape: tuple[int, ...]) -> str:
    return "(N, " + ", ".join(str(d) for d in shape) + ")"


def expected_text(shape: tuple[int, ...]) -> str:
    size = math.prod(shape)
    if len(shape) == 1:
        return f"{size} features per row, i.e. {shape_text(shape)}"
    return f"{shape_text(shape)} or {size} values per row (flattened)"


def names_text(names: list[str], limit: int = NAMES_SHOWN) -> str:
    shown = ", ".join(names[:limit])
    return shown + (f", ... ({len(names) - limit} more)" if len(names) > limit else "")


def one_line(exc: BaseException) -> str:
    return " ".join(str(exc).split())[:300] or type(exc).__name__


def _fit_shape(X: np.ndarray, shape: tuple[int, ...], source: str, named: bool = False) -> np.ndarray:
    """X as (N, *shape) float32: as it is, or un-flattened; BadInputError naming the expected shape otherwise."""
    X = np.asarray(X)
    if X.ndim >= 1 and tuple(X.shape[1:]) == tuple(shape):
        return X.astype(np.float32, copy=False)
    if X.ndim == 2 and X.shape[1] == math.prod(shape):
        return X.reshape((len(X), *shape)).astype(np.float32, copy=False)
    got = tuple(X.shape)
    hint = "; a CSV with a header row is matched by column names" if named else ""
    raise BadInputError(f"{source}: input of shape {got} does not fit the model; expected {expected_text(shape)}{hint}")


def _named(X: np.ndarray, feature_names: list[str] | None) -> np.ndarray | pd.DataFrame:
    """Positional (N, F) values as the model's named columns (a model without names takes the array)."""
    if feature_names is None:
        return X
    return pd.DataFrame(X.reshape(len(X), -1).astype(np.float64), columns=feature_names)


def _is_number(text: str) -> bool:
    try:
        float(text)
    except ValueError:
        return False
    return True


def _looks_like_data(fields: list[str], feature_names: list[str], drop: list[str] | None) -> bool:
    """Whether a first row that is not all numbers is a row of values rather than a header: it names none of the
    model's columns (nor a --drop column), and it has one field per feature or holds a number."""
    named = set(feature_names) | set(drop or [])
    if any(f in named for f in fields):
        return False
    return len(fields) == len(feature_names) or any(_is_number(f) for f in fields)


def _match_columns(frame: pd.DataFrame, feature_names: list[str], path: Path) -> pd.DataFrame:
    """The model's feature columns of `frame`, in training order; BadInputError naming missing and extra ones."""
    columns = [str(c) for c in frame.columns]
    missing = [n for n in feature_names if n not in columns]
    extra = [c for c in columns if c not in feature_names]
    if missing or extra:
        problems = []
        if missing:
            problems.append(f"missing column(s) {names_text(missing)}")
        if extra:
            problems.append(f"unexpected column(s) {names_text(extra)} (leave them out with --drop)")
        raise BadInputError(
            f"{path}: {'; '.join(problems)}; the model takes {len(feature_names)} columns by name, in any order: "
            f"{names_text(feature_names)}"
        )
    frame.columns = columns
    return frame[feature_names]


def read_csv(
    path: Path,
    shape: tuple[int, ...],
    drop: list[str] | None = None,
    feature_names: list[str] | None = None,
    categorical: list[str] | None = None,
) -> np.ndarray | pd.DataFrame:
    """Rows of features or flattened pixels. A header row is detected (a field that is not a number, or exactly
    the model's feature names); with one, a model with feature names gets its columns by name, the `categorical`
    ones as text."""
    categorical = categorical or []
    try:
        with open(path, newline="") as fh:
            first = next(csv.reader(fh), None)
    except (UnicodeDecodeError, csv.Error) as exc:
        raise BadInputError(f"{path}: not a readable CSV file ({one_line(exc)})") from None
    if not first:
        raise BadInputError(f"{path}: empty CSV file")
    fields = [f.strip() for f in first]
    header = not all(_is_number(f) for f in fields) or (
        feature_names is not None and sorted(set(fields) - set(drop or [])) == sorted(feature_names)
    )
    if header and feature_names is not None and _looks_like_data(fields, feature_names, drop):
        header = False  # a first row of values: refused below for a model with text columns, else read by position
    if categorical and not header:
        raise BadInputError(
            f"{path}: no header row (the first row, {names_text(fields, 5)}, is data); the model takes columns by "
            f"name, {names_text(categorical, 10)} as text: add a header row naming them: "
            f"{names_text(feature_names or [])}"
        )
    try:
        frame = pd.read_csv(path, header=0 if header else None, dtype=dict.fromkeys(categorical, str))
    except (pd.errors.ParserError, pd.errors.EmptyDataError, UnicodeDecodeError) as exc:
        raise BadInputError(f"{path}: not a readable CSV file ({one_line(exc)})") from None
    if drop:
        missing = [c for c in drop if c not in frame.columns]
        if missing:
            no_header = "" if header else " (it has no header row, so no column has a name)"
            raise BadInputError(f"--drop: no column(s) {', '.join(missing)} in {path}{no_header}")
        frame = frame.drop(columns=drop)
    if len(frame) == 0:
        raise BadInputError(f"{path}: no data rows, only a header row; expected one sample per row")
    if header and feature_names is not None:
        frame = _match_columns(frame, feature_names, path)
    numbers = frame.drop(columns=[c for c in categorical if c in frame.columns])
    bad = [str(c) for c in numbers.columns if not pd.api.types.is_numeric_dtype(numbers[c])]
    if bad:
        raise BadInputError(f"{path}: non-numeric column(s) {names_text(bad, 10)}; drop them with --drop")
    if numbers.isna().any().any():
        raise BadInputError(f"{path}: missing values; every feature must be a number")
    if header and feature_names is not None:
        return frame.astype({c: np.float64 for c in numbers.columns})
    X = _fit_shape(frame.to_numpy(np.float32), shape, str(path), named=feature_names is not None)
    return _named(X, feature_names)


def read_npz(
    path: Path, shape: tuple[int, ...], feature_names: list[str] | None = None, categorical: list[str] | None = None
) -> np.ndarray | pd.DataFrame:
    """Array `X` (or the only array) of a NumPy .npz archive, by position; one line naming the file if it is not
    a readable archive of numbers (or the model takes text columns)."""
    if categorical:
        raise BadInputError(
            f"{path}: the model takes text column(s) {names_text(categorical, 10)}; give a CSV with a header row "
            f"naming its columns: {names_text(feature_names or [])}"
        )
    with open(path, "rb") as fh:
        head = fh.read(4)
    if head not in ZIP_MAGIC:
        what = "an empty file" if not head else "not a NumPy .npz archive (no zip header)"
        raise BadInputError(f"{path}: {what}; expected arrays saved with numpy.savez(file, X=...)")
    try:
        # np.load leaks the file it opened when the archive is damaged: hand it one this block closes
        with open(path, "rb") as fh, np.load(fh, allow_pickle=False) as npz:
            names = list(npz.files)
            if "X" in names:
                X = npz["X"]
            elif len(names) == 1:
                X = npz[names[0]]
            else:
                raise BadInputError(f"{path}: no array named X (arrays: {', '.join(names) or 'none'})")
    except (zipfile.BadZipFile, EOFError, OSError, ValueError, KeyError, zlib.error) as exc:
        if "allow_pickle" in str(exc):
            raise BadInputError(
                f"{path}: holds pickled Python objects, which dlpipe does not load; save numeric arrays only"
            ) from None
        raise BadInputError(
            f"{path}: damaged .npz archive, truncated or corrupt ({type(exc).__name__}: {one_line(exc)}); "
            f"write it again with numpy.savez"
        ) from None
    if not np.issubdtype(X.dtype, np.number):
        raise BadInputError(f"{path}: X must be numeric, got dtype {X.dtype}")
    return _named(_fit_shape(X, shape, str(path)), feature_names)


def read_images(folder: Path, shape: tuple[int, ...]) -> tuple[np.ndarray, list[str]]:
    """Every image file in `folder` (sorted by name) as (N, C, H, W) in [0, 1]; any other file is refused."""
    from PIL import Image, UnidentifiedImageError

    from dlpipe.data.image_folder import fit_image

    if len(shape) != 3 or shape[0] not in (1, 3):
        raise BadInputError(f"{folder}: the model takes {expected_text(shape)}, not images")
    channels, height, width = shape
    entries = [p for p in folder.iterdir() if p.is_file() and not p.name.startswith(".")]
    others = sorted(p.name for p in entries if p.suffix.lower() not in IMAGE_SUFFIXES)
    if others:
        raise BadInputError(
            f"{folder}: not image file(s) {names_text(others, 10)}; the folder must hold only images "
            f"({', '.join(sorted(IMAGE_SUFFIXES))}): move the others out"
        )
    files = sorted(entries)
    if not files:
        raise BadInputError(f"{folder}: no image files ({', '.join(sorted(IMAGE_SUFFIXES))})")
    images = []
    for path in files:
        try:
            with Image.open(path) as img:
                array = fit_image(img, height, width, channels).astype(np.float32) / 255.0
        except (UnidentifiedImageError, OSError, ValueError) as exc:
            raise BadInputError(f"{path}: not a readable image ({one_line(exc)})") from None
        images.append(array)
    return np.stack(images).astype(np.float32), [p.name for p in files]


def load_inputs(
    path: str | Path,
    shape: tuple[int, ...],
    drop: list[str] | None = None,
    feature_names: list[str] | None = None,
    categorical: list[str] | None = None,
) -> tuple[np.ndarray | pd.DataFrame, list[str] | None]:
    """(inputs as the model takes them: (N, *shape) array, or named columns, `categorical` ones as text; file
    names for image folders)."""
    path = Path(path)
    if path.is_dir():
        return read_images(path, shape)
    if not path.is_file():
        raise BadInputError(f"--input: no such file or folder {str(path)!r}")
    suffix = path.suffix.lower()
    if suffix == ".ts" or (suffix == ".npz" and len(shape) == 2):  # series: channels x length
        from dlpipe.data.series_sets import read_series_input

        return read_series_input(path, shape), None
    if suffix == ".npz":
        return read_npz(path, shape, feature_names, categorical), None
    if suffix in (".csv", ".txt"):
        return read_csv(path, shape, drop, feature_names, categorical), None
    raise BadInputError(f"--input: {path.name}: unsupported format; use .csv, .npz, .ts or a folder of images")


def predictions_frame(output: pd.DataFrame, files: list[str] | None = None) -> pd.DataFrame:
    """prediction (the class the model decides on, under its operating point) and prob_<class> columns (plus file,
    and unknown_categories for a model with categorical columns)."""
    from dlpipe.tracking.model_logging import UNKNOWN, read_output

    predicted, probs = read_output(output)
    out = pd.DataFrame({"prediction": predicted})
    for name in probs.columns:
        out[f"prob_{name}"] = probs[name].to_numpy(dtype=float)
    if UNKNOWN in output.columns:
        out[UNKNOWN] = output[UNKNOWN].fillna("").astype(str).to_numpy()
    if files is not None:
        out.insert(0, "file", files)
    return out


def unknown_categories_note(frame: pd.DataFrame) -> str | None:
    """One line counting the rows and cells that hold a category the model never saw (None: there are none)."""
    from dlpipe.tracking.model_logging import UNKNOWN

    if UNKNOWN not in frame.columns:
        return None
    cells = frame[UNKNOWN].fillna("").astype(str)
    counts = pd.Series([c for row in cells if row for c in row.split(";")], dtype=object).value_counts(sort=False)
    if counts.empty:
        return None
    per_column = ", ".join(f"{name} {n}" for name, n in counts.items())
    return (
        f"{int((cells != '').sum())} of {len(frame)} row(s) hold a category the model never saw ({per_column}); "
        f"each is taken as the unknown category (column {UNKNOWN} names them per row)"
    )


def uses_store(model_uri: str) -> bool:
    """Whether loading `model_uri` reads the tracking store (registry, run or logged-model URIs)."""
    return model_uri.startswith(("models:/", "runs:/"))


def use_project_store(root: Path, model_uri: str) -> str | None:
    """Point MLflow at the project's store ($MLFLOW_TRACKING_URI, params' mlflow.tracking_uri, or
    mlruns/mlflow.db) when `model_uri` needs it; a missing local store is refused (NoStoreError), never created."""
    from dlpipe.config import load_params
    from dlpipe.errors import ConfigError
    from dlpipe.tracking import store

    if not uses_store(model_uri):
        return None  # a model directory: no store needed, none touched
    configured = None
    if (root / "params.yaml").is_file():
        try:
            configured = load_params(root / "params.yaml").mlflow.tracking_uri
        except ConfigError:
            configured = None
    return store.connect(configured, root, f"--model {model_uri!r}")


def load_model(model_uri: str):
    """The pyfunc model; a registry name, alias or version that does not exist is bad input naming what does."""
    from mlflow.exceptions import MlflowException

    from dlpipe.tracking.model_logging import load
    from dlpipe.tracking.registry import check_model_uri

    if not uses_store(model_uri) and "://" not in model_uri and not Path(model_uri).exists():
        raise BadInputError(f"--model: no such model directory {model_uri!r}; or give models:/<name>@<alias>")
    if model_uri.startswith("models:/"):
        check_model_uri(model_uri)
    try:
        return load(model_uri)
    except MlflowException as exc:
        if exc.error_code == "RESOURCE_DOES_NOT_EXIST":
            raise BadInputError(f"--model: {model_uri!r} does not exist ({one_line(exc)})") from None
        raise ModelError(f"--model: cannot load {model_uri!r} ({one_line(exc)})") from None
    except OSError as exc:
        raise ModelError(f"--model: cannot load {model_uri!r} ({one_line(exc)})") from None


def predict(model_uri: str, input_path: str | Path, drop: list[str] | None = None) -> pd.DataFrame:
    """Load `model_uri`, read and check `input_path`, return the predictions frame (MLflow must be configured)."""
    from mlflow.exceptions import MlflowException

    from dlpipe.tracking.model_logging import categorical_of, feature_names_of, input_shape_of

    if not Path(input_path).exists():
        raise BadInputError(f"--input: no such file or folder {str(input_path)!r}")
    model = load_model(model_uri)
    shape = input_shape_of(model)
    if shape is None:
        raise ModelError(f"--model: {model_uri!r} has no tensor or feature-column input signature; not a dlpipe model?")
    X, files = load_inputs(input_path, shape, drop, feature_names_of(model), categorical_of(model))
    try:
        probs = model.predict(X)
    except MlflowException as exc:
        raise BadInputError(f"--input: the model rejected the input ({one_line(exc)})") from None
    return predictions_frame(probs, files)
