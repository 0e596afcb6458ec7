"""Cross-validation, the study stage's second phase: k clean folds with the tuned params, in parallel workers.

The stage process opens (or resumes) the architecture's MLflow parent run and lists the folds still to run
(`plan`); each fold runs in a worker (`fold_unit`) as a child run; the stage process aggregates them (`finish`) into
reports/cv/<arch>.json (per-fold scores, mean ± std) and reports/cv/<arch>.oof.csv (out-of-fold probabilities).

Re-running with the same params hash resumes the newest parent run and reuses its finished folds; folds that
failed or were interrupted run again (their failed runs stay in MLflow). A finished parent run whose folds are
all done is left untouched: nothing is trained or logged, only the reports are written again. A fold's
`fold_report.json` artifact, logged last, marks it reusable.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass, field

import mlflow
import numpy as np
import pandas as pd

from dlpipe.config import Params, flatten
from dlpipe.evaluation import plots
from dlpipe.evaluation.calibration import expected_calibration_error, reliability_bins
from dlpipe.evaluation.cv import FoldResult, aggregate, out_of_fold, run_fold
from dlpipe.evaluation.operating_point import argmax_point, choose
from dlpipe.io import write_json, write_text
from dlpipe.metric_names import SCALAR_METRICS, label
from dlpipe.paths import ProjectPaths
from dlpipe.processes import stop_point
from dlpipe.profile import timed
from dlpipe.stages.common import StageContext, model_spec, worker_context
from dlpipe.tracking.callbacks import EpochMetricsLogger
from dlpipe.tracking.runs import (
    FOLD_REPORT,
    closing_run,
    finished_child_runs,
    is_global_zero,
    latest_run,
    log_metrics,
    log_params,
    open_run,
    set_tags,
    tracked_run,
)
from dlpipe.training.fit import ModelSpec

log = logging.getLogger(__name__)
STAGE = "cv"


@dataclass
class FoldJob:
    """One fold to run in a worker (picklable)."""

    params: Params
    paths: ProjectPaths
    arch: str
    k: int
    parent_run_id: str | None
    tags: dict[str, str]


@dataclass
class CvPlan:
    arch: str
    spec: ModelSpec
    phash: str
    tags: dict[str, str]
    folds: int
    parent_run_id: str | None = None
    opened: bool = False  # this process (re)opened the parent run and must end it
    done: dict[int, FoldResult] = field(default_factory=dict)

    @property
    def todo(self) -> list[int]:
        return [k for k in range(self.folds) if k not in self.done]

    def jobs(self, params: Params, paths: ProjectPaths) -> list[FoldJob]:
        return [FoldJob(params, paths, self.arch, k, self.parent_run_id, self.tags) for k in self.todo]

    def all_folds(self, results: dict[int, FoldResult]) -> list[FoldResult]:
        merged = {**self.done, **results}
        return [merged[k] for k in range(self.folds)]

    def summary_job(self, params: Params, paths: ProjectPaths, folds: list[FoldResult]) -> SummaryJob:
        return SummaryJob(params, paths, self.arch, self.parent_run_id, folds, self.opened)


def plan(ctx: StageContext, arch: str) -> CvPlan:
    """The folds of `arch` still to run, under a new or resumed parent run (none when every fold is done)."""
    spec = model_spec(ctx.params, ctx.paths, arch)
    phash = ctx.spec_hash(spec, STAGE, val_size=ctx.params.data.val_size)
    tags = ctx.tags(STAGE, arch, phash)
    folds = ctx.data.splits.folds
    p = CvPlan(arch, spec, phash, tags, folds)
    if not is_global_zero():
        return p
    parent = latest_run(ctx.experiment_id, stage=STAGE, architecture=arch, params_hash=phash)
    if parent is not None:
        p.done = finished_folds(ctx.experiment_id, parent.info.run_id, phash)
        if not p.todo and parent.info.status == "FINISHED":
            log.info("cv %s: every fold done in finished run %s, reusing it", arch, parent.info.run_id)
            p.parent_run_id = parent.info.run_id
            return p
    p.parent_run_id = open_run(ctx.experiment_id, f"cv-{arch}", tags, resume=parent.info.run_id if parent else None)
    p.opened = True
    if parent is None:
        log_params(p.parent_run_id, run_params(ctx.params, spec))
        ctx.log_dataset(p.parent_run_id)
    for k in sorted(p.done):
        log.info("cv %s fold %d/%d: reusing its finished run", arch, k + 1, folds)
    return p


def run_params(params: Params, spec: ModelSpec) -> dict:
    return flatten(
        {
            "arch": spec.arch,
            "model": spec.model,
            "train": spec.train,
            "data": params.data,
            "seed": params.seed,
            "trainer": params.trainer,
        }
    )


def fold_unit(job: FoldJob) -> FoldResult:
    """Train and score fold `job.k` as a child run of the architecture's parent run (in a worker process)."""
    ctx = worker_context(job.params, job.paths)
    spec = model_spec(job.params, job.paths, job.arch)
    if not is_global_zero():
        return run_fold(spec, ctx.data, job.k, job.params.trainer, job.params.seed, val_size=job.params.data.val_size)
    earlier = recorded_fold(ctx.experiment_id, job)
    if earlier is not None:
        run_id, result = earlier
        log.info("cv %s fold %d: reusing run %s, which recorded it (an earlier attempt)", job.arch, job.k + 1, run_id)
        return result
    name = f"cv-{job.arch}-fold{job.k}"
    tags = {**job.tags, "fold": str(job.k)}
    with tracked_run(run_name=name, parent_run_id=job.parent_run_id, tags=tags) as child:
        run_id = child.info.run_id
        stop_point("fold:open")  # fault tests: a kill in the middle of a fold
        ctx.log_dataset(run_id)
        result = run_fold(
            spec,
            ctx.data,
            job.k,
            job.params.trainer,
            job.params.seed,
            val_size=job.params.data.val_size,
            callbacks=[EpochMetricsLogger(run_id)],
        )
        log_metrics(run_id, {**result.metrics, "epochs": result.epochs, "fit_seconds": result.seconds})
        with timed("logging"):
            mlflow.log_dict(result.to_dict(), FOLD_REPORT)  # last: its presence marks the fold reusable
    mlflow.flush_async_logging()
    log.info(
        "cv %s fold %d/%d: accuracy %.4f f1_macro %.4f (%d epochs, %.1fs)",
        job.arch,
        job.k + 1,
        ctx.data.splits.folds,
        result.metrics["accuracy"],
        result.metrics["f1_macro"],
        result.epochs,
        result.seconds,
    )
    return result


