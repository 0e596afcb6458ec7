"""Tuning, the study stage's first phase: an Optuna study per architecture; writes reports/tuning/<arch>.json.

The study lives in its storage (journal file under optuna/, or `tune.storage`), not in the DVC outputs, so an
interrupted stage resumes it: same params, same study name, and only the remaining trials run. The stage process
opens the study and its MLflow parent run (`plan`), workers run trials (`trials_unit`; `tune.workers` of them may
share one study), and the stage process summarises (`finish`). More machines may join a study with
`dlpipe tune-worker --arch <arch>` (same params.yaml and a shared `tune.storage`).

MLflow: a parent run per architecture (tags stage=tune, params_hash = the study's hash, study_name), resumed
with the study; one child run per trial (see dlpipe.tuning.tracking); at the end the study's plots, trials table
and report as artifacts. `reports/tuning/<arch>.json` (`best_params` as dotted train./model. keys with their real
values) is what `stages.common.model_spec` applies in cv and train.
"""

from __future__ import annotations

import argparse
import logging
import uuid
from dataclasses import dataclass
from typing import Any

import mlflow

from dlpipe.config import Params, flatten, load_params
from dlpipe.errors import ConfigError, DlpipeError
from dlpipe.io import read_json, write_json
from dlpipe.metric_names import monitor_for
from dlpipe.paths import ProjectPaths
from dlpipe.profile import timed
from dlpipe.stages.common import StageContext, worker_context
from dlpipe.tracking.runs import closing_run, is_global_zero, latest_run, log_metrics, log_params, open_run, set_tags
from dlpipe.tuning import workers as W
from dlpipe.tuning.objective import Objective
from dlpipe.tuning.space import SearchSpace
from dlpipe.tuning.study import (
    ATTR_ERROR,
    DIRECTION,
    StudyHandle,
    best_trial,
    counted_failures,
    epochs_per_fit,
    epochs_spent,
    finished_count,
    open_study,
    pruner_of,
    state_counts,
)
from dlpipe.tuning.tracking import TrialTracker, close_told_runs, log_study_plots

log = logging.getLogger(__name__)
STAGE = "tune"
REPORT_ARTIFACT = "tuning_report.json"


@dataclass
class TrialsJob:
    """What a worker needs to run trials of one study (picklable: it travels to worker processes)."""

    params: Params
    paths: ProjectPaths
    arch: str
    parent_run_id: str | None
    index: int = 0
    rendezvous: str | None = None  # "TOKEN:N": wait until the N runners started together have joined


@dataclass
class TunePlan:
    """An opened study and its MLflow parent run, held by the stage process while workers run its trials."""

    arch: str
    space: SearchSpace
    handle: StudyHandle
    parent_run_id: str | None
    runners: int  # how many workers may run this study's trials at once (tune.workers)

    def jobs(self, params: Params, paths: ProjectPaths, slots: int) -> list[TrialsJob]:
        """One job per runner, at most one per slot that can run them at once (`slots`: the pool's processes);
        runners that run together meet before their first trial."""
        runners = min(self.runners, slots)
        meet = f"{uuid.uuid4().hex}:{runners}" if runners > 1 else None
        return [TrialsJob(params, paths, self.arch, self.parent_run_id, i, meet) for i in range(runners)]

    def summary_job(self, params: Params, paths: ProjectPaths) -> TrialsJob:
        return TrialsJob(params, paths, self.arch, self.parent_run_id)


def plan(ctx: StageContext, arch: str) -> TunePlan | dict[str, Any]:
    """Open `arch`'s study and its parent run (resumed when the study was run before); an architecture that is
    not tuned gets its report at once (returned instead of a plan)."""
    params, paths = ctx.params, ctx.paths
    space = SearchSpace.for_arch(params, arch)
    if not params.tune.enabled or not len(space):
        return record_untuned(params, paths, arch, space)
    if not is_global_zero():  # a DDP rank started after rank 0 tuned every architecture: read its result
        return read_json(paths.tuning_report(arch))
    ctx.check_against_data()
    handle = open_study(params, paths, arch, space, ctx.dataset_hash)
    if ctx.experiment_id is not None:
        for run_id in close_told_runs(ctx.experiment_id, handle.study):
            log.warning(
                "tune %s: trial run %s was killed after the study took its result; ended it FINISHED", arch, run_id
            )
    counts = state_counts(handle.study)
    log.info(
        "tune %s: study %s in %s (%d of %d trials finished)",
        arch,
        handle.name,
        handle.storage,
        counts["COMPLETE"] + counts["PRUNED"],
        params.tune.n_trials,
    )
    parent = latest_run(ctx.experiment_id, stage=STAGE, architecture=arch, params_hash=handle.hash)
    done = study_done(params, handle.study.get_trials(deepcopy=False))
    if done and parent is not None and parent.info.status == "FINISHED":
        reused = finished_report(parent, params.tune.n_trials)
        if reused is not None:  # nothing to run or to log: the finished study's summary stands
            log.info("tune %s: study %s finished in run %s, reusing it", arch, handle.name, parent.info.run_id)
            return finish(ctx, reused)
    tags = {**ctx.tags(STAGE, arch, handle.hash), "study_name": handle.name}
    run_id = open_run(ctx.experiment_id, f"tune-{arch}", tags, resume=parent.info.run_id if parent else None)
    if parent is None:
        log_params(run_id, parent_params(params, arch, space, handle))
        ctx.log_dataset(run_id)
    return TunePlan(arch, space, handle, run_id, 0 if done else params.tune.workers)


