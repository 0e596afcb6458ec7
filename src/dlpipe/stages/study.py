"""study: tune, cross-validate and train every architecture, the units spread over parallel worker processes.

For each architecture the phases run in order: tuning (`stages.tune`), cross-validation (`stages.cv`), the final
fit (`stages.train`). Their units — a study's trials, a fold, a final fit — go to a pool of workers that imported
the training stack once (`trainer.workers`; auto = cores / trainer.cpu_threads, or one per GPU), so both cores of
a laptop are busy with different architectures (or folds) at once. An architecture's own study runs its trials one
after another (`tune.workers: 1`), so the trials, and everything after them, do not depend on the number of
workers. Under DDP (several devices or nodes) every rank runs the units in one fixed order in its own process.

Nothing is repeated that is already done: a finished study runs no trial, finished folds are reused, a final fit
with the same params hash is reused. A failed or crashed unit fails its architecture (its runs end FAILED or
KILLED with the reason) while the others go on; the stage then exits 1 naming what failed, and a rerun completes
only that.
"""

from __future__ import annotations

import functools
import logging
import os
from typing import Any

from dlpipe.config import Params, TrainerParams
from dlpipe.errors import BadInputError, DlpipeError
from dlpipe.io import check_writable
from dlpipe.parallel import ProcessPool, SerialPool, visible_devices, worker_env
from dlpipe.paths import ProjectPaths

log = logging.getLogger(__name__)
STAGE = "study"
WORKER_MODULES = ("dlpipe.stages.tune", "dlpipe.stages.cv", "dlpipe.stages.train")  # imported once, by the forkserver


def write_tuned_params(params: Params, paths: ProjectPaths) -> None:
    """reports/tuned.yaml: {architecture: {train./model. key: value}} of the tuned params, so that `dvc exp show` and
    `dvc params diff` show what Optuna chose beside what params.yaml set (every value survives DVC's dvc.lock)."""
    from dlpipe.io import params_yaml, read_json, write_text

    tuned = {arch: read_json(paths.tuning_report(arch)).get("best_params", {}) for arch in params.architectures}
    write_text(paths.tuned_params, params_yaml(tuned))


def pool_size(trainer: TrainerParams) -> int:
    """Worker processes for `trainer.workers`: 1 under DDP; auto = one per GPU, else cores / cpu_threads."""
    if trainer.distributed:
        return 1
    if trainer.workers != "auto":
        return int(trainer.workers)
    if trainer.accelerator in ("auto", "gpu", "cuda"):
        gpus = visible_devices()
        if gpus:
            return len(gpus)
    cores = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count() or 1
    return max(1, cores // (trainer.cpu_threads or cores))


def make_pool(params: Params) -> Any:
    """The pool of `study.executor` (dlpipe.executors): local worker processes, or a Ray cluster."""
    from dlpipe.executors import make_pool as executor_pool

    return executor_pool(params)


def make_local_pool(params: Params) -> ProcessPool | SerialPool:
    size = pool_size(params.trainer)
    if size <= 1:
        return SerialPool()
    gpus = visible_devices() if params.trainer.accelerator in ("auto", "gpu", "cuda") else []
    log.info("study: %d worker processes%s", size, f", one per GPU ({', '.join(gpus)})" if gpus else "")
    init = functools.partial(init_worker, params.trainer)
    return ProcessPool(size, WORKER_MODULES, init=init, env=functools.partial(worker_env, devices=gpus))


def init_worker(trainer: TrainerParams, index: int) -> None:
    from dlpipe.stages.runner import setup_logging
    from dlpipe.training.threads import apply_cpu_threads

    setup_logging()
    apply_cpu_threads(trainer)


def run(params: Params, paths: ProjectPaths) -> dict[str, Any]:
    """Tune, cross-validate and train every architecture in `params`; returns {architecture: outcome}."""
    check_writable(paths.reports / "tuning", paths.reports / "cv", paths.reports / "test", paths.models)
    pool = make_pool(params)  # its workers start (and import) in the background while this process sets up
    try:
        from dlpipe.stages.common import StageContext
        from dlpipe.stages.scheduler import Study

        ctx = StageContext.load(params, paths)
        ctx.check_against_data()
        ctx.close_orphans(STAGE)
        pool.share(ctx)
        failures = Study(ctx, pool).run()
    finally:
        pool.close()
    if not failures:
        write_tuned_params(params, paths)
    if failures:
        listing = "; ".join(f"{arch}: {state.failed}" for arch, state in failures.items())
        if all(isinstance(state.error, BadInputError) for state in failures.values()):
            raise BadInputError(listing)
        raise DlpipeError(
            f"{len(failures)} of {len(params.architectures)} architecture(s) failed ({listing}); "
            "run it again to complete them (finished work is reused)"
        )
    return {arch: "done" for arch in params.architectures}