def recorded_fold(experiment_id: str, job: FoldJob) -> tuple[str, FoldResult] | None:
    """(run id, result) of a run of this fold under this parent that recorded its report: an earlier attempt of the
    same unit whose result never came back (Ray retries a task whose node died after the fold was logged)."""
    if job.parent_run_id is None:
        return None
    phash = job.tags["params_hash"]
    clause = f"tags.mlflow.parentRunId = '{job.parent_run_id}' and tags.fold = '{job.k}'"
    clause += f" and tags.stage = '{STAGE}' and tags.params_hash = '{phash}'"
    for run in mlflow.MlflowClient().search_runs([experiment_id], clause, max_results=100):
        if run.info.status not in ("FINISHED", "RUNNING"):  # a FAILED or KILLED attempt recorded nothing
            continue
        try:  # the report is the last thing a fold logs: a RUNNING run holding it has recorded the fold
            result = FoldResult.from_dict(mlflow.artifacts.load_dict(f"{run.info.artifact_uri}/{FOLD_REPORT}"))
        except Exception:  # no report (still training, or from before reports were logged), or a torn one
            continue
        if result.probs:
            return run.info.run_id, result
    return None


@dataclass
class SummaryJob:
    params: Params
    paths: ProjectPaths
    arch: str
    parent_run_id: str | None
    folds: list[FoldResult]
    log: bool  # the stage (re)opened the parent run: log the summary on it


def summary_unit(job: SummaryJob) -> dict:
    """Aggregate the folds and log the summary (metrics, summed confusion matrix) on the parent run."""
    summary = aggregate(job.folds)
    if job.log and job.parent_run_id and is_global_zero():
        worker_context(job.params, job.paths)  # MLflow set up in this process
        log_summary(job.parent_run_id, summary, job.arch, {f.fold: f.history for f in job.folds if f.history})
    return summary


def finish(ctx: StageContext, p: CvPlan, folds: list[FoldResult], summary: dict) -> dict:
    """Write reports/cv/<arch>.json (with what the out-of-fold predictions say) and the out-of-fold file."""
    out = {
        "architecture": p.arch,
        "params_hash": p.phash,
        "mlflow_run_id": p.parent_run_id,
        **summary,
        "oof": oof_summary(ctx, folds),
    }
    if is_global_zero():
        write_oof(ctx, p.arch, folds)
        write_json(ctx.paths.cv_report(p.arch), out)
    m = ctx.params.selection.metric if ctx.params.selection.metric in SCALAR_METRICS else "f1_macro"
    log.info(
        "cv %s: %s %.4f +/- %.4f over %d folds", p.arch, label(m), summary["mean"][m], summary["std"][m], len(folds)
    )
    return out


