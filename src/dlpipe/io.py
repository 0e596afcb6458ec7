"""Atomic file writes: an output is either complete or absent, never half-written.

Temporary files and folders are created beside their target and named after it and the writing process
(`.<name>.<pid>.<random>.tmp`); a process killed mid-write leaves one behind, and the next write of the same
target removes the leftovers of processes that are gone.
"""

from __future__ import annotations

import contextlib
import errno
import hashlib
import json
import os
import shutil
import tempfile
import uuid
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import psutil

from dlpipe.errors import OutputNotWritable

TMP_SUFFIX = ".tmp"


def _temp_prefix(target: Path) -> str:
    return f".{target.name}.{os.getpid()}."


def remove_stale_temps(target: Path) -> list[Path]:
    """Delete temporary siblings of `target` left by processes that no longer run; returns what was removed."""
    removed = []
    for path in target.parent.glob(f".{target.name}.*{TMP_SUFFIX}"):
        pid = path.name[len(target.name) + 2 :].split(".", 1)[0]
        if pid.isdigit() and (int(pid) == os.getpid() or psutil.pid_exists(int(pid))):
            continue
        if path.is_dir():
            shutil.rmtree(path, ignore_errors=True)
        else:
            path.unlink(missing_ok=True)
        removed.append(path)
    return removed


@contextlib.contextmanager
def atomic_path(path: str | os.PathLike[str]) -> Iterator[Path]:
    """Yield a temporary path beside `path`; rename it over `path` only if the block succeeds."""
    target = Path(path)
    target.parent.mkdir(parents=True, exist_ok=True)
    remove_stale_temps(target)
    fd, tmp = tempfile.mkstemp(prefix=_temp_prefix(target), suffix=TMP_SUFFIX, dir=target.parent)
    os.close(fd)
    tmp_path = Path(tmp)
    try:
        yield tmp_path
        os.replace(tmp_path, target)
    except OSError as exc:
        if exc.errno == errno.ENOSPC and not exc.filename:  # a full disk: name the file (a write does not)
            exc.filename = str(target)
        raise
    finally:
        tmp_path.unlink(missing_ok=True)


@contextlib.contextmanager
def atomic_dir(dest: str | os.PathLike[str]) -> Iterator[Path]:
    """Yield an empty temporary folder beside `dest`; it replaces `dest` only if the block succeeds."""
    dest = Path(dest)
    dest.parent.mkdir(parents=True, exist_ok=True)
    remove_stale_temps(dest)
    tmp = Path(tempfile.mkdtemp(prefix=_temp_prefix(dest), suffix=TMP_SUFFIX, dir=dest.parent))
    try:
        yield tmp
        old = dest.with_name(f"{_temp_prefix(dest)}{uuid.uuid4().hex[:8]}.old{TMP_SUFFIX}")
        if dest.exists():
            os.replace(dest, old)
        os.replace(tmp, dest)
        shutil.rmtree(old, ignore_errors=True)
    finally:
        shutil.rmtree(tmp, ignore_errors=True)


def write_text(path: str | os.PathLike[str], text: str) -> None:
    """Write `text` to `path` atomically."""
    with atomic_path(path) as tmp:
        tmp.write_text(text)


def write_json(path: str | os.PathLike[str], data: Any) -> None:
    """Write `data` as indented JSON atomically."""
    write_text(path, json.dumps(data, indent=2, sort_keys=False, default=_json_default) + "\n")


PARAMS_DIGITS = 12  # significant digits of a float in a params file DVC reads (see params_yaml)


def params_yaml(data: Any) -> str:
    """`data` as YAML for a params file DVC reads (flow style for short mappings, keys sorted), every float rounded
    to PARAMS_DIGITS significant digits. DVC records a params file's values in dvc.lock and rewrites that file with
    ruamel's round-trip dumper, which truncates a float's last digit in exponent form (5.896835909914791e-05 became
    ...790e-05), and a value that changes in dvc.lock reruns its stage on every other `dvc repro`. Floats of 12
    significant digits survive that rewrite exactly; 13 did not always (tests/unit/test_tuned_params_yaml.py)."""
    import yaml

    return yaml.safe_dump(_rounded(data), sort_keys=True, default_flow_style=None)


def _rounded(value: Any) -> Any:
    if isinstance(value, float):
        return float(f"{value:.{PARAMS_DIGITS}g}")
    if isinstance(value, dict):
        return {k: _rounded(v) for k, v in value.items()}
    if isinstance(value, list | tuple):
        return [_rounded(v) for v in value]
    return value


def read_json(path: str | os.PathLike[str]) -> Any:
    return json.loads(Path(path).read_text())


def check_writable(*folders: str | os.PathLike[str]) -> None:
    """Refuse (OutputNotWritable, exit 2) a folder this process cannot create files in, before any long work."""
    for folder in folders:
        folder = Path(folder)
        try:
            folder.mkdir(parents=True, exist_ok=True)
            with tempfile.NamedTemporaryFile(dir=folder, prefix=_temp_prefix(folder / "check"), suffix=TMP_SUFFIX):
                pass
        except OSError as exc:
            raise OutputNotWritable(
                f"{folder}: cannot write outputs here ({exc.strerror or exc}); "
                "fix its permissions or free space, then run again"
            ) from None


def sha256_file(path: str | os.PathLike[str], chunk: int = 1 << 20) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as fh:
        while block := fh.read(chunk):
            digest.update(block)
    return digest.hexdigest()


def _json_default(obj: Any) -> Any:
    if hasattr(obj, "tolist"):
        return obj.tolist()
    if isinstance(obj, Path):
        return str(obj)
    raise TypeError(f"not JSON serialisable: {type(obj).__name__}")
