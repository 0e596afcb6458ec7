"""Runs that end honestly, rank-zero-only logging, tags, flattened params and per-epoch metrics.

Every run dlpipe opens carries its owner (`dlpipe.host`, `dlpipe.pid`, `dlpipe.pid_started`), set in the same call
that creates the run, so a run whose process was killed can be recognised later: `close_orphaned_runs` ends such
runs KILLED with a reason (`dlpipe.killed_reason`), and every stage calls it before it starts. A `tracked_run` whose
block completed is tagged `dlpipe.recorded` just before it ends FINISHED: a process killed between the two has
recorded all its work, and the sweep ends that run FINISHED instead (with `dlpipe.closed_reason`), so the work is
reused, not done again. So does a cv fold's run killed after it logged its `fold_report.json`.
"""

from __future__ import annotations

import contextlib
import os
import subprocess
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import mlflow
from mlflow.entities import Metric, Param, RunStatus, RunTag
from mlflow.tracking import MlflowClient

from dlpipe.config import flatten
from dlpipe.errors import ConfigError
from dlpipe.interrupts import deferred_interrupts, interrupted_exit
from dlpipe.processes import Owner
from dlpipe.profile import timed

MAX_BATCH = 100  # MLflow's limit of params/tags per log_batch call
RECORDED_TAG = "dlpipe.recorded"  # set last in a completed tracked_run: everything the run's work wrote is stored
KILLED_REASON = "dlpipe.killed_reason"  # why the sweep ended a run KILLED
CLOSED_REASON = "dlpipe.closed_reason"  # why a run was ended FINISHED by another process than its own
FOLD_REPORT = "fold_report.json"  # a cv fold's result, the last thing its run logs: its presence marks the fold done
SEARCH_PAGE = 200


def is_global_zero() -> bool:
    """True in the process that logs and writes: rank 0 of node 0 (or any non-distributed process)."""
    rank = os.environ.get("RANK") or os.environ.get("LOCAL_RANK") or "0"
    return int(rank) == 0 and int(os.environ.get("NODE_RANK", "0")) == 0


def pipeline_outputs(root: Path) -> list[str]:
    """dvc.lock and every output dvc.yaml declares (outs, metrics, plots): files the stages rewrite, some of them
    committed so that `dvc exp show` has a baseline."""
    try:
        import yaml

        stages = (yaml.safe_load((root / "dvc.yaml").read_text()) or {}).get("stages") or {}
    except (OSError, ValueError, AttributeError):
        stages = {}
    found = ["dvc.lock"]
    for stage in stages.values() if isinstance(stages, dict) else ():
        for kind in ("outs", "metrics", "plots"):
            for entry in (stage or {}).get(kind) or []:
                found += [str(k) for k in entry] if isinstance(entry, dict) else [str(entry)]
    return found


def git_commit(root: Path) -> str:
    """HEAD's commit, with `+dirty` when tracked files other than the pipeline's own outputs differ from it
    ("unknown" outside git)."""
    try:
        head = subprocess.run(["git", "rev-parse", "HEAD"], cwd=root, capture_output=True, text=True, timeout=10)
        if head.returncode != 0:
            return "unknown"
        status = subprocess.run(
            [
                "git",
                "status",
                "--porcelain",
                "--untracked-files=no",
                "--",
                ".",
                *(f":(exclude){path}" for path in pipeline_outputs(root)),
            ],
            cwd=root,
            capture_output=True,
            text=True,
            timeout=30,
        )
    except (OSError, subprocess.SubprocessError):
        return "unknown"
    return head.stdout.strip() + ("+dirty" if status.stdout.strip() else "")


