"""baselines: scikit-learn models (`baselines.models`) on the same folds and test set as the deep models.

Writes reports/baselines.json (per model: per-fold scores, mean ± std, per-class fold scores, test report, grid
choices) and records one MLflow parent run `baselines` with a child run per model (its result as the artifact
`baseline.json`). The select stage puts them on the leaderboard as baseline rows and states whether the deep
champion beats the best of them.

Like the cv stage's folds, a rerun with the same params (tag `params_hash`: the baselines, data and seed params and
the dataset) resumes the newest parent run and reuses the baselines that finished in it: a killed stage fits only
the baselines it had not finished; a finished parent run with every baseline is reused as it is.
"""

from __future__ import annotations

import logging

import mlflow

from dlpipe import RESULTS_PROTOCOL
from dlpipe.config import Params, flatten, params_hash
from dlpipe.evaluation.baselines import run_baseline
from dlpipe.io import check_writable, write_json
from dlpipe.metric_names import SCALAR_METRICS, label
from dlpipe.paths import ProjectPaths
from dlpipe.stages.common import StageContext
from dlpipe.tracking.runs import finished_child_runs, is_global_zero, latest_run, log_metrics, log_params, tracked_run

log = logging.getLogger(__name__)
STAGE = "baselines"
RESULT_ARTIFACT = "baseline.json"


def run(params: Params, paths: ProjectPaths) -> dict:
    check_writable(paths.baselines_report.parent)
    ctx = StageContext.load(params, paths)
    ctx.close_orphans(STAGE)
    out: dict = {}
    if not params.baselines.models or not is_global_zero():
        write_json(paths.baselines_report, out)
        return out
    crosses = params.models.wide_deep.crosses  # declared for wide & deep, offered to the linear baseline
    phash = params_hash(STAGE, RESULTS_PROTOCOL, params.baselines, params.data, params.seed, ctx.dataset_hash, crosses)
    tags = ctx.tags(STAGE, None, phash)
    parent = latest_run(ctx.experiment_id, stage=STAGE, params_hash=phash)
    done = finished_baselines(ctx.experiment_id, parent.info.run_id, phash) if parent is not None else {}
    if parent is not None and parent.info.status == "FINISHED" and set(params.baselines.models) <= set(done):
        log.info("baselines: every baseline done in finished run %s, reusing it", parent.info.run_id)
        out = {name: done[name][1] for name in params.baselines.models}
        write_json(paths.baselines_report, out)
        return out
    resume = {"run_id": parent.info.run_id} if parent is not None else {}
    with tracked_run(run_name=STAGE, tags=tags, **resume) as run:
        if parent is None:
            log_params(run.info.run_id, flatten({"baselines": params.baselines, "seed": params.seed}))
            ctx.log_dataset(run.info.run_id)
        for name in params.baselines.models:
            if name in done:
                run_id, out[name] = done[name]
                log.info("baseline %s: reusing its finished run %s", name, run_id)
                continue
            result = run_baseline(name, ctx.data, params.seed, params.baselines.max_train_samples, crosses)
            out[name] = result.to_dict()
            with tracked_run(run_name=f"baseline-{name}", nested=True, tags={**tags, "baseline": name}) as child:
                record(child.info.run_id, out[name])
                ctx.log_dataset(child.info.run_id)
                mlflow.MlflowClient().log_dict(child.info.run_id, out[name], RESULT_ARTIFACT)
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
        mlflow.MlflowClient().log_dict(run.info.run_id, out, "baselines.json")
    write_json(paths.baselines_report, out)
    return out


def record(run_id: str, result: dict) -> None:
    log_params(run_id, {"baseline": result["name"], "description": result["description"], **result["chosen"]})
    metrics = {f"mean_{m}": v for m, v in result["mean"].items()} | {f"std_{m}": v for m, v in result["std"].items()}
    metrics |= {f"test_{m}": result["test"][m] for m in SCALAR_METRICS}
    log_metrics(run_id, {**metrics, "fit_seconds": result["fit_seconds"]})


def finished_baselines(experiment_id: str, parent_id: str, phash: str) -> dict[str, tuple[str, dict]]:
    """Baseline name -> (run id, result) of the FINISHED child runs of `parent_id` that kept their result."""
    done: dict[str, tuple[str, dict]] = {}
    for r in finished_child_runs(experiment_id, parent_id, stage=STAGE, params_hash=phash):
        name = r.data.tags.get("baseline")
        if not name or name in done:
            continue
        try:
            done[name] = (r.info.run_id, mlflow.artifacts.load_dict(f"{r.info.artifact_uri}/{RESULT_ARTIFACT}"))
        except Exception:  # artifact missing (an older run): fit it again
            continue
    return done
