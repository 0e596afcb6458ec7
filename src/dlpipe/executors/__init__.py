"""Where the study's units run: a registry of executors, each a factory of a pool with `dlpipe.parallel`'s
interface (`size`, `free`, `busy`, `submit`, `next_done`, `stop`, `close`).

`local` is the embedded default (worker processes of this machine, `dlpipe.parallel`); `ray` sends each unit to a
Ray cluster as a task (`dlpipe.executors.ray_pool`). Factories are named by module path so that choosing `local`
never imports Ray.
"""

from __future__ import annotations

import importlib
import importlib.util
from typing import TYPE_CHECKING, Any

from dlpipe.config import EXECUTORS

if TYPE_CHECKING:
    from dlpipe.config import Params
    from dlpipe.paths import ProjectPaths

# study.executor (its names: config.EXECUTORS) -> "module:factory"; factory(params) returns the pool the study's
# scheduler submits units to
FACTORIES: dict[str, str] = {
    "local": "dlpipe.stages.study:make_local_pool",
    "ray": "dlpipe.executors.ray_pool:make_pool",
}
if set(FACTORIES) != set(EXECUTORS):
    raise ImportError(f"dlpipe.executors: factories for {sorted(FACTORIES)}, config.EXECUTORS {sorted(EXECUTORS)}")
REMOTE = frozenset({"ray"})  # executors whose units may run on other machines (no shared disk, no local stores)


def make_pool(params: Params) -> Any:
    """The pool of `study.executor`."""
    module, _, name = FACTORIES[params.study.executor].partition(":")
    return getattr(importlib.import_module(module), name)(params)


def local_stores(params: Params, paths: ProjectPaths) -> list[str]:
    """One line per store a remote executor's units could not reach: the MLflow tracking store or the Optuna
    storage, when it is a file on this machine (empty for the local executor)."""
    if params.study.executor not in REMOTE:
        return []
    from dlpipe.tracking.store import resolve_tracking_uri
    from dlpipe.tuning.study import redact, storage_location

    problems = []
    if params.study.executor == "ray" and importlib.util.find_spec("ray") is None:
        problems.append("study.executor: 'ray' needs Ray installed on this machine (pip install 'dlpipe[ray]')")
    uri = resolve_tracking_uri(params.mlflow.tracking_uri, paths.root)
    if _is_local_location(uri):
        problems.append(
            f"mlflow.tracking_uri: {uri!r} is a file on this machine, which units on other {params.study.executor} "
            "nodes cannot reach; allowed with study.executor "
            f"{params.study.executor}: a tracking server, e.g. http://host:5000 (or MLFLOW_TRACKING_URI)"
        )
    if params.tune.enabled:
        storage = storage_location(params, paths)
        if _is_local_location(storage):
            problems.append(
                f"tune.storage: {redact(storage)!r} is a file on this machine, which trials on other "
                f"{params.study.executor} nodes cannot reach; allowed with study.executor {params.study.executor}: "
                "a database server, e.g. postgresql://user@host/optuna"
            )
    return problems


def check_stores(params: Params, paths: ProjectPaths) -> None:
    """Refuse (exit 2) a study on a remote executor whose stores are files on this machine."""
    problems = local_stores(params, paths)
    if problems:
        from dlpipe.errors import ConfigError

        raise ConfigError("\n".join(problems))


def _is_local_location(location: str) -> bool:
    """A path, or a file:/sqlite: URL (a database on this machine's disk)."""
    return "://" not in location or location.split(":", 1)[0].lower() in ("file", "sqlite")
