"""The study's units as Ray tasks: `RayPool` has `dlpipe.parallel`'s pool interface, so the same scheduler
(`stages.scheduler.Study`) submits the same units to a Ray cluster instead of local worker processes.

No shared disk is assumed. The stage's loaded context (the prepared data, its hash, the commit) goes to the
cluster once, through Ray's object store; each unit runs in a scratch project folder on its node, seeded with the
few small files units read (the tuning and cross-validation reports, dvc.lock), and the files it writes there
(models, reports) come back with its result and are written into the project by this process. Runs are logged to
the tracking URI this stage resolved (an MLflow server on a cluster: `check` refuses a local store).

Each task asks `trainer.cpu_threads` CPUs, and one GPU where the cluster has GPUs (Ray sets
`CUDA_VISIBLE_DEVICES`). A task whose node dies is retried by Ray (`MAX_RETRIES`); past that it comes back as a
crashed unit with the reason, like a dead local worker. The runs the lost node left RUNNING are ended KILLED, or
FINISHED when they had recorded their work; a retried fold whose earlier attempt recorded it reuses that run
(`stages.cv.recorded_fold`) instead of training again.
"""

from __future__ import annotations

import contextlib
import dataclasses
import logging
import os
import pickle
import shutil
import socket
import tempfile
import time
from pathlib import Path
from typing import Any

import ray
import ray.exceptions

from dlpipe.config import Params
from dlpipe.parallel import STOP_GRACE_SECONDS, Done, Task
from dlpipe.paths import ProjectPaths
from dlpipe.processes import stop_point

log = logging.getLogger(__name__)

MAX_RETRIES = 2  # attempts after the first when a task's worker or node dies (not when the unit raises)
# what units read from the project besides the shipped context (written by earlier phases, in this process)
INPUT_GLOBS = ("reports/tuning/*.json", "reports/cv/*.json", "dvc.lock")
OUTPUT_DIRS = ("reports", "models")  # what units write, brought back to the project
LOST = (
    ray.exceptions.WorkerCrashedError,
    ray.exceptions.NodeDiedError,
    ray.exceptions.ObjectLostError,
    ray.exceptions.OwnerDiedError,
    ray.exceptions.TaskCancelledError,
)


@dataclasses.dataclass
class Shipped:
    """What every unit needs from the stage process, put in the object store once."""

    context: Any  # StageContext without its MLflow experiment id (set up on the node)
    tracking_uri: str
    env: dict[str, str]  # DVC experiment variables the runs' tags read


@dataclasses.dataclass
class Returned:
    result: Any
    files: dict[str, bytes]  # path relative to the project root -> content, written by the unit
    node: str


def address(params: Params) -> str | None:
    """study.ray_address, else $RAY_ADDRESS, else None (a Ray started on this machine)."""
    return params.study.ray_address or os.environ.get("RAY_ADDRESS") or None


def make_pool(params: Params) -> RayPool:
    return RayPool(params)


