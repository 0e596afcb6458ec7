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

A local store that another process holds locked, a store that is not a readable SQLite database, and a full disk
are each reported in one line (`explain`, used where a stage ends; `probe`, the check stage's cheap look before
DVC deletes any output): MLflow itself waits `LOCK_WAIT_SECONDS` for a lock, then dumps the SQL it tried.
"""

from __future__ import annotations

import errno
import logging
import os
import re
import sqlite3
import time
from dataclasses import dataclass
from pathlib import Path
from urllib.parse import unquote, urlparse

from dlpipe.errors import BadInputError, DlpipeError, OutputNotWritable

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
    import mlflow  # imported here: the check stage uses this module's probe without MLflow

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
    import mlflow
    from mlflow.tracking import MlflowClient

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
# Tags that name a file of the project by its absolute path (the Optuna journal): (table, key column, value column,
# keys). They follow the project root, not mlruns/; a database URL or a file outside the project stays.
PROJECT_PATH_TAGS: tuple[tuple[str, str, str, tuple[str, ...]], ...] = (
    ("tags", "key", "value", ("optuna.storage",)),
    ("logged_model_tags", "tag_key", "tag_value", ("optuna.storage",)),
    ("model_version_tags", "key", "value", ("optuna.storage",)),
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
    with sqlite3.connect(f"file:{db}?mode=ro", uri=True, timeout=LOCK_WAIT_SECONDS) as con:
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


_STORAGE: Columns = tuple((table, column, "key", keys) for table, column, keys in STORAGE_COLUMNS)
_PROJECT_TAGS: Columns = tuple((table, value, key, keys) for table, key, value, keys in PROJECT_PATH_TAGS)


def _tables(con: sqlite3.Connection) -> dict[str, set[str]]:
    names = [r[0] for r in con.execute("SELECT name FROM sqlite_master WHERE type = 'table'")]
    return {t: {c[1] for c in con.execute(f"PRAGMA table_info('{t}')")} for t in names}


Columns = tuple[tuple[str, str, str, tuple[str, ...] | None], ...]  # (table, column, key column, keys or None)


def _rewrite(con: sqlite3.Connection, old: str, new: str, columns: Columns) -> int:
    """Replace the prefix `old` (a folder: the value itself or `old/...`) by `new` in each (table, column, key
    column, keys) of `columns`."""
    tables, rows = _tables(con), 0
    for table, column, key_column, keys in columns:
        if column not in tables.get(table, ()):
            continue
        args = {"old": old, "new": new, "prefix": old + "/", "n": len(old) + 1, "cut": len(old) + 1}
        where = f"({column} = :old OR substr({column}, 1, :n) = :prefix)"
        if keys:
            args |= {f"k{i}": k for i, k in enumerate(keys)}
            where += f" AND {key_column} IN ({', '.join(f':k{i}' for i in range(len(keys)))})"
        sql = f"UPDATE {table} SET {column} = :new || substr({column}, :cut) WHERE {where}"
        rows += con.execute(sql, args).rowcount
    return rows


def relocate(root: Path, announce: bool = True) -> list[Relocation]:
    """Point the local store of the project at `root` at its own mlruns/ if it names another project's.

    Rewrites, in one transaction of this project's database only, every stored artifact path under a recorded
    `<old>/mlruns` (file URI and plain path forms) to `<root>/mlruns`, and the Optuna journal paths of
    PROJECT_PATH_TAGS under `<old>` to `<root>`. Returns what it rewrote (nothing when the
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
                rows = _rewrite(con, old, mlruns.as_uri() if old.startswith("file:") else plain_new, _STORAGE)
                if plain_old != old:
                    rows += _rewrite(con, plain_old, plain_new, _STORAGE)
                rows += _rewrite(con, str(Path(plain_old).parent), str(mlruns.parent), _PROJECT_TAGS)
                done.append(Relocation(db, _as_path(old), plain_new, rows))
            con.execute("COMMIT")
        except BaseException:
            if con.in_transaction:
                con.execute("ROLLBACK")
            raise
        finally:
            con.close()
    except sqlite3.Error as exc:
        known = explain(exc, db)
        if known is not None:  # locked, corrupt or a full disk: not a question of permissions
            raise known from None
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


# --------------------------------------------------------------------------------------------------- health

LOCK_WAIT_SECONDS = 20.0  # as long as MLflow waits for a locked SQLite store (its busy_timeout), then one line
LOCKED = "database is locked"
FULL = "database or disk is full"
CORRUPT = ("file is not a database", "database disk image is malformed")


class StoreLockedError(DlpipeError):
    """Another process holds the local MLflow store locked (an open transaction) longer than the wait allows."""


class StoreCorruptError(DlpipeError):
    """The local MLflow store is not a readable SQLite database."""


class DiskFullError(OutputNotWritable):
    """No space left where a stage writes."""


class KnownStoreErrors(logging.Filter):
    """Drops MLflow's own multi-line log of an error that `explain` reports in one line (the stage prints it)."""

    def filter(self, record: logging.LogRecord) -> bool:
        exc = record.exc_info[1] if record.exc_info else None
        return explain(exc if exc is not None else Exception(record.getMessage())) is None


def lock_holders(db: Path) -> list[int]:
    """Pids of other processes holding a lock on `db` (Linux /proc/locks; [] where it cannot tell)."""
    try:
        st = db.stat()
        table = Path("/proc/locks").read_text()
    except OSError:
        return []
    inode = f"{os.major(st.st_dev):02x}:{os.minor(st.st_dev):02x}:{st.st_ino}"
    pids = set()
    for line in table.splitlines():
        fields = line.split()  # "1: POSIX  ADVISORY  WRITE 1234 00:2f:5678 0 EOF" (a "->" marks a waiter)
        if "->" in fields or len(fields) < 6:
            continue
        if fields[5] == inode and fields[4].isdigit() and int(fields[4]) != os.getpid():
            pids.add(int(fields[4]))
    return sorted(pids)


def locked_error(db: Path, waited: float) -> StoreLockedError:
    holders = lock_holders(db)
    who = f"process {', '.join(map(str, holders))}" if holders else "another process"
    return StoreLockedError(
        f"MLflow store {db} is locked by {who} (waited {waited:.0f}s): end that process's open transaction (an "
        "sqlite3 shell, a database browser, another tracking server), then run again"
    )


def corrupt_error(db: Path, why: str) -> StoreCorruptError:
    return StoreCorruptError(
        f"MLflow store {db} is not a readable SQLite database ({why}): restore it from a backup, or move it aside "
        "(then a new, empty store is created)"
    )


def full_error(folder: Path | None, why: str) -> DiskFullError:
    where = f"the device of {folder}" if folder is not None else "the device a stage writes to"
    return DiskFullError(f"no space left on {where} ({why}): free some space, then run again")


def _chain(exc: BaseException) -> list[BaseException]:
    """`exc`, its causes and contexts, and the driver errors SQLAlchemy wraps (`orig`), each once."""
    seen: list[BaseException] = []
    todo = [exc]
    while todo:
        e = todo.pop()
        if e is None or any(e is s for s in seen) or len(seen) > 50:
            continue
        seen.append(e)
        todo += [e.__cause__, e.__context__, getattr(e, "orig", None)]
    return seen


def explain(exc: BaseException, db: Path | None = None) -> DlpipeError | None:
    """A one-line error for a locked or corrupt local store or a full disk anywhere in `exc`'s chain; None for any
    other error. `db`: the store (default: the SQLite store MLflow is pointed at)."""
    if db is None:
        db = local_db(os.environ.get("MLFLOW_TRACKING_URI", ""))
    for e in _chain(exc):
        if isinstance(e, OSError) and e.errno == errno.ENOSPC:
            return full_error(Path(e.filename).parent if e.filename else None, os.strerror(errno.ENOSPC))
    text = "\n".join(str(e) for e in _chain(exc) if isinstance(e, sqlite3.Error) or "sqlite3" in type(e).__module__)
    text = text or str(exc)
    name = db if db is not None else Path("mlruns") / DB_NAME
    if FULL in text:
        return full_error(name.parent, FULL)
    if LOCKED in text:
        return locked_error(name, LOCK_WAIT_SECONDS)
    for why in CORRUPT:
        if why in text:
            return corrupt_error(name, why)
    return None


def probe(configured: str | None, root: Path, wait: float | None = None) -> None:
    """Refuse, in one line, a local store that is locked (after waiting `wait` seconds) or not a readable SQLite
    database. Cheap: it opens the file and reads the schema page and MLflow's schema version; a store that does not
    exist yet, or a tracking server, is left to the stages."""
    db = local_db(resolve_tracking_uri(configured, root))
    if db is None or not db.is_file():
        return
    wait = LOCK_WAIT_SECONDS if wait is None else wait
    start = time.monotonic()
    try:
        con = sqlite3.connect(f"file:{db}?mode=rw", uri=True, timeout=wait)
        try:
            tables = {name for (name,) in con.execute("SELECT name FROM sqlite_master WHERE type = 'table'")}
            if "alembic_version" in tables:
                con.execute("SELECT version_num FROM alembic_version").fetchall()
        finally:
            con.close()
    except sqlite3.Error as exc:
        if LOCKED in str(exc):
            raise locked_error(db, time.monotonic() - start) from None
        raise explain(exc, db) or corrupt_error(db, str(exc)) from None


def probe_params(raw: object, root: Path) -> None:
    """`probe` the store that raw (unvalidated) params name: `mlflow.tracking_uri`, or the project's own."""
    section = raw.get("mlflow") if isinstance(raw, dict) else None
    configured = section.get("tracking_uri") if isinstance(section, dict) else None
    probe(configured if isinstance(configured, str) and configured else None, root)