def study_done(params: Params, trials: list) -> bool:
    """The study has its tune.n_trials finished trials, or they spent study.budget.epochs."""
    epochs = params.study.budget.epochs
    return finished_count(trials) >= params.tune.n_trials or (epochs is not None and epochs_spent(trials) >= epochs)


def finished_report(parent: Any, budget: int) -> dict[str, Any] | None:
    """The report a finished tune run logged, when it covered the same budget (None: summarise again)."""
    try:
        report = mlflow.artifacts.load_dict(f"{parent.info.artifact_uri}/{REPORT_ARTIFACT}")
    except Exception:  # artifact missing: summarise again
        return None
    return report if report.get("n_trials") == budget and report.get("mlflow_run_id") == parent.info.run_id else None


def record_untuned(params: Params, paths: ProjectPaths, arch: str, space: SearchSpace) -> dict[str, Any]:
    """The report of an architecture that is not tuned (tune.enabled false, or nothing to search)."""
    reason = "tune.enabled is false" if not params.tune.enabled else f"the search space of {arch} is empty"
    log.info("tune %s: not tuned (%s); the params stay as they are", arch, reason)
    out = untuned_report(params, arch, reason)
    if is_global_zero():
        write_json(paths.tuning_report(arch), out)
    return out


def trials_unit(job: TrialsJob) -> str:
    """Run trials of `job.arch`'s study until its budget is finished (in a worker process, or in-process)."""
    params, arch = job.params, job.arch
    ctx = worker_context(params, job.paths)
    space = SearchSpace.for_arch(params, arch)
    handle = open_study(params, job.paths, arch, space, ctx.dataset_hash)
    tracker = None
    if job.parent_run_id and is_global_zero():
        tags = {**ctx.tags(STAGE, arch, handle.hash), "study_name": handle.name}
        tracker = TrialTracker(arch, job.parent_run_id, tags, params.selection.metric, ctx.log_dataset)
    runner = W.TrialRunner(
        handle.study, Objective(params, arch, space, ctx.data), params.tune.n_trials, W.worker_id(job.index), tracker
    )
    if job.rendezvous:  # runners started together share the first trials out however long each took to start
        W.rendezvous(handle.study, job.rendezvous, job.index)
    stopped = W.run_trials(runner, timeout=params.tune.timeout, epochs=params.study.budget.epochs)
    mlflow.flush_async_logging()
    return stopped


def summary_unit(job: TrialsJob) -> dict[str, Any]:
    """Summarise the study and log it (metrics, plots, trials table) on its parent run (in a worker: the plots
    take seconds)."""
    params, arch = job.params, job.arch
    ctx = worker_context(params, job.paths)
    space = SearchSpace.for_arch(params, arch)
    handle = open_study(params, job.paths, arch, space, ctx.dataset_hash)
    trials = handle.study.get_trials(deepcopy=False)
    out = summarize(params, arch, space, handle, stopped_reason(params, trials), job.parent_run_id)
    if job.parent_run_id:
        log_summary(job.parent_run_id, handle, out)
    if out["best_value"] is None:
        raise DlpipeError(no_result_message(arch, handle))
    return out


def finish(ctx: StageContext, out: dict[str, Any]) -> dict[str, Any]:
    """Write reports/tuning/<arch>.json from the study's summary."""
    write_json(ctx.paths.tuning_report(out["architecture"]), out)
    log.info(
        "tune %s: best %s %.4f (trial %d) with %s; trials %s",
        out["architecture"],
        out["metric"],
        out["best_value"],
        out["best_trial"],
        out["best_params"],
        out["trials"],
    )
    return out


def stopped_reason(params: Params, trials: list) -> str:
    if finished_count(trials) >= params.tune.n_trials:
        return "budget"
    epochs = params.study.budget.epochs
    if epochs is not None and epochs_spent(trials) >= epochs:
        return "epochs"
    if counted_failures(trials) >= W.max_failures(params.tune.n_trials):
        return "failures"
    return "timeout" if params.tune.timeout else "workers"


def run(params: Params, paths: ProjectPaths, arch: str) -> dict:
    """Tune `arch` in this process (plan, trials, finish); returns the report."""
    space = SearchSpace.for_arch(params, arch)
    if not params.tune.enabled or not len(space):
        return record_untuned(params, paths, arch, space)
    ctx = worker_context(params, paths)
    ctx.close_orphans(STAGE)
    p = plan(ctx, arch)
    if not isinstance(p, TunePlan):
        return p
    with closing_run(p.parent_run_id):
        for job in p.jobs(params, paths, slots=1):
            trials_unit(job)
        return finish(ctx, summary_unit(p.summary_job(params, paths)))


