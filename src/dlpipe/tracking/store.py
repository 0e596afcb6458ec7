"""Where MLflow records: the project's own mlruns/ (SQLite + artifacts) unless a tracking server is named.

A stage may run in a copy of the project (`dvc exp run --temp` and `--queue` run under
`<project>/.dvc/tmp/exps/<tmp>`); the store still resolves to the original project's `mlruns/`.

Stages that record (`configure`) create the local store on first use. Commands that only use what is recorded
(`dlpipe predict`, `promote`, `leaderboard`) `connect` instead: a local store that does not exist is refused with
one line (NoStoreError, exit 2) and nothing is created; opening a missing SQLite store would create it (about 1 MB
of empty tables).

A project moved or copied with its mlruns/ (`cp -r`, `mv`, rsync to another machine) brings a SQLite store that
still names the old location's artifacts: MLflow would read, and write, the old project's files. `configure` and
`connect` rewrite those stored paths to this project's mlruns/ first (`relocate`, one log line), in the copy's own
database only. A `dvc exp run --temp` copy records into the original project, whose store is already in place.
"""

from __future__ import annotations

import logging
import os
import re
import sqlite3
from dataclasses import dataclass
from pathlib import Path
from urllib.parse import unquote, urlparse

import mlflow
from mlflow.tracking import MlflowClient

from dlpipe.errors import BadInputError

log = logging.getLogger(__name__)

DB_NAME = "mlflow.db"
ARTIFACTS = "artifacts"


def project_root(path: Path) -> Path:
    """The project that owns `path`: the first ancestor above a DVC experiment temp dir, else `path`."""
    path = path.resolve()
    parts = path.parts
    for i in range(len(parts) - 3):
        if parts[i] == ".dvc" and parts[i + 1] == "tmp" and parts[i + 2] == "exps":
            return Path(*parts[:i])
    return path


def local_store_uri(root: Path) -> str:
    return f"sqlite:///{project_root(root) / 'mlruns' / DB_NAME}"


def artifact_location(root: Path, experiment: str) -> str:
    safe = experiment.replace("/", "_")
    return (project_root(root) / "mlruns" / ARTIFACTS / safe).as_uri()


# `mlflow.set_tracking_uri` also exports MLFLOW_TRACKING_URI (for subprocesses). A value equal to what dlpipe set
# last in this process is ours, not the user's, and must not pin a later project in the same process to the first
# project's store. dlpipe records what it set, beside MLflow's export, as "<pid>:<uri>": the pid keeps the record to
# the process that set it, so a child process takes the MLFLOW_TRACKING_URI it inherits as set for it.
CONFIGURED_ENV = "DLPIPE_MLFLOW_CONFIGURED"


def _configured_here() -> str | None:
    """The tracking URI dlpipe set in this process (None if none, or if the user's MLFLOW_TRACKING_URI won)."""
    pid, _, uri = os.environ.get(CONFIGURED_ENV, "").partition(":")
    return uri if pid == str(os.getpid()) and uri else None


def _record_configured(uri: str | None) -> None:
    if uri is None:
        os.environ.pop(CONFIGURED_ENV, None)
    else:
        os.environ[CONFIGURED_ENV] = f"{os.getpid()}:{uri}"


def _user_env_uri() -> str | None:
    env = os.environ.get("MLFLOW_TRACKING_URI")
    return env if env and env != _configured_here() else None


def resolve_tracking_uri(configured: str | None, root: Path) -> str:
    """$MLFLOW_TRACKING_URI (set by the user), else params' mlflow.tracking_uri, else the project's SQLite store."""
    return _user_env_uri() or configured or local_store_uri(root)


def is_local(uri: str) -> bool:
    return uri.startswith("sqlite:")


class NoStoreError(BadInputError):
    """A command that reads the MLflow store was pointed at a local store that does not exist."""


def local_db(uri: str) -> Path | None:
    """The SQLite file of a local store URI (None for servers and other backends)."""
    if not is_local(uri):
        return None
    path = uri.removeprefix("sqlite:///") if uri.startswith("sqlite:///") else uri.removeprefix("sqlite://")
    return Path(path) if path and path != ":memory:" else None