def write_dropped(ctx: StageContext, p: CvPlan, folds: list[FoldResult], why: dict) -> dict:
    """reports/cv/<arch>.json of an architecture the study budget dropped: why, and the folds it was judged on
    (no mean over every fold: it is not scored); the parent run is tagged `dropped`."""
    ordered = sorted(folds, key=lambda f: f.fold)
    out = {
        "architecture": p.arch,
        "params_hash": p.phash,
        "mlflow_run_id": p.parent_run_id,
        "dropped": why,
        "folds": len(ordered),
        "per_fold": {f"fold_{f.fold}": dict(f.metrics) for f in ordered},
    }
    if is_global_zero():
        write_json(ctx.paths.cv_report(p.arch), out)
        if p.parent_run_id:
            set_tags(p.parent_run_id, {"dropped": why["reason"]})
    log.warning("cv %s: dropped by the study budget: %s", p.arch, why["reason"])
    return out


def oof_summary(ctx: StageContext, folds: list[FoldResult]) -> dict:
    """Calibration, average precision and the operating point, from the out-of-fold probabilities."""
    from sklearn.metrics import average_precision_score

    sel = ctx.params.selection
    names = ctx.data.dataset.class_names
    _, _, target, probs = out_of_fold(folds, ctx.data.y_numpy)
    positive = names.index(sel.positive_class) if sel.positive_class in names else len(names) - 1
    if len(names) == 2:
        ap = average_precision_score(target == positive, probs[:, positive])
        point = choose(sel.operating_point, target == positive, probs[:, positive], names[positive])
    else:
        ap = average_precision_score(np.eye(len(names))[target], probs, average="macro")
        point = argmax_point(names, sel.positive_class)
    return {
        "samples": len(target),
        "average_precision": float(ap),
        "ece": expected_calibration_error(probs, target),
        "reliability": reliability_bins(probs, target),
        "temperature": [f.temperature for f in folds],
        "operating_point": point.to_dict(),
    }


def write_oof(ctx: StageContext, arch: str, folds: list[FoldResult]) -> None:
    idx, fold, target, probs = out_of_fold(folds, ctx.data.y_numpy)
    names = ctx.data.dataset.class_names
    frame = pd.DataFrame({"index": idx, "fold": fold, "target": np.asarray(names, dtype=object)[target]})
    for i, name in enumerate(names):
        frame[f"prob_{name}"] = probs[:, i]
    write_text(ctx.paths.oof_predictions(arch), frame.to_csv(index=False, float_format="%.6g"))


def finished_folds(experiment_id: str, parent_id: str, phash: str) -> dict[int, FoldResult]:
    done: dict[int, FoldResult] = {}
    for r in finished_child_runs(experiment_id, parent_id, stage=STAGE, params_hash=phash):
        fold = int(r.data.tags["fold"])
        if fold in done:
            continue
        try:
            data = mlflow.artifacts.load_dict(f"{r.info.artifact_uri}/{FOLD_REPORT}")
        except Exception:  # artifact missing: treat the fold as not done
            continue
        result = FoldResult.from_dict(data)
        if result.probs:  # folds recorded before out-of-fold predictions were kept run again
            done[fold] = result
    return done


def log_summary(run_id: str, summary: dict, arch: str, histories: dict[int, list[dict]] | None = None) -> None:
    metrics = {f"mean_{m}": v for m, v in summary["mean"].items()}
    metrics |= {f"std_{m}": v for m, v in summary["std"].items()}
    log_metrics(run_id, metrics)
    client = mlflow.MlflowClient()
    with timed("figures"):
        fig = plots.confusion_matrix_figure(
            summary["confusion_matrix"], summary["class_names"], f"{arch}: confusion summed over folds"
        )
        client.log_figure(run_id, fig, "plots/confusion_matrix.png")
        plots.close(fig)
        if histories:  # one picture of every fold's curves (the per-epoch values are also each fold run's metrics)
            fig = plots.fold_curves_figure(histories, arch)
            client.log_figure(run_id, fig, "plots/learning_curves.png")
            plots.close(fig)
    client.log_dict(run_id, summary, "cv_summary.json")


def run(params: Params, paths: ProjectPaths, arch: str) -> dict:
    """Cross-validate `arch` in this process (plan, folds, finish); returns the report."""
    ctx = worker_context(params, paths)
    ctx.close_orphans(STAGE)
    p = plan(ctx, arch)
    with closing_run(p.parent_run_id if p.opened else None):
        folds = p.all_folds({job.k: fold_unit(job) for job in p.jobs(params, paths)})
        return finish(ctx, p, folds, summary_unit(p.summary_job(params, paths, folds)))