def dvc_tags(root: Path) -> dict[str, str]:
    """Where a run stands in DVC: the experiment (`dvc exp run` sets DVC_EXP_NAME and DVC_EXP_BASELINE_REV), the
    stage running it, and the DVC hashes of the data it read (from dvc.lock), so a run leads back to its experiment."""
    tags = {}
    for env, tag in (
        ("DVC_EXP_NAME", "dvc.exp_name"),
        ("DVC_EXP_BASELINE_REV", "dvc.baseline_rev"),
        ("DVC_STAGE", "dvc.stage"),
    ):
        if os.environ.get(env):
            tags[tag] = os.environ[env]
    try:
        import yaml

        lock = yaml.safe_load((root / "dvc.lock").read_text()) or {}
    except (OSError, ValueError):
        return tags
    for stage, out in (("fetch", "data/raw"), ("prepare", "data/prepared/splits.npz")):
        for entry in (lock.get("stages", {}).get(stage, {}) or {}).get("outs", []) or []:
            if entry.get("path") == out and entry.get("md5"):
                tags[f"dvc.{stage}_md5"] = str(entry["md5"])
    return tags


def standard_tags(
    stage: str,
    arch: str | None,
    params_hash: str,
    dataset: str,
    dataset_hash: str,
    commit: str,
    extra: dict[str, str] | None = None,
) -> dict[str, str]:
    tags = {
        "stage": stage,
        "params_hash": params_hash,
        "dataset": dataset,
        "dataset_hash": dataset_hash,
        "git_commit": commit.removesuffix("+dirty"),
        "git_dirty": str(commit.endswith("+dirty")).lower(),
        "mlflow.source.git.commit": commit.removesuffix("+dirty"),
        **(extra or {}),
    }
    if arch:
        tags["architecture"] = arch
    return tags


@contextlib.contextmanager
def tracked_run(**start_kwargs: Any) -> Iterator[mlflow.ActiveRun]:
    """`mlflow.start_run` that ends FINISHED, FAILED on an exception, KILLED on Ctrl-C/SIGTERM.

    An interrupt that Lightning turned into `SystemExit(1)` ends the run KILLED too and is re-raised as the
    KeyboardInterrupt it was, so enclosing runs end KILLED and stages exit 130.
    """
    start_kwargs["tags"] = {**(start_kwargs.get("tags") or {}), **Owner.current().to_tags()}
    with timed("logging"):
        run = mlflow.start_run(**start_kwargs)
    try:
        yield run
    except KeyboardInterrupt:
        mlflow.end_run(RunStatus.to_string(RunStatus.KILLED))
        raise
    except SystemExit as exc:
        if not interrupted_exit(exc):
            mlflow.end_run(RunStatus.to_string(RunStatus.FAILED))
            raise
        mlflow.end_run(RunStatus.to_string(RunStatus.KILLED))
        raise KeyboardInterrupt from exc
    except BaseException:
        mlflow.end_run(RunStatus.to_string(RunStatus.FAILED))
        raise
    else:
        # The block's work is done and recorded: an interrupt now would leave the run RUNNING (MLflow drops it from
        # the active runs before it writes the status) and its finished work would be redone. Raise it after. The
        # tag covers what deferring cannot: a SIGKILL between it and the status (see close_orphaned_runs).
        with timed("logging"), deferred_interrupts():
            mlflow.flush_async_logging()  # the run's queued metrics are part of what it recorded
            mlflow.set_tag(RECORDED_TAG, "true")
            mlflow.end_run(RunStatus.to_string(RunStatus.FINISHED))


def open_run(experiment_id: str, name: str, tags: dict[str, str], resume: str | None = None) -> str:
    """Create (or reopen `resume`) a run held by id, not as the fluent active run: a parent whose children run in
    other processes while this process interleaves other work. End it with `end_run`."""
    client = MlflowClient()
    owner = Owner.current().to_tags()
    if resume is not None:
        client.update_run(resume, status=RunStatus.to_string(RunStatus.RUNNING))
        set_tags(resume, owner)
        return resume
    return client.create_run(experiment_id, run_name=name, tags={**tags, **owner}).info.run_id