def connect(configured: str | None, root: Path, what: str = "this command") -> str:
    """Point MLflow at the existing store without creating anything; NoStoreError if a local one is missing."""
    uri = resolve_tracking_uri(configured, root)
    db = local_db(uri)
    if db is not None and not db.is_file():
        raise NoStoreError(
            f"no MLflow store at {db}: {what} reads the runs and models the pipeline recorded; run the pipeline "
            f"first (dvc repro), or point DLPIPE_ROOT at the project (or MLFLOW_TRACKING_URI at its store)"
        )
    _record_configured(None if _user_env_uri() else uri)
    _relocate_own(uri, root)
    mlflow.set_tracking_uri(uri)
    mlflow.set_registry_uri(uri)
    return uri


# The experiment's declared kind (MLflow 3.4+): model training, not GenAI development. MLflow 3.17's UI decides its
# mode from the URL (views.UI_MODE) and ignores the tag; it is what MLflow's API and other UIs read.
EXPERIMENT_KIND_TAG = "mlflow.experimentKind"
EXPERIMENT_KIND = "custom_model_development"


def configure(configured: str | None, root: Path, experiment: str) -> str:
    """Point MLflow at the store and make sure `experiment` exists; returns the experiment id."""
    uri = resolve_tracking_uri(configured, root)
    _record_configured(None if _user_env_uri() else uri)
    if is_local(uri):
        (project_root(root) / "mlruns").mkdir(parents=True, exist_ok=True)
        _relocate_own(uri, root)
    mlflow.set_tracking_uri(uri)
    mlflow.set_registry_uri(uri)
    client = MlflowClient()
    found = client.get_experiment_by_name(experiment)
    if found is not None:
        exp_id = found.experiment_id
    else:
        location = artifact_location(root, experiment) if is_local(uri) else None
        try:
            exp_id = client.create_experiment(experiment, artifact_location=location)
        except mlflow.exceptions.MlflowException:  # created meanwhile by a parallel worker
            exp_id = client.get_experiment_by_name(experiment).experiment_id
        found = client.get_experiment(exp_id)
    if found.tags.get(EXPERIMENT_KIND_TAG) != EXPERIMENT_KIND:
        client.set_experiment_tag(exp_id, EXPERIMENT_KIND_TAG, EXPERIMENT_KIND)
    mlflow.set_experiment(experiment_id=exp_id)
    return exp_id


# --------------------------------------------------------------------------------------------------- relocation

# Every column of MLflow's SQLite schema (mlflow/store/tracking/dbmodels, model_registry/dbmodels) that holds where
# artifacts are read or written: (table, column, only rows whose `key` is one of these). Tags such as
# mlflow.source.name and dataset sources are provenance (where the code and data were when the run ran) and stay.
STORAGE_COLUMNS: tuple[tuple[str, str, tuple[str, ...] | None], ...] = (
    ("experiments", "artifact_location", None),
    ("runs", "artifact_uri", None),
    ("logged_models", "artifact_location", None),
    ("model_versions", "source", None),
    ("model_versions", "storage_location", None),
    ("trace_tags", "value", ("mlflow.artifactLocation", "mlflow.trace.archiveLocation")),
)
# What `configure` names an experiment's artifacts: <root>/mlruns/artifacts/<experiment>, as a file URI.
_OWN_LOCATION = re.compile(r"(?P<mlruns>.+/mlruns)/artifacts/[^/]+")


class StoreRelocationError(BadInputError):
    """A moved or copied project's store cannot be pointed at its own mlruns/."""


@dataclass(frozen=True)
class Relocation:
    """Stored artifact paths under `old` (a former project's mlruns/) rewritten to `new` (this one's): `rows`."""

    db: Path
    old: str
    new: str
    rows: int


def _as_path(location: str) -> str:
    """A file URI's path (percent-decoded), or the location as it is."""
    return unquote(urlparse(location).path) if location.startswith("file:") else location


def recorded_mlruns(db: Path) -> set[str]:
    """The mlruns/ folders (as stored: file URI or path) that this store's dlpipe experiments keep artifacts in."""
    with sqlite3.connect(f"file:{db}?mode=ro", uri=True) as con:
        rows = con.execute("SELECT artifact_location FROM experiments").fetchall()
    found = (_OWN_LOCATION.fullmatch(loc or "") for (loc,) in rows)
    return {m["mlruns"] for m in found if m}


def _same_folder(a: str, b: Path) -> bool:
    try:
        return os.path.samefile(a, b)
    except OSError:
        return False


