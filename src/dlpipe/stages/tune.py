"""tune@<arch>: an Optuna study per architecture; writes reports/tuning/<arch>.json with the best params.

The study lives in its storage (journal file under optuna/, or `tune.storage`), not in the DVC outputs, so an
interrupted stage resumes it: same params, same study name, and only the remaining trials run. `tune.workers: N`
runs N `dlpipe tune-worker` processes against the storage; more machines may join with
`dlpipe tune-worker --arch <arch>` (same params.yaml and a shared `tune.storage`).

MLflow: a parent run per architecture (tags stage=tune, params_hash = the study's hash, study_name), resumed
with the study; one child run per trial (see dlpipe.tuning.tracking); at the end the study's plots, trials table
and report as artifacts. `reports/tuning/<arch>.json` (`best_params` as dotted train./model. keys with their real
values) is what `stages.common.model_spec` applies in cv and train.
"""

from __future__ import annotations

import argparse
import contextlib
import logging
import signal
import tempfile
from pathlib import Path
from typing import Any

import mlflow
import yaml

from dlpipe.config import Params, flatten, load_params
from dlpipe.errors import ConfigError, DlpipeError
from dlpipe.io import write_json, write_text
from dlpipe.paths import ProjectPaths
from dlpipe.stages.common import StageContext, tuning_report_path
from dlpipe.tracking.runs import is_global_zero, latest_run, log_metrics, log_params, set_tags, tracked_run
from dlpipe.tuning import workers as W
from dlpipe.tuning.objective import Objective
from dlpipe.tuning.space import SearchSpace
from dlpipe.tuning.study import (
    ATTR_ERROR,
    DIRECTION,
    FINISHED,
    StudyHandle,
    best_trial,
    check_sampler,
    counted_failures,
    epochs_per_fit,
    monitor_for,
    open_study,
    state_counts,
)
from dlpipe.tuning.tracking import TrialTracker, log_study_plots

log = logging.getLogger(__name__)
STAGE = "tune"


def report_path(paths: ProjectPaths, arch: str) -> Path:
    return tuning_report_path(paths, arch)


def run(params: Params, paths: ProjectPaths, arch: str) -> dict:
    """Tune `arch` (or record that it is not tuned) and write its report; returns the report."""
    space = SearchSpace.for_arch(params, arch)
    if not params.tune.enabled or not len(space):
        reason = "tune.enabled is false" if not params.tune.enabled else f"the search space of {arch} is empty"
        log.info("tune %s: not tuned (%s); the params stay as they are", arch, reason)
        out = untuned_report(params, arch, reason)
        if is_global_zero():
            write_json(report_path(paths, arch), out)
        return out
    check_settings(params, arch, space)
    ctx = StageContext.load(params, paths)
    check_data(params, ctx)
    handle = open_study(params, paths, arch, space, ctx.dataset_hash)
    zero = is_global_zero()
    tags = {**ctx.tags(STAGE, arch, handle.hash), "study_name": handle.name}
    parent = latest_run(ctx.experiment_id, stage=STAGE, architecture=arch, params_hash=handle.hash) if zero else None
    start = {"run_id": parent.info.run_id} if parent else {"run_name": f"tune-{arch}"}
    counts = state_counts(handle.study)
    log.info("tune %s: study %s in %s (%d of %d trials finished)", arch, handle.name, handle.storage,
             counts["COMPLETE"] + counts["PRUNED"], params.tune.n_trials)  # fmt: skip
    with tracked_run(**start) if zero else contextlib.nullcontext() as run_:
        run_id = run_.info.run_id if run_ else None
        if run_id and parent is None:
            set_tags(run_id, tags)
            log_params(run_id, parent_params(params, arch, space, handle))
            ctx.log_dataset()
        stopped = optimize(params, paths, arch, space, ctx, handle, run_id, tags)
        out = summarize(params, arch, space, handle, stopped, run_id)
        if run_id:
            log_summary(run_id, handle, out)
        if out["best_value"] is None:
            raise DlpipeError(no_result_message(arch, handle))
    if zero:
        write_json(report_path(paths, arch), out)
        mlflow.flush_async_logging()
    log.info("tune %s: best %s %.4f (trial %d) with %s; trials %s", arch, out["metric"], out["best_value"],
             out["best_trial"], out["best_params"], out["trials"])  # fmt: skip
    return out


