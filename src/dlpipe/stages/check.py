"""check: the pipeline's first stage; DVC runs it on every `dvc repro` (always_changed).

DVC deletes a stage's outputs before it runs that stage, so a bad key found by the stage itself would already
have cost its outputs. This stage runs before every other one (fetch depends on its output, and everything
depends on fetch), refuses bad params with the same one-line errors as `dlpipe check` (exit 2), and records the
content hash of the files params only name (`data.csv.path`) in data/inputs.json: editing the CSV reruns fetch and
what follows; `dvc status` alone cannot see inside a file named by a param.

Fast path (a no-change `dvc repro`): when params.yaml, the dlpipe code that validates it and the CSV's size and
modification time are what the last successful check saw (a stamp under .dvc/tmp), it imports nothing beyond the
standard library and PyYAML and writes nothing.
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

STAMP = Path(".dvc") / "tmp" / "dlpipe-check.json"


def code_digest() -> str:
    """A digest of dlpipe's own sources: a new dlpipe may judge the same params differently."""
    digest = hashlib.sha256()
    root = Path(dlpipe.__file__).parent
    for path in sorted(root.rglob("*.py")):
        digest.update(path.relative_to(root).as_posix().encode())
        digest.update(path.read_bytes())
    return digest.hexdigest()


def csv_path(raw: dict[str, Any], paths: ProjectPaths) -> Path | None:
    data = raw.get("data") or {}
    if not isinstance(data, dict) or data.get("name") != "csv":
        return None
    path = (data.get("csv") or {}).get("path")
    if not path:
        return None
    path = Path(path)
    return path if path.is_absolute() else paths.root / path


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
    csv = csv_path(raw if isinstance(raw, dict) else {}, paths)
    key = hashlib.sha256(text + code_digest().encode()).hexdigest()
    state = file_state(csv)
    stamp = read_stamp(paths)
    if stamp.get("key") == key and stamp.get("csv_state") == state and paths.inputs.is_file():
        return json.loads(paths.inputs.read_text())
    return _full_check(params_path, paths, csv, key, state, stamp)


def _full_check(
    params_path: Path, paths: ProjectPaths, csv: Path | None, key: str, state: dict | None, stamp: dict[str, Any]
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
            check_csv(params, csv)
        inputs["csv"] = {"path": os.path.relpath(csv, paths.root), "sha256": digest}
    if not paths.inputs.is_file() or json.loads(paths.inputs.read_text()) != inputs:
        write_json(paths.inputs, inputs)
    write_stamp(paths, {"key": key, "csv_state": state, "csv_sha256": inputs.get("csv", {}).get("sha256")})
    return inputs


def check_csv(params: Any, path: Path) -> None:
    """The CSV parses and has enough samples per class for the splits params ask for (what fetch and prepare would
    refuse later, after DVC removed their outputs)."""
    import numpy as np

    from dlpipe.data.csv_set import read_csv_dataset
    from dlpipe.data.splits import split_problems

    ds = read_csv_dataset(path, params.data.csv.target)
    counts = np.bincount(ds.y.numpy(), minlength=len(ds.class_names))
    problems = split_problems(counts, params.data, source=str(path))
    if problems:
        from dlpipe.errors import DataError

        raise DataError("\n".join(problems))


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