def _stale(db: Path, mlruns: Path) -> list[str]:
    """Recorded mlruns/ folders other than `mlruns` (a symlinked, shared folder counts as the same)."""
    current = {mlruns.as_uri(), str(mlruns)}
    return sorted(old for old in recorded_mlruns(db) if old not in current and not _same_folder(_as_path(old), mlruns))


def _tables(con: sqlite3.Connection) -> dict[str, set[str]]:
    names = [r[0] for r in con.execute("SELECT name FROM sqlite_master WHERE type = 'table'")]
    return {t: {c[1] for c in con.execute(f"PRAGMA table_info('{t}')")} for t in names}


def _rewrite(con: sqlite3.Connection, old: str, new: str) -> int:
    """Replace the prefix `old` (a folder: the value itself or `old/...`) by `new` in every storage column."""
    tables, rows = _tables(con), 0
    for table, column, keys in STORAGE_COLUMNS:
        if column not in tables.get(table, ()):
            continue
        args = {"old": old, "new": new, "prefix": old + "/", "n": len(old) + 1, "cut": len(old) + 1}
        where = f"({column} = :old OR substr({column}, 1, :n) = :prefix)"
        if keys:
            args |= {f"k{i}": k for i, k in enumerate(keys)}
            where += f" AND key IN ({', '.join(f':k{i}' for i in range(len(keys)))})"
        sql = f"UPDATE {table} SET {column} = :new || substr({column}, :cut) WHERE {where}"
        rows += con.execute(sql, args).rowcount
    return rows


def relocate(root: Path, announce: bool = True) -> list[Relocation]:
    """Point the local store of the project at `root` at its own mlruns/ if it names another project's.

    Rewrites, in one transaction of this project's database only, every stored artifact path under a recorded
    `<old>/mlruns` (file URI and plain path forms) to `<root>/mlruns`. Returns what it rewrote (nothing when the
    store is missing or already in place), logging one line per rewrite when `announce`. StoreRelocationError when
    the database cannot be rewritten safely.
    """
    mlruns = project_root(root) / "mlruns"
    db = mlruns / DB_NAME
    if not db.is_file():
        return []
    try:
        if not _stale(db, mlruns):
            return []
        if db.stat().st_nlink > 1:  # `cp -al` / rsync --link-dest: writing would change the other store too
            raise StoreRelocationError(
                f"{db}: names artifacts of another project's mlruns/ and is hard-linked to another file; make it "
                f"a file of its own (cp {db} {db}.own && mv {db}.own {db}), then run again"
            )
        done = []
        con = sqlite3.connect(f"file:{db}?mode=rw", uri=True, timeout=60, isolation_level=None)
        try:
            con.execute("BEGIN IMMEDIATE")  # parallel workers: one rewrites, the others then find nothing to do
            for old in _stale(db, mlruns):
                plain_old, plain_new = _as_path(old), str(mlruns)
                rows = _rewrite(con, old, mlruns.as_uri() if old.startswith("file:") else plain_new)
                if plain_old != old:
                    rows += _rewrite(con, plain_old, plain_new)
                done.append(Relocation(db, _as_path(old), plain_new, rows))
            con.execute("COMMIT")
        except BaseException:
            if con.in_transaction:
                con.execute("ROLLBACK")
            raise
        finally:
            con.close()
    except sqlite3.Error as exc:
        raise StoreRelocationError(
            f"{db}: names artifacts of another project's mlruns/ and cannot be rewritten to {mlruns} ({exc}); "
            "make it writable, then run again"
        ) from None
    if done:  # MLflow keeps each run's and model's artifact repository per process, by id: drop the old paths
        from mlflow.tracking._tracking_service import utils as tracking_utils

        getattr(tracking_utils, "_artifact_repos_cache", {}).clear()
    for r in done if announce else ():
        log.warning(
            "MLflow store %s: the project was moved or copied; artifact paths under %s now point to %s "
            "(%d rows rewritten)",
            r.db,
            r.old,
            r.new,
            r.rows,
        )
    return done


def _relocate_own(uri: str, root: Path) -> None:
    """`relocate` when `uri` is this project's own SQLite store (a store named elsewhere is left as it is)."""
    db = local_db(uri)
    if db is not None and db.resolve() == (project_root(root) / "mlruns" / DB_NAME).resolve():
        relocate(root)