def end_run(run_id: str, error: BaseException | None = None) -> None:
    """End a run opened by `open_run`: FINISHED, KILLED for an interrupt, FAILED for any other error."""
    if error is None:
        status = RunStatus.FINISHED
    elif isinstance(error, KeyboardInterrupt) or interrupted_exit(error):
        status = RunStatus.KILLED
    else:
        status = RunStatus.FAILED
    MlflowClient().set_terminated(run_id, RunStatus.to_string(status))


@contextlib.contextmanager
def closing_run(run_id: str | None) -> Iterator[None]:
    """End a run opened by `open_run` when the block ends, with the honest status (nothing for None)."""
    try:
        yield
    except BaseException as exc:
        if run_id:
            end_run(run_id, exc)
        raise
    if run_id:
        end_run(run_id)


def close_orphaned_runs(experiment_id: str, closed_by: str) -> dict[str, str]:
    """End every RUNNING run of this host whose owning process is gone: KILLED with `dlpipe.killed_reason`, or
    FINISHED with `dlpipe.closed_reason` when the run had recorded its work (`RECORDED_TAG`). Returns {run id:
    status}."""
    client = MlflowClient()
    owner = Owner.current()
    clause = f"attributes.status = 'RUNNING' and tags.`dlpipe.host` = '{owner.host}'"
    closed = {}
    for run in client.search_runs([experiment_id], clause, max_results=SEARCH_PAGE * 5):
        dead = Owner.from_tags(run.data.tags)
        if dead is None or not dead.is_dead():
            continue
        who = f"process {dead.pid} on {dead.host}"
        if recorded(run):
            status, tag = RunStatus.FINISHED, CLOSED_REASON
            reason = f"{who} ended after recording this run's work, before closing it; closed by {closed_by}"
        else:
            status, tag = RunStatus.KILLED, KILLED_REASON
            reason = f"{who} ended without closing this run (killed?); closed by {closed_by}"
        client.set_tag(run.info.run_id, tag, reason)
        client.set_terminated(run.info.run_id, RunStatus.to_string(status))
        closed[run.info.run_id] = RunStatus.to_string(status)
    return closed


def recorded(run: mlflow.entities.Run) -> bool:
    """Whether the run recorded all its work (`RECORDED_TAG`, or a cv fold's whole report), even if still RUNNING."""
    return run.data.tags.get(RECORDED_TAG) == "true" or holds_fold_report(run)


def holds_fold_report(run: mlflow.entities.Run) -> bool:
    """Whether the run logged a whole fold report (killed between it and `RECORDED_TAG`, its fold is done)."""
    if "fold" not in run.data.tags:
        return False
    try:
        return isinstance(mlflow.artifacts.load_dict(f"{run.info.artifact_uri}/{FOLD_REPORT}"), dict)
    except Exception:  # no report, or a torn one
        return False


def log_params(run_id: str, flat: dict[str, Any]) -> None:
    """Log params in batches (MLflow accepts 100 per call); None becomes 'null'.

    Values that are still nested (dicts, pydantic models, e.g. from `config.flatten` of a dict holding models)
    are expanded to dotted keys, so MLflow shows `train.lr`, never a model's repr under `train`.
    """
    client = MlflowClient()
    items = [Param(k, "null" if v is None else str(v)) for k, v in sorted(flatten(flat).items())]
    with timed("logging"):
        for i in range(0, len(items), MAX_BATCH):
            client.log_batch(run_id, params=items[i : i + MAX_BATCH], synchronous=True)


def set_tags(run_id: str, tags: dict[str, str]) -> None:
    client = MlflowClient()
    items = [RunTag(k, str(v)) for k, v in tags.items()]
    with timed("logging"):
        for i in range(0, len(items), MAX_BATCH):
            client.log_batch(run_id, tags=items[i : i + MAX_BATCH], synchronous=True)


MAX_ITEMS = 1000  # MLflow's limit of metrics, and of metrics + params + tags, per log_batch call


