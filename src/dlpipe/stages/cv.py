"""cv@<arch>: k-fold cross-validation with the tuned params; MLflow parent run with one child run per fold.

Re-running with the same params hash resumes the newest parent run and reuses its finished folds; folds that
failed or were interrupted run again (their failed runs stay in MLflow). A finished parent run whose folds are
all done is left untouched: nothing is trained or logged, only reports/cv/<arch>.json is written again.
"""

from __future__ import annotations

import contextlib
import logging

import mlflow

from dlpipe.config import Params, flatten
from dlpipe.evaluation import plots
from dlpipe.evaluation.cv import FoldResult, aggregate, run_fold
from dlpipe.io import write_json
from dlpipe.paths import ProjectPaths
from dlpipe.stages.common import StageContext, model_spec
from dlpipe.tracking.runs import (
    EpochMetricsLogger,
    finished_child_runs,
    is_global_zero,
    latest_run,
    log_metrics,
    log_params,
    set_tags,
    tracked_run,
)
from dlpipe.training.metrics import SCALAR_METRICS

log = logging.getLogger(__name__)
FOLD_REPORT = "fold_report.json"


def report_path(paths: ProjectPaths, arch: str):
    return paths.reports / "cv" / f"{arch}.json"


def run(params: Params, paths: ProjectPaths, arch: str) -> dict:
    ctx = StageContext.load(params, paths)
    spec = model_spec(params, paths, arch)
    phash = ctx.spec_hash(spec, "cv")
    tags = ctx.tags("cv", arch, phash)
    zero = is_global_zero()
    parent = latest_run(ctx.experiment_id, stage="cv", architecture=arch, params_hash=phash)
    folds = ctx.data.splits.folds
    if parent is not None and parent.info.status == "FINISHED":
        done = _finished_folds(ctx.experiment_id, parent.info.run_id, phash)
        if all(k in done for k in range(folds)):  # nothing to train or log: only the report is rewritten
            log.info("cv %s: every fold done in finished run %s, reusing it", arch, parent.info.run_id)
            return _write_report(params, paths, arch, phash, parent.info.run_id, [done[k][1] for k in range(folds)])
    start = {"run_id": parent.info.run_id} if parent else {"run_name": f"cv-{arch}"}
    results: list[FoldResult] = []
    with tracked_run(**start) if zero else contextlib.nullcontext() as run_:
        run_id = run_.info.run_id if run_ else None
        if zero and parent is None:
            set_tags(run_id, tags)
            log_params(
                run_id,
                flatten(
                    {
                        "arch": arch,
                        "model": spec.model,
                        "train": spec.train,
                        "data": params.data,
                        "seed": params.seed,
                        "trainer": params.trainer,
                    }
                ),
            )
            ctx.log_dataset()
        done = _finished_folds(ctx.experiment_id, run_id or (parent.info.run_id if parent else None), phash)
        for k in range(folds):
            if k in done:
                log.info("cv %s fold %d/%d: reusing finished run %s", arch, k + 1, folds, done[k][0])
                results.append(done[k][1])
                continue
            results.append(_run_fold(ctx, spec, k, tags, zero))
        if zero:
            _log_summary(run_id, aggregate(results), arch)
    if zero:
        mlflow.flush_async_logging()
    return _write_report(params, paths, arch, phash, run_id, results)


def _write_report(params: Params, paths: ProjectPaths, arch: str, phash: str, run_id: str | None,
                  results: list[FoldResult]) -> dict:  # fmt: skip
    summary = aggregate(results)
    out = {"architecture": arch, "params_hash": phash, "mlflow_run_id": run_id, **summary}
    if is_global_zero():
        write_json(report_path(paths, arch), out)
    m = params.selection.metric if params.selection.metric in SCALAR_METRICS else "f1_macro"
    log.info("cv %s: %s %.4f +/- %.4f over %d folds", arch, m, summary["mean"][m], summary["std"][m], len(results))
    return out


def _finished_folds(experiment_id: str, parent_id: str | None, phash: str) -> dict[int, tuple[str, FoldResult]]:
    if parent_id is None:
        return {}
    done = {}
    for r in finished_child_runs(experiment_id, parent_id, stage="cv", params_hash=phash):
        try:
            data = mlflow.artifacts.load_dict(f"{r.info.artifact_uri}/{FOLD_REPORT}")
        except Exception:  # artifact missing: treat the fold as not done
            continue
        done.setdefault(int(r.data.tags["fold"]), (r.info.run_id, FoldResult.from_dict(data)))
    return done


def _run_fold(ctx: StageContext, spec, k: int, tags: dict[str, str], zero: bool) -> FoldResult:
    folds = ctx.data.splits.folds
    name = f"cv-{spec.arch}-fold{k}"
    with tracked_run(run_name=name, nested=True) if zero else contextlib.nullcontext() as child:
        callbacks = []
        if zero:
            set_tags(child.info.run_id, {**tags, "fold": str(k)})
            callbacks.append(EpochMetricsLogger(child.info.run_id))
        result = run_fold(spec, ctx.data, k, ctx.params.trainer, ctx.params.seed, callbacks=callbacks)
        if zero:
            run_id = child.info.run_id
            log_metrics(run_id, {**result.metrics, "epochs": result.epochs, "fit_seconds": result.seconds})
            _log_figures(result.report, result.history, f"{spec.arch} fold {k}")
            mlflow.log_dict(result.report, "per_class_report.json")
            mlflow.log_dict(result.to_dict(), FOLD_REPORT)  # last: its presence marks the fold reusable
    log.info("cv %s fold %d/%d: accuracy %.4f f1_macro %.4f (%d epochs, %.1fs)", spec.arch, k + 1, folds,
             result.metrics["accuracy"], result.metrics["f1_macro"], result.epochs, result.seconds)  # fmt: skip
    return result


def _log_figures(report: dict, history: list[dict], title: str) -> None:
    fig = plots.confusion_matrix_figure(report["confusion_matrix"], report["class_names"], f"{title}: confusion")
    mlflow.log_figure(fig, "plots/confusion_matrix.png")
    plots.close(fig)
    if history:
        fig = plots.learning_curves_figure(history, title)
        mlflow.log_figure(fig, "plots/learning_curves.png")
        plots.close(fig)


def _log_summary(run_id: str, summary: dict, arch: str) -> None:
    metrics = {f"mean_{m}": v for m, v in summary["mean"].items()}
    metrics |= {f"std_{m}": v for m, v in summary["std"].items()}
    log_metrics(run_id, metrics)
    fig = plots.confusion_matrix_figure(summary["confusion_matrix"], summary["class_names"],
                                        f"{arch}: confusion summed over folds")  # fmt: skip
    mlflow.log_figure(fig, "plots/confusion_matrix.png")
    plots.close(fig)
    mlflow.log_dict(summary, "cv_summary.json")
