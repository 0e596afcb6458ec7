"""check: the pipeline's first stage; DVC runs it on every `dvc repro` (always_changed).

DVC deletes a stage's outputs before it runs that stage, so a bad key found by the stage itself would already
have cost its outputs. This stage runs before every other one (fetch depends on its output, and everything
depends on fetch), refuses bad params with the same one-line errors as `dlpipe check` (exit 2), and records the
content hash of the files params only name (`data.csv.path`, the image folder `data.images.path`) in
data/inputs.json: editing the CSV, or adding, removing or changing an image, reruns fetch and what follows; `dvc
status` alone cannot see inside a file or folder named by a param. An image folder is decoded here, in full, into
the cache fetch reads (data/downloads/image-cache): a bad image is refused before DVC deletes any output.

Fast path (a no-change `dvc repro`): when params.yaml, the dlpipe code that validates it and the CSV's size and
modification time (every image's, for a folder) are what the last successful check saw (a stamp under .dvc/tmp),
it imports nothing beyond the standard library and PyYAML and writes nothing.
"""

from __future__ import annotations

import hashlib
import json
import os
from pathlib import Path
from typing import Any

import yaml

import dlpipe
from dlpipe.paths import ProjectPaths
from dlpipe.tracking import store

STAMP = Path(".dvc") / "tmp" / "dlpipe-check.json"


def code_digest() -> str:
    """A digest of dlpipe's own sources: a new dlpipe may judge the same params differently."""
    digest = hashlib.sha256()
    root = Path(dlpipe.__file__).parent
    for path in sorted(root.rglob("*.py")):
        digest.update(path.relative_to(root).as_posix().encode())
        digest.update(path.read_bytes())
    return digest.hexdigest()


def user_data_path(raw: dict[str, Any], paths: ProjectPaths, name: str) -> Path | None:
    """`data.<name>.path` (a CSV file, an image folder) when `data.name` is `name`, resolved against the project."""
    data = raw.get("data") or {}
    if not isinstance(data, dict) or data.get("name") != name:
        return None
    path = (data.get(name) or {}).get("path")
    if not path:
        return None
    path = Path(path)
    return path if path.is_absolute() else paths.root / path


def folder_state(path: Path | None) -> str | None:
    """A cheap fingerprint of a folder (path, size, mtime and inode of every file): whether it must be hashed again."""
    if path is None or not path.is_dir():
        return None
    digest = hashlib.sha256()
    for dirpath, _, filenames in sorted(os.walk(path)):
        for name in sorted(filenames):
            st = os.stat(os.path.join(dirpath, name))
            rel = os.path.relpath(os.path.join(dirpath, name), path)
            digest.update(f"{rel}\0{st.st_size}\0{st.st_mtime_ns}\0{st.st_ino}\n".encode())
    return digest.hexdigest()


def file_state(path: Path | None) -> dict[str, Any] | None:
    if path is None or not path.is_file():
        return None
    st = path.stat()
    return {"path": str(path), "size": st.st_size, "mtime_ns": st.st_mtime_ns, "inode": st.st_ino}


def read_stamp(paths: ProjectPaths) -> dict[str, Any]:
    try:
        return json.loads((paths.root / STAMP).read_text())
    except (OSError, ValueError):
        return {}


def write_stamp(paths: ProjectPaths, stamp: dict[str, Any]) -> None:
    target = paths.root / STAMP
    if target.parent.is_dir():  # only inside a DVC project
        from dlpipe.io import write_json

        write_json(target, stamp)


def run(params_path: Path, paths: ProjectPaths) -> dict[str, Any]:
    """Validate `params_path` and write data/inputs.json; returns its content."""
    text = params_path.read_bytes() if params_path.is_file() else b""
    try:
        raw = yaml.safe_load(text) or {}
    except yaml.YAMLError:
        raw = {}
    store.probe_params(raw, paths.root)  # a locked or corrupt MLflow store, found before DVC deletes any output
    csv = user_data_path(raw if isinstance(raw, dict) else {}, paths, "csv")
    images = user_data_path(raw if isinstance(raw, dict) else {}, paths, "images")
    key = hashlib.sha256(text + code_digest().encode()).hexdigest()
    state = file_state(csv)
    images_state = folder_state(images)
    stamp = read_stamp(paths)
    if (
        stamp.get("key") == key
        and stamp.get("csv_state") == state
        and stamp.get("images_state") == images_state
        and paths.inputs.is_file()
    ):
        return json.loads(paths.inputs.read_text())
    return _full_check(params_path, paths, csv, key, state, stamp, images, images_state)


