"""Runs that end honestly, rank-zero-only logging, tags, flattened params and per-epoch metrics."""

from __future__ import annotations

import contextlib
import os
import subprocess
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import lightning as L
import mlflow
from lightning.pytorch.callbacks import Callback
from mlflow.entities import Metric, Param, RunStatus, RunTag
from mlflow.tracking import MlflowClient

from dlpipe.config import flatten

MAX_BATCH = 100  # MLflow's limit of params/tags per log_batch call
SEARCH_PAGE = 200


def is_global_zero() -> bool:
    """True in the process that logs and writes: rank 0 of node 0 (or any non-distributed process)."""
    rank = os.environ.get("RANK") or os.environ.get("LOCAL_RANK") or "0"
    return int(rank) == 0 and int(os.environ.get("NODE_RANK", "0")) == 0


def git_commit(root: Path) -> str:
    try:
        out = subprocess.run(["git", "rev-parse", "HEAD"], cwd=root, capture_output=True, text=True, timeout=10)
    except (OSError, subprocess.SubprocessError):
        return "unknown"
    return out.stdout.strip() if out.returncode == 0 else "unknown"


def standard_tags(
    stage: str, arch: str | None, params_hash: str, dataset: str, dataset_hash: str, commit: str
) -> dict[str, str]:
    tags = {
        "stage": stage,
        "params_hash": params_hash,
        "dataset": dataset,
        "dataset_hash": dataset_hash,
        "git_commit": commit,
        "mlflow.source.git.commit": commit,
    }
    if arch:
        tags["architecture"] = arch
    return tags


def interrupted_exit(exc: BaseException) -> bool:
    """True for the `SystemExit` Lightning raises after it caught Ctrl-C (or SIGTERM turned into KeyboardInterrupt).

    Lightning's `Trainer` handles a KeyboardInterrupt inside `fit`/`validate`/`test` by calling `sys.exit(1)` from its
    `except KeyboardInterrupt` block, so the interrupt survives only as the `SystemExit`'s context.
    """
    return isinstance(exc, SystemExit) and isinstance(exc.__context__, KeyboardInterrupt)


@contextlib.contextmanager
def tracked_run(**start_kwargs: Any) -> Iterator[mlflow.ActiveRun]:
    """`mlflow.start_run` that ends FINISHED, FAILED on an exception, KILLED on Ctrl-C/SIGTERM.

    An interrupt that Lightning turned into `SystemExit(1)` ends the run KILLED too and is re-raised as the
    KeyboardInterrupt it was, so enclosing runs end KILLED and stages exit 130.
    """
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
        mlflow.end_run(RunStatus.to_string(RunStatus.FINISHED))


def log_params(run_id: str, flat: dict[str, Any]) -> None:
    """Log params in batches (MLflow accepts 100 per call); None becomes 'null'.

    Values that are still nested (dicts, pydantic models, e.g. from `config.flatten` of a dict holding models)
    are expanded to dotted keys, so MLflow shows `train.lr`, never a model's repr under `train`.
    """
    client = MlflowClient()
    items = [Param(k, "null" if v is None else str(v)) for k, v in sorted(flatten(flat).items())]
    for i in range(0, len(items), MAX_BATCH):
        client.log_batch(run_id, params=items[i : i + MAX_BATCH], synchronous=True)


def set_tags(run_id: str, tags: dict[str, str]) -> None:
    client = MlflowClient()
    items = [RunTag(k, str(v)) for k, v in tags.items()]
    for i in range(0, len(items), MAX_BATCH):
        client.log_batch(run_id, tags=items[i : i + MAX_BATCH], synchronous=True)


def log_metrics(run_id: str, metrics: dict[str, float], step: int = 0, synchronous: bool = True) -> None:
    now = int(time.time() * 1000)
    batch = [Metric(k, float(v), now, step) for k, v in metrics.items()]
    for i in range(0, len(batch), 1000):
        MlflowClient().log_batch(run_id, metrics=batch[i : i + 1000], synchronous=synchronous)


class EpochMetricsLogger(Callback):
    """Logs every epoch's train_*/val_* metrics to `run_id` as one asynchronous batch (rank 0 only)."""

    def __init__(self, run_id: str):
        self.run_id = run_id

    def on_train_epoch_end(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        if not trainer.is_global_zero:
            return
        metrics = {k: float(v) for k, v in trainer.callback_metrics.items() if k.startswith(("train_", "val_"))}
        log_metrics(self.run_id, metrics, step=trainer.current_epoch, synchronous=False)


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
        page = client.search_runs([experiment_id], clause, order_by=["attributes.start_time DESC"],
                                  max_results=SEARCH_PAGE, page_token=token)  # fmt: skip
        for r in page:
            if "mlflow.parentRunId" not in r.data.tags:
                return r
        token = page.token
        if not token:
            return None