def worker(params: Params, paths: ProjectPaths, arch: str, index: int = 0, parent_run_id: str | None = None) -> str:
    """One worker of `arch`'s study (`dlpipe tune-worker`, e.g. on another machine): runs trials until the study's
    budget is finished. Its trial runs join the newest tune parent run of the same study in its MLflow store, or a
    parent run it opens (another machine with its own store)."""
    space = SearchSpace.for_arch(params, arch)
    if not params.tune.enabled:
        raise ConfigError("tune.enabled: false; there is no study to work on")
    if not len(space):
        raise ConfigError(f"tune.space: the search space of {arch} is empty; there is no study to work on")
    ctx = StageContext.load(params, paths)
    ctx.check_against_data()
    handle = open_study(params, paths, arch, space, ctx.dataset_hash)
    log.info("tune %s: worker %s joins study %s in %s", arch, W.worker_id(index), handle.name, handle.storage)
    own = None
    if is_global_zero() and parent_run_id is None:
        parent = latest_run(ctx.experiment_id, stage=STAGE, architecture=arch, params_hash=handle.hash)
        if parent is not None:
            parent_run_id = parent.info.run_id
        else:  # the first of this study on this MLflow store: a parent run of its own, like the stage's
            tags = {**ctx.tags(STAGE, arch, handle.hash), "study_name": handle.name}
            parent_run_id = own = open_run(ctx.experiment_id, f"tune-{arch}", tags)
            log_params(own, parent_params(params, arch, space, handle))
    with closing_run(own):
        stopped = trials_unit(TrialsJob(params, paths, arch, parent_run_id, index))
    log.info("tune %s: worker %s done (%s); trials %s", arch, W.worker_id(index), stopped, state_counts(handle.study))
    return stopped


def worker_main(args: argparse.Namespace) -> int:
    """`dlpipe tune-worker --arch A [--params F] [--worker-index I] [--parent-run-id R]`."""
    from dlpipe.stages.runner import prepare_process, raise_unknown_arch

    paths = ProjectPaths.from_env()
    params = load_params(args.params or paths.params)
    prepare_process(params)
    if args.arch not in params.architectures:
        raise_unknown_arch(args.arch, params)
    worker(params, paths, args.arch, args.worker_index, args.parent_run_id)
    return 0


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


def summarize(
    params: Params, arch: str, space: SearchSpace, handle: StudyHandle, stopped: str, run_id: str | None
) -> dict[str, Any]:
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
        "startup_trials": params.tune.startup_trials,
        "pruner": pruner_of(params),
        "budget_epochs": params.study.budget.epochs,
        "pruning_monitor": monitor_for(params.selection.metric),
        "cv_folds": params.tune.cv_folds,
        "max_epochs": epochs_per_fit(params, space),
        "max_train_samples": params.tune.max_train_samples,
        "space": space.to_dict(),
        "mlflow_run_id": run_id,
    }


def no_result_message(arch: str, handle: StudyHandle) -> str:
    counts = state_counts(handle.study)
    errors = [
        t.system_attrs[ATTR_ERROR] for t in handle.study.get_trials(deepcopy=False) if ATTR_ERROR in t.system_attrs
    ]
    first = f"; first error: {errors[0]}" if errors else ""
    return f"tune {arch}: no trial completed in study {handle.name} (trials {counts}){first}"


def parent_params(params: Params, arch: str, space: SearchSpace, handle: StudyHandle) -> dict[str, Any]:
    tune = params.tune.model_dump(mode="json", exclude={"space", "spaces", "storage"})
    return flatten(
        {
            "arch": arch,
            "study_name": handle.name,
            "storage": handle.storage,
            "seed": params.seed,
            "metric": params.selection.metric,
            "pruning_monitor": monitor_for(params.selection.metric),
            "tune": tune,
            "space": space.to_dict(),
        }
    )


def log_summary(run_id: str, handle: StudyHandle, out: dict[str, Any]) -> None:
    counts = out["trials"]
    metrics = {f"trials_{state.lower()}": float(n) for state, n in counts.items()}
    metrics["epochs_trained"] = float(out["epochs_trained"])
    if out["best_value"] is not None:
        metrics[f"best_{out['metric']}"] = out["best_value"]
    log_metrics(run_id, metrics)
    set_tags(run_id, {"best_trial": str(out["best_trial"]), "stopped": out["stopped"]})
    with timed("figures"):
        log_study_plots(handle.study, run_id)
    client = mlflow.MlflowClient()
    try:
        frame = handle.study.trials_dataframe()
        client.log_text(run_id, frame.to_csv(index=False), "trials.csv")
    except Exception as exc:  # an empty study or a pandas hiccup: the table is a convenience
        log.warning("tune: no trials table: %s", exc)
    client.log_dict(run_id, out, REPORT_ARTIFACT)