def _full_check(
    params_path: Path,
    paths: ProjectPaths,
    csv: Path | None,
    key: str,
    state: dict | None,
    stamp: dict[str, Any],
    images: Path | None = None,
    images_state: str | None = None,
) -> dict[str, Any]:
    from dlpipe.config import load_params
    from dlpipe.executors import check_stores
    from dlpipe.io import sha256_file, write_json

    params = load_params(params_path)
    check_stores(params, paths)
    inputs: dict[str, Any] = {}
    if csv is not None:
        if state is None:
            from dlpipe.errors import ConfigError

            raise ConfigError(f"data.csv.path: no such file {str(csv)!r}")
        digest = stamp.get("csv_sha256") if state == stamp.get("csv_state") else sha256_file(csv)
        if digest != stamp.get("csv_sha256") or stamp.get("key") != key:
            check_data(params, csv)
        inputs["csv"] = {"path": os.path.relpath(csv, paths.root), "sha256": digest}
    elif images is not None:
        known = stamp.get("images_sha256") if images_state == stamp.get("images_state") else None
        digest = check_images(params, images, paths, known)
        inputs["images"] = {"path": os.path.relpath(images, paths.root), "sha256": digest}
    else:
        check_data(params, None)
    if not paths.inputs.is_file() or json.loads(paths.inputs.read_text()) != inputs:
        write_json(paths.inputs, inputs)
    write_stamp(
        paths,
        {
            "key": key,
            "csv_state": state,
            "csv_sha256": inputs.get("csv", {}).get("sha256"),
            "images_state": images_state,
            "images_sha256": inputs.get("images", {}).get("sha256"),
        },
    )
    return inputs


def validate(params_path: Path, paths: ProjectPaths) -> Any:
    """What the check stage refuses, for `dlpipe check` too (one code path): the params, the CSV they name, and
    whether the data's class counts allow the splits data.* asks for. Returns the params."""
    from dlpipe.config import load_params

    params = load_params(params_path)
    raw = {"data": {"name": params.data.name, "csv": {"path": params.data.csv.path}}}
    csv = user_data_path(raw, paths, "csv")
    if csv is not None and not csv.is_file():
        from dlpipe.errors import ConfigError

        raise ConfigError(f"data.csv.path: no such file {str(csv)!r}")
    images = user_data_path(
        {"data": {"name": params.data.name, "images": {"path": params.data.images.path}}}, paths, "images"
    )
    if images is not None:
        check_images(params, images, paths)
    else:
        check_data(params, csv)
    return params


def check_images(params: Any, folder: Path, paths: ProjectPaths, digest: str | None = None) -> str:
    """The image folder decodes in full (every bad file named in one DataError) into the cache fetch reads, and its
    class counts allow the splits data.* asks for. Returns the folder's content digest."""
    from dlpipe.data.image_folder import cache_dir_of, channel_count, load_folder

    if not folder.is_dir():
        from dlpipe.errors import ConfigError

        raise ConfigError(f"data.images.path: no such folder {str(folder)!r}; expected one sub-folder per class")
    images = params.data.images
    found, _, digest = load_folder(
        folder, images.size, channel_count(images.channels), cache_dir_of(paths.downloads), digest
    )
    _check_splits(params, found.class_counts(), str(folder))
    return digest


def check_data(params: Any, csv: Path | None) -> None:
    """The CSV parses (as fetch reads it), and the data's class counts (the CSV's, or those the dataset registry
    publishes) give every training part, and its labelled part, every class (what prepare, tuning, cv and the
    baselines would refuse or crash on later, after DVC removed their outputs)."""
    import numpy as np

    if csv is not None:
        from dlpipe.data.csv_set import read_csv_dataset

        c = params.data.csv
        ds = read_csv_dataset(csv, c.target, c.categorical, c.text_column, c.max_tokens, c.vocab_size)
        counts, source = np.bincount(ds.y.numpy(), minlength=len(ds.class_names)), str(csv)
    else:
        from dlpipe.data.registry import get_dataset_info

        counts, source = get_dataset_info(params.data.name).class_counts, params.data.name
        if counts is None:
            return
    _check_splits(params, counts, source)


def _check_splits(params: Any, counts: Any, source: str) -> None:
    from dlpipe.data.splits import split_problems

    problems = split_problems(counts, params.data, source=source, labeled_min=labeled_minimum(params))
    if problems:
        from dlpipe.errors import DataError

        raise DataError("\n".join(problems))


def labeled_minimum(params: Any) -> int:
    """Labelled samples of each class a baseline's training part needs: a baseline that searches its grid by
    stratified inner cross-validation needs one per inner fold."""
    if params.data.labeled_fraction >= 1 or not params.baselines.models:
        return 1
    from dlpipe.evaluation.baselines import INNER_FOLDS, make_baseline

    grids = [name for name in params.baselines.models if hasattr(make_baseline(name, params.seed)[-1], "cv")]
    return INNER_FOLDS if grids else 1


def main() -> int:
    """`python pipelines/check.py`: exit 0, or 2 with one line per problem."""
    import sys

    paths = ProjectPaths.from_env()
    try:
        run(paths.params, paths)
    except Exception as exc:
        from dlpipe.errors import DlpipeError

        if not isinstance(exc, DlpipeError):
            raise
        for line in str(exc).splitlines():
            print(f"dlpipe check: error: {line}", file=sys.stderr)
        return exc.exit_code
    return 0
