"""baselines: scikit-learn models (`baselines.models`) on the same folds and test set as the deep models.

Writes reports/baselines.json (per model: per-fold scores, mean ± std, per-class fold scores, test report, grid
choices) and records one MLflow parent run `baselines` with a child run per model. The select stage puts them on
the leaderboard as baseline rows and states whether the deep champion beats the best of them.
"""

from __future__ import annotations

import logging

import mlflow

from dlpipe.config import Params, flatten
from dlpipe.evaluation.baselines import run_baseline
from dlpipe.io import check_writable, write_json
from dlpipe.metric_names import SCALAR_METRICS, label
from dlpipe.paths import ProjectPaths
from dlpipe.stages.common import StageContext
from dlpipe.tracking.runs import is_global_zero, log_metrics, log_params, tracked_run

log = logging.getLogger(__name__)
STAGE = "baselines"


def run(params: Params, paths: ProjectPaths) -> dict:
    check_writable(paths.baselines_report.parent)
    ctx = StageContext.load(params, paths)
    ctx.close_orphans(STAGE)
    out: dict = {}
    if not params.baselines.models or not is_global_zero():
        write_json(paths.baselines_report, out)
        return out
    tags = ctx.tags(STAGE, None, "")
    with tracked_run(run_name=STAGE, tags=tags) as parent:
        log_params(parent.info.run_id, flatten({"baselines": params.baselines, "seed": params.seed}))
        ctx.log_dataset(parent.info.run_id)
        for name in params.baselines.models:
            crosses = params.models.wide_deep.crosses  # declared for wide & deep, offered to the linear baseline
            result = run_baseline(name, ctx.data, params.seed, params.baselines.max_train_samples, crosses)
            out[name] = result.to_dict()
            with tracked_run(run_name=f"baseline-{name}", nested=True, tags={**tags, "baseline": name}) as child:
                record(child.info.run_id, out[name])
                ctx.log_dataset(child.info.run_id)
            m = params.selection.metric if params.selection.metric in SCALAR_METRICS else "f1_macro"
            log.info(
                "baseline %s: CV %s %.4f +/- %.4f, test %.4f (%.1fs)%s",
                name,
                label(m),
                result.mean[m],
                result.std[m],
                result.test[m],
                result.fit_seconds,
                f"; chose {result.chosen}" if result.chosen else "",
            )
        mlflow.MlflowClient().log_dict(parent.info.run_id, out, "baselines.json")
    write_json(paths.baselines_report, out)
    return out


def record(run_id: str, result: dict) -> None:
    log_params(run_id, {"baseline": result["name"], "description": result["description"], **result["chosen"]})
    metrics = {f"mean_{m}": v for m, v in result["mean"].items()} | {f"std_{m}": v for m, v in result["std"].items()}
    metrics |= {f"test_{m}": result["test"][m] for m in SCALAR_METRICS}
    log_metrics(run_id, {**metrics, "fit_seconds": result["fit_seconds"]})