class RayPool:
    """Units as Ray tasks, as many at once as the cluster has slots of `trainer.cpu_threads` CPUs (or GPUs)."""

    def __init__(self, params: Params):
        self._owns_ray = not ray.is_initialized()
        if self._owns_ray:
            ray.init(address=address(params), logging_level=logging.WARNING)
        resources = ray.cluster_resources()
        self.cpus = max(1, params.trainer.cpu_threads or 1)
        gpu_ok = params.trainer.accelerator in ("auto", "gpu", "cuda")
        self.gpus = 1 if gpu_ok and resources.get("GPU", 0) >= 1 else 0
        self.size = int(resources.get("GPU", 0)) if self.gpus else max(1, int(resources.get("CPU", 1)) // self.cpus)
        self._run = ray.remote(run_unit).options(
            num_cpus=self.cpus, num_gpus=self.gpus, max_retries=MAX_RETRIES, retry_exceptions=False
        )
        self._shipped: ray.ObjectRef | None = None
        self._ctx: Any = None
        self._running: dict[ray.ObjectRef, Task] = {}
        self._alive_nodes = _alive_nodes()
        log.info("study: Ray cluster of %d node(s), %d unit(s) at once", len(self._alive_nodes), self.size)

    def share(self, ctx: Any) -> None:
        """Ship the stage's loaded context (the prepared data) to the object store, once."""
        self._ctx = ctx
        from dlpipe.tracking.store import resolve_tracking_uri

        uri = resolve_tracking_uri(ctx.params.mlflow.tracking_uri, ctx.paths.root)
        env = {k: v for k, v in os.environ.items() if k.startswith("DVC_")}
        context = dataclasses.replace(ctx, experiment_id=None, _dataset_input=None)
        # pickled here, unpickled once per worker: arrays come back writable (Ray's zero-copy numpy is read-only)
        self._shipped = ray.put(pickle.dumps(Shipped(context, uri, env), protocol=pickle.HIGHEST_PROTOCOL))

    @property
    def free(self) -> int:
        return max(0, self.size - len(self._running))

    @property
    def busy(self) -> int:
        return len(self._running)

    def submit(self, task: Task) -> None:
        if self._shipped is None:
            raise RuntimeError("RayPool.share(context) must come before the first unit")
        files = inputs(self._ctx.paths.root)
        ref = self._run.remote([self._shipped], task.fn, task.args, files)  # in a list: fetched by the node once
        self._running[ref] = task

    def next_done(self) -> Done:
        """Block until a running unit finishes, fails, or is lost with its node (after Ray's retries)."""
        if not self._running:
            raise RuntimeError("no unit is running")
        ready, _ = ray.wait(list(self._running), num_returns=1)
        ref = ready[0]
        task = self._running.pop(ref)
        try:
            returned: Returned = ray.get(ref)
        except ray.exceptions.RayTaskError as exc:  # the unit raised: the caller decides, as with local workers
            cause = exc.cause if isinstance(exc.cause, BaseException) else RuntimeError(str(exc))
            if isinstance(cause, KeyboardInterrupt):
                raise KeyboardInterrupt(f"{task.key}: interrupted on the cluster") from None
            return Done(task, error=cause, details=str(exc))
        except LOST as exc:
            reason = f"{task.key}: lost on the Ray cluster after {MAX_RETRIES} retries ({type(exc).__name__}: {exc})"
            log.error("%s", reason.splitlines()[0])
            self.close_lost_runs()
            return Done(task, crash=reason.splitlines()[0])
        write_back(self._ctx.paths.root, returned.files)
        if _alive_nodes() != self._alive_nodes:  # a node died (its units retried elsewhere) or joined
            self.close_lost_runs()
        return Done(task, result=returned.result)

    def close_lost_runs(self) -> None:
        """End the runs that dead workers or lost nodes left RUNNING (KILLED, or FINISHED when recorded)."""
        self._alive_nodes = _alive_nodes()
        if self._ctx is None or self._ctx.experiment_id is None:
            return
        self._ctx.close_orphans("study")  # workers on this host: judged by their pids
        close_runs_of_lost_hosts(self._ctx.experiment_id)

    def stop(self) -> None:
        """Cancel the running units (a KeyboardInterrupt in each: runs end KILLED) and wait for them a while."""
        for ref in self._running:
            with contextlib.suppress(Exception):
                ray.cancel(ref)
        with contextlib.suppress(Exception):
            ray.wait(list(self._running), num_returns=len(self._running), timeout=STOP_GRACE_SECONDS)
        for ref in self._running:
            with contextlib.suppress(Exception):
                ray.cancel(ref, force=True)
        self._running.clear()
        self.close_lost_runs()

    def close(self) -> None:
        if self._running:
            self.stop()
        else:
            self.close_lost_runs()
        if self._owns_ray:
            ray.shutdown()


def run_unit(shipped: list[ray.ObjectRef], fn: Any, args: tuple, files: dict[str, bytes]) -> Returned:
    """The Ray task: `fn(*args)` on a node, with the context shipped once (see `in_scratch`)."""
    return in_scratch(_fetch(shipped[0]), fn, args, files)


def in_scratch(ship: Shipped, fn: Any, args: tuple, files: dict[str, bytes]) -> Returned:
    """Run `fn(*args)` in a scratch project seeded with `files`, with `ship`'s context as the units' shared context;
    return its result and the files it wrote under `OUTPUT_DIRS`. The project's own folder is never touched."""
    from dlpipe.stages import common
    from dlpipe.stages.runner import setup_logging
    from dlpipe.training.threads import apply_cpu_threads

    setup_logging()
    apply_cpu_threads(ship.context.params.trainer)
    os.environ.update(ship.env)
    scratch = Path(tempfile.mkdtemp(prefix="dlpipe-unit-"))
    try:
        for rel, data in files.items():
            (scratch / rel).parent.mkdir(parents=True, exist_ok=True)
            (scratch / rel).write_bytes(data)
        paths = ProjectPaths(scratch)
        args = tuple(dataclasses.replace(a, paths=paths) if _has_paths(a) else a for a in args)
        params = next((a.params for a in args if hasattr(a, "params")), ship.context.params)
        ctx = dataclasses.replace(ship.context, paths=paths, experiment_id=_tracking(ship, paths, params))
        common._WORKER_CONTEXTS.clear()
        common._WORKER_CONTEXTS[(params.model_dump_json(), paths.root)] = ctx
        result = fn(*args)
        stop_point(f"{getattr(fn, '__name__', fn)}:returned")  # fault tests: a node killed with recorded work
        return Returned(result, _outputs(scratch, files), socket.gethostname())
    finally:
        common._WORKER_CONTEXTS.clear()
        shutil.rmtree(scratch, ignore_errors=True)


_FETCHED: dict[str, Any] = {}  # per worker process: the shipped context, deserialised once


def _fetch(ref: ray.ObjectRef) -> Shipped:
    key = ref.hex()
    if key not in _FETCHED:
        _FETCHED.clear()
        _FETCHED[key] = pickle.loads(ray.get(ref))
    return _FETCHED[key]


def _tracking(ship: Shipped, paths: ProjectPaths, params: Params) -> str:
    """Point MLflow at the stage's tracking URI (as a user's MLFLOW_TRACKING_URI); returns the experiment id."""
    from dlpipe.tracking import store

    os.environ["MLFLOW_TRACKING_URI"] = ship.tracking_uri
    os.environ.pop(store.CONFIGURED_ENV, None)
    return store.configure(ship.tracking_uri, paths.root, params.experiment_name)


def _has_paths(arg: Any) -> bool:
    return dataclasses.is_dataclass(arg) and not isinstance(arg, type) and hasattr(arg, "paths")


def inputs(root: Path) -> dict[str, bytes]:
    return {p.relative_to(root).as_posix(): p.read_bytes() for g in INPUT_GLOBS for p in sorted(root.glob(g))}


def _outputs(scratch: Path, shipped: dict[str, bytes]) -> dict[str, bytes]:
    out = {}
    for top in OUTPUT_DIRS:
        for p in sorted((scratch / top).rglob("*")):
            rel = p.relative_to(scratch).as_posix()
            if p.is_file() and shipped.get(rel) != (data := p.read_bytes()):
                out[rel] = data
    return out


def write_back(root: Path, files: dict[str, bytes]) -> None:
    """Write a unit's outputs into the project: a model folder replaces the old one whole, a report file-wise."""
    from dlpipe.io import atomic_dir, atomic_path

    folders: dict[str, dict[str, bytes]] = {}
    for rel, data in files.items():
        parts = rel.split("/")
        if parts[0] == "models" and len(parts) > 2:
            folders.setdefault("/".join(parts[:2]), {})["/".join(parts[2:])] = data
            continue
        with atomic_path(root / rel) as tmp:
            tmp.write_bytes(data)
    for folder, content in folders.items():
        with atomic_dir(root / folder) as tmp:
            for rel, data in content.items():
                (tmp / rel).parent.mkdir(parents=True, exist_ok=True)
                (tmp / rel).write_bytes(data)


def _alive_nodes() -> frozenset[str]:
    return frozenset(n["NodeID"] for n in ray.nodes() if n.get("Alive"))


def close_runs_of_lost_hosts(experiment_id: str) -> dict[str, str]:
    """End the RUNNING runs owned by a host where no Ray node is alive any more (their pids cannot be looked up from
    here): KILLED, or FINISHED when the run had recorded its work (as `close_orphaned_runs` decides); returns
    {run id: status}."""
    import mlflow
    from mlflow.entities import RunStatus

    from dlpipe.tracking.runs import CLOSED_REASON, KILLED_REASON, recorded

    nodes = ray.nodes()
    alive = {n.get("NodeManagerHostname") for n in nodes if n.get("Alive")}
    lost = {n.get("NodeManagerHostname") for n in nodes if not n.get("Alive")} - alive - {None}
    closed: dict[str, str] = {}
    client = mlflow.MlflowClient()
    for host in sorted(lost):
        clause = f"attributes.status = 'RUNNING' and tags.`dlpipe.host` = '{host}'"
        for run in client.search_runs([experiment_id], clause, max_results=1000):
            reason = f"its Ray node on {host} was lost at {time.strftime('%H:%M:%S')}; closed by dlpipe study"
            if recorded(run):
                status, tag, reason = RunStatus.FINISHED, CLOSED_REASON, f"{reason} after it recorded its work"
            else:
                status, tag = RunStatus.KILLED, KILLED_REASON
            client.set_tag(run.info.run_id, tag, reason)
            client.set_terminated(run.info.run_id, RunStatus.to_string(status))
            closed[run.info.run_id] = RunStatus.to_string(status)
    return closed