METRICS_EVERY_ENV = "DLPIPE_METRICS_EVERY"  # epochs between writes of a fit's buffered epoch metrics
METRICS_EVERY = 10  # its default: a live MLflow UI sees a long fit's progress, at a tenth of the store writes


def metrics_every() -> int:
    """Epochs between writes of a fit's (or trial's) buffered epoch metrics: $DLPIPE_METRICS_EVERY, else 10
    (1 = every epoch, as a fault test that must see a fit in training needs)."""
    raw = os.environ.get(METRICS_EVERY_ENV, "").strip()
    if not raw:
        return METRICS_EVERY
    if not raw.isdigit() or int(raw) < 1:
        raise ConfigError(f"{METRICS_EVERY_ENV}={raw!r}: expected a whole number of epochs >= 1")
    return int(raw)


class MetricBuffer:
    """Metrics of many steps (a fit's epochs) kept in memory, written by `log_batch` in as few calls as MLflow takes:
    one store write per fit instead of one per epoch (each is a transaction of the tracking store)."""

    def __init__(self) -> None:
        self.items: list[Metric] = []

    def add(self, metrics: dict[str, float], step: int) -> None:
        now = int(time.time() * 1000)
        self.items += [Metric(k, float(v), now, step) for k, v in metrics.items()]

    def take(self) -> list[Metric]:
        items, self.items = self.items, []
        return items


def log_batch(
    run_id: str, metrics: list[Metric] | None = None, params: dict[str, Any] | None = None, tags: dict | None = None
) -> None:
    """Metrics, params and tags of `run_id` in as few synchronous calls as MLflow's limits allow."""
    ms = list(metrics or [])
    ps = [Param(k, "null" if v is None else str(v)) for k, v in sorted(flatten(params or {}).items())]
    ts = [RunTag(k, str(v)) for k, v in (tags or {}).items()]
    client = MlflowClient()
    with timed("logging"):
        while ms or ps or ts:
            p, t = ps[:MAX_BATCH], ts[:MAX_BATCH]
            m = ms[: MAX_ITEMS - len(p) - len(t)]
            ps, ts, ms = ps[len(p) :], ts[len(t) :], ms[len(m) :]
            client.log_batch(run_id, metrics=m, params=p, tags=t, synchronous=True)


def log_metrics(run_id: str, metrics: dict[str, float], step: int = 0, synchronous: bool = True) -> None:
    now = int(time.time() * 1000)
    batch = [Metric(k, float(v), now, step) for k, v in metrics.items()]
    with timed("logging"):
        for i in range(0, len(batch), 1000):
            MlflowClient().log_batch(run_id, metrics=batch[i : i + 1000], synchronous=synchronous)


def finished_child_runs(experiment_id: str, parent_run_id: str, **tags: str) -> list[mlflow.entities.Run]:
    """FINISHED child runs of `parent_run_id` carrying every tag in `tags`."""
    clauses = [f"tags.mlflow.parentRunId = '{parent_run_id}'", "attributes.status = 'FINISHED'"]
    clauses += [f"tags.{k} = '{v}'" for k, v in tags.items()]
    return MlflowClient().search_runs([experiment_id], " and ".join(clauses), max_results=1000)


def latest_run(experiment_id: str, **tags: str) -> mlflow.entities.Run | None:
    """The newest top-level run with these tags, if any.

    Child runs carry the same tags and start later than their parent, so this pages on until it meets a run
    without a parent (a parent with more than one page of newer children must still be found).
    """
    clause = " and ".join(f"tags.{k} = '{v}'" for k, v in tags.items())
    client = MlflowClient()
    token = None
    while True:
        page = client.search_runs(
            [experiment_id], clause, order_by=["attributes.start_time DESC"], max_results=SEARCH_PAGE, page_token=token
        )
        for r in page:
            if "mlflow.parentRunId" not in r.data.tags:
                return r
        token = page.token
        if not token:
            return None