def optimize(params: Params, paths: ProjectPaths, arch: str, space: SearchSpace, ctx: StageContext,
             handle: StudyHandle, run_id: str | None, tags: dict[str, str]) -> str:  # fmt: skip
    """Run the remaining trials: in this process (workers: 1) or in `tune.workers` worker processes."""
    n = params.tune.workers
    if n == 1:
        tracker = TrialTracker(arch, run_id, tags, params.selection.metric) if run_id else None
        runner = W.TrialRunner(handle.study, Objective(params, arch, space, ctx.data), params.tune.n_trials,
                               W.worker_id(0), tracker)  # fmt: skip
        return W.run_trials(runner, timeout=params.tune.timeout)
    if sum(t.state in FINISHED for t in handle.study.get_trials(deepcopy=False)) >= params.tune.n_trials:
        return "budget"  # nothing left: no worker to start
    with tempfile.TemporaryDirectory(prefix="dlpipe-tune-") as tmp:
        params_file = Path(tmp) / "params.yaml"  # the validated params as this process sees them
        write_text(params_file, yaml.safe_dump(params_document(params), sort_keys=False))
        procs = W.start_workers(n, arch, params_file, paths.root, run_id)
        codes = W.wait_workers(procs)
    trials = handle.study.get_trials(deepcopy=False)
    finished, budget = sum(t.state in FINISHED for t in trials), params.tune.n_trials
    failed = {i: c for i, c in enumerate(codes) if c != 0}
    if failed:
        listing = ", ".join(f"worker {i} exited with {c}" for i, c in failed.items())
        if finished < budget and len(failed) == n:
            raise DlpipeError(f"tune {arch}: {listing}; {finished} of {budget} trials finished")
        log.warning("tune %s: %s", arch, listing)
    if finished >= budget:
        return "budget"
    if counted_failures(trials) >= W.max_failures(budget):
        return "failures"
    return "timeout" if params.tune.timeout else "workers"


def worker(params: Params, paths: ProjectPaths, arch: str, index: int = 0, parent_run_id: str | None = None,
           rendezvous: str | None = None) -> str:  # fmt: skip
    """One worker of `arch`'s study (`dlpipe tune-worker`): runs trials until the study's budget is finished.

    Without `parent_run_id` its trial runs join the newest tune parent run of the same study in its MLflow store,
    or a parent run it opens (another machine with its own store). With `rendezvous` ("TOKEN:N", from the tune
    stage) it first waits for the other workers started with it."""
    space = SearchSpace.for_arch(params, arch)
    if not params.tune.enabled:
        raise ConfigError("tune.enabled: false; there is no study to work on")
    if not len(space):
        raise ConfigError(f"tune.space: the search space of {arch} is empty; there is no study to work on")
    check_settings(params, arch, space)
    ctx = StageContext.load(params, paths)
    check_data(params, ctx)
    handle = open_study(params, paths, arch, space, ctx.dataset_hash)
    wid = W.worker_id(index)
    log.info("tune %s: worker %s joins study %s in %s", arch, wid, handle.name, handle.storage)
    with contextlib.ExitStack() as stack:
        tracker = None
        if is_global_zero():
            tags = {**ctx.tags(STAGE, arch, handle.hash), "study_name": handle.name}
            if parent_run_id is None:
                parent = latest_run(ctx.experiment_id, stage=STAGE, architecture=arch, params_hash=handle.hash)
                if parent is not None:
                    parent_run_id = parent.info.run_id
                else:  # the first of this study on this MLflow store: a parent run of its own, like the stage's
                    parent_run_id = stack.enter_context(tracked_run(run_name=f"tune-{arch}")).info.run_id
                    set_tags(parent_run_id, tags)
                    log_params(parent_run_id, parent_params(params, arch, space, handle))
            tracker = TrialTracker(arch, parent_run_id, tags, params.selection.metric)
        runner = W.TrialRunner(handle.study, Objective(params, arch, space, ctx.data), params.tune.n_trials, wid,
                               tracker)  # fmt: skip
        if rendezvous:
            W.rendezvous(handle.study, rendezvous, index)
        stopped = W.run_trials(runner, timeout=params.tune.timeout)
    mlflow.flush_async_logging()
    log.info("tune %s: worker %s done (%s); trials %s", arch, wid, stopped, state_counts(handle.study))
    return stopped


def worker_main(args: argparse.Namespace) -> int:
    """`dlpipe tune-worker --arch A [--params F] [--worker-index I] [--parent-run-id R]`."""
    from dlpipe.stages.runner import _sigterm_as_interrupt, raise_unknown_arch, setup_logging

    setup_logging()
    signal.signal(signal.SIGTERM, _sigterm_as_interrupt)
    paths = ProjectPaths.from_env()
    params = load_params(args.params or paths.params)
    if args.arch not in params.architectures:
        raise_unknown_arch(args.arch, params)
    worker(params, paths, args.arch, args.worker_index, args.parent_run_id, getattr(args, "rendezvous", None))
    return 0


def params_document(params: Params) -> dict[str, Any]:
    """`params` as a params.yaml mapping that `load_params` accepts (every listed architecture has its entries)."""
    doc = params.model_dump(mode="json")
    for arch in params.architectures:
        doc["tune"]["spaces"].setdefault(arch, {})
    return doc


# --- checks -------------------------------------------------------------------------------------------------------


def check_settings(params: Params, arch: str, space: SearchSpace) -> None:
    space.validate(params)
    check_sampler(params.tune.sampler)
    if params.tune.cv_folds > params.data.folds:
        raise ConfigError(f"tune.cv_folds: {params.tune.cv_folds} folds asked but data.folds is "
                          f"{params.data.folds}; allowed: 0 to {params.data.folds}")  # fmt: skip


def check_data(params: Params, ctx: StageContext) -> None:
    sel = params.selection
    names = ctx.data.dataset.class_names
    if sel.metric.endswith("_positive") and sel.positive_class not in names:
        raise ConfigError(f"selection.positive_class: {sel.positive_class!r} is not a class of "
                          f"{params.data.name}; allowed: {', '.join(names)}")  # fmt: skip


# --- report -------------------------------------------------------------------------------------------------------


def untuned_report(params: Params, arch: str, reason: str) -> dict[str, Any]:
    return {
        "architecture": arch,
        "enabled": False,
        "reason": reason,
        "study_name": None,
        "best_params": {},
        "best_value": None,
        "best_trial": None,
        "metric": params.selection.metric,
        "direction": DIRECTION,
        "n_trials": 0,
        "finished": 0,
        "trials": {},
        "storage": None,
    }


def summarize(params: Params, arch: str, space: SearchSpace, handle: StudyHandle, stopped: str,
              run_id: str | None) -> dict[str, Any]:  # fmt: skip
    study = handle.study
    best = best_trial(study)
    trials = study.get_trials(deepcopy=False)
    counts = state_counts(study)
    return {
        "architecture": arch,
        "enabled": True,
        "study_name": handle.name,
        "best_params": space.decode(best.params) if best else {},
        "best_value": best.value if best else None,
        "best_trial": best.number if best else None,
        "metric": params.selection.metric,
        "direction": DIRECTION,
        "n_trials": params.tune.n_trials,
        "finished": counts["COMPLETE"] + counts["PRUNED"],
        "trials": counts,
        "epochs_trained": int(sum(t.user_attrs.get("epochs", 0) for t in trials)),
        "stopped": stopped,
        "storage": handle.storage,
        "sampler": params.tune.sampler,
        "pruner": params.tune.pruner,
        "pruning_monitor": monitor_for(params.selection.metric),
        "cv_folds": params.tune.cv_folds,
        "max_epochs": epochs_per_fit(params, space),
        "space": space.to_dict(),
        "mlflow_run_id": run_id,
    }


def no_result_message(arch: str, handle: StudyHandle) -> str:
    counts = state_counts(handle.study)
    errors = [t.system_attrs[ATTR_ERROR] for t in handle.study.get_trials(deepcopy=False)
              if ATTR_ERROR in t.system_attrs]  # fmt: skip
    first = f"; first error: {errors[0]}" if errors else ""
    return f"tune {arch}: no trial completed in study {handle.name} (trials {counts}){first}"


def parent_params(params: Params, arch: str, space: SearchSpace, handle: StudyHandle) -> dict[str, Any]:
    tune = params.tune.model_dump(mode="json", exclude={"space", "spaces", "storage"})
    return flatten({
        "arch": arch,
        "study_name": handle.name,
        "storage": handle.storage,
        "seed": params.seed,
        "metric": params.selection.metric,
        "pruning_monitor": monitor_for(params.selection.metric),
        "tune": tune,
        "space": space.to_dict(),
    })  # fmt: skip


def log_summary(run_id: str, handle: StudyHandle, out: dict[str, Any]) -> None:
    counts = out["trials"]
    metrics = {f"trials_{state.lower()}": float(n) for state, n in counts.items()}
    metrics["epochs_trained"] = float(out["epochs_trained"])
    if out["best_value"] is not None:
        metrics[f"best_{out['metric']}"] = out["best_value"]
    log_metrics(run_id, metrics)
    set_tags(run_id, {"best_trial": str(out["best_trial"]), "stopped": out["stopped"]})
    log_study_plots(handle.study)
    try:
        frame = handle.study.trials_dataframe()
        mlflow.log_text(frame.to_csv(index=False), "trials.csv")
    except Exception as exc:  # an empty study or a pandas hiccup: the table is a convenience
        log.warning("tune: no trials table: %s", exc)
    mlflow.log_dict(out, "tuning_report.json")
