"""select: the leaderboard over every architecture, the winner on cross-validation, registration and promotion.

The winner has the best CV mean of `selection.metric` (never a test-set number); whether its lead over the
runner-up is meaningful is judged with the corrected resampled paired t-test over the folds. Its logged model
becomes a new version of `registry.model_name` with alias `challenger`; with `registry.auto_promote` the
`champion` alias moves to it when it beats the current champion on the held-out test set (see stages.promote).

Outputs: reports/leaderboard.csv and .md, reports/selection.json (winner, test, registry outcome),
reports/metrics.json (the winner's test metrics, flat, for `dvc metrics`), reports/plots/confusion.csv
(actual,predicted of the winner on the test set) and reports/plots/comparison.csv (architecture, CV mean and test
value of the selection metric), for `dvc plots`.
"""

from __future__ import annotations

import logging
from pathlib import Path

import mlflow
import numpy as np
import pandas as pd

from dlpipe.config import Params, params_hash
from dlpipe.errors import DataError
from dlpipe.evaluation import selection as sel
from dlpipe.io import read_json, write_json, write_text
from dlpipe.metric_names import SCALAR_METRICS
from dlpipe.paths import ProjectPaths
from dlpipe.stages import promote as promote_stage
from dlpipe.stages.common import StageContext
from dlpipe.tracking import registry
from dlpipe.tracking.runs import is_global_zero, log_metrics, log_params, set_tags, tracked_run

log = logging.getLogger(__name__)


def output_paths(paths: ProjectPaths) -> dict[str, Path]:
    return {
        "leaderboard_csv": paths.leaderboard_csv,
        "leaderboard_md": paths.leaderboard_md,
        "selection": paths.selection,
        "metrics": paths.metrics,
        "confusion": paths.plots / "confusion.csv",
        "comparison": paths.plots / "comparison.csv",
    }


def load_reports(params: Params, paths: ProjectPaths, dataset_hash: str | None = None) -> tuple[dict, dict]:
    """The cv and test reports of every architecture in params (DataError naming the stage to run if missing)."""
    cv_reports, test_reports = {}, {}
    for arch in params.architectures:
        cv_path, test_path = paths.cv_report(arch), paths.test_report(arch)
        for path in (cv_path, test_path):
            if not path.is_file():
                raise DataError(f"{path}: missing; run the study stage first (dvc repro study)")
        cv_reports[arch], test_reports[arch] = read_json(cv_path), read_json(test_path)
        got = test_reports[arch].get("dataset_hash")
        if dataset_hash and got and got != dataset_hash:
            raise DataError(f"{test_path}: trained on another version of the dataset; run train@{arch} again")
    return cv_reports, test_reports


def run(params: Params, paths: ProjectPaths) -> dict:
    ctx = StageContext.load(params, paths)
    ctx.close_orphans("select")
    metric, positive = params.selection.metric, params.selection.positive_class
    cv_reports, test_reports = load_reports(params, paths, ctx.dataset_hash)
    board = sel.build_leaderboard(cv_reports, test_reports, metric, positive)
    fold_sizes = np.bincount(ctx.data.splits.fold, minlength=ctx.data.splits.folds)
    verdict = sel.significance(cv_reports, board, metric, positive, sel.kfold_test_train_ratio(fold_sizes),
                               params.selection.alpha)  # fmt: skip
    winner = verdict["winner"]
    wtest = test_reports[winner]
    phash = params_hash("select", params.selection, params.architectures,
                        {a: (cv_reports[a].get("params_hash"), test_reports[a].get("params_hash"))
                         for a in params.architectures})  # fmt: skip
    test_hash = promote_stage.test_set_hash(ctx.dataset_hash, ctx.data.splits.test_idx)
    row = board.iloc[0]
    summary = {
        **verdict,
        "positive_class": positive,
        "cv_mean": float(row["cv_mean"]),
        "cv_std": float(row["cv_std"]),
        "test_value": float(row["test_selection"]),
        "test_set_hash": test_hash,
        "params_hash": phash,
        "registry": None,
    }
    if not is_global_zero():
        return summary
    out = output_paths(paths)
    write_text(out["leaderboard_csv"], board.to_csv(index=False))
    write_text(out["leaderboard_md"], sel.leaderboard_markdown(board, verdict))
    write_json(out["metrics"], winner_metrics(wtest, row, metric, verdict))
    _write_plots(paths, board, winner, out)

    with tracked_run(run_name="select") as run_:
        run_id = run_.info.run_id
        set_tags(run_id, {**ctx.tags("select", None, phash), "winner": winner})
        log_params(run_id, {"selection.metric": metric, "selection.positive_class": positive,
                            "selection.alpha": params.selection.alpha,
                            "architectures": ",".join(params.architectures)})  # fmt: skip
        numbers = {"winner_cv_mean": summary["cv_mean"], "winner_cv_std": summary["cv_std"],
                   **{f"winner_test_{m}": wtest[m] for m in SCALAR_METRICS}}  # fmt: skip
        if verdict.get("p_value") is not None:
            numbers |= {"p_value": verdict["p_value"], "t_statistic": verdict["t"]}
        log_metrics(run_id, {k: v for k, v in numbers.items() if np.isfinite(v)})
        for key in ("leaderboard_csv", "leaderboard_md"):
            mlflow.log_artifact(str(out[key]))
        summary["mlflow_run_id"] = run_id
        if wtest.get("model_uri"):
            summary["registry"] = register_and_promote(params, paths, winner, cv_reports[winner], wtest, summary)
        else:
            log.warning("select: %s has no logged model (mlflow.log_models false?); nothing registered", winner)
        mlflow.log_dict(summary, "selection.json")
    write_json(out["selection"], summary)
    log.info(sel.selection_sentence(verdict))
    return summary


def leaderboard_text(params: Params, paths: ProjectPaths, csv: bool = False) -> str:
    """The leaderboard from the current cv and test reports (nothing written, nothing registered)."""
    from dlpipe.data.store import SPLITS_FILE, load_splits

    metric, positive = params.selection.metric, params.selection.positive_class
    cv_reports, test_reports = load_reports(params, paths)
    board = sel.build_leaderboard(cv_reports, test_reports, metric, positive)
    if csv:
        return board.to_csv(index=False)
    splits, _ = load_splits(paths.prepared / SPLITS_FILE)
    ratio = sel.kfold_test_train_ratio(np.bincount(splits.fold, minlength=splits.folds))
    verdict = sel.significance(cv_reports, board, metric, positive, ratio, params.selection.alpha)
    return sel.leaderboard_markdown(board, verdict)


def winner_metrics(test_report: dict, row: pd.Series, metric: str, verdict: dict) -> dict:
    """Flat numbers for `dvc metrics show`: the winner's test metrics and its CV score."""
    out = {m: float(test_report[m]) for m in SCALAR_METRICS}
    if sel.is_positive_metric(metric):
        out[metric] = float(row["test_selection"])
    out[f"cv_{metric}_mean"] = float(row["cv_mean"])
    out[f"cv_{metric}_std"] = float(row["cv_std"])
    for key in ("n_params", "train_seconds", "latency_ms_per_sample"):
        if key in test_report:
            out[key] = test_report[key]
    if verdict.get("p_value") is not None:
        out["lead_p_value"] = float(verdict["p_value"])
    return out


def _write_plots(paths: ProjectPaths, board: pd.DataFrame, winner: str, out: dict[str, Path]) -> None:
    pred_path = paths.test_predictions(winner)
    if not pred_path.is_file():
        raise DataError(f"{pred_path}: missing; run the study stage again (dvc repro study)")
    write_text(out["confusion"], pred_path.read_text())
    comparison = pd.DataFrame({
        "architecture": board["architecture"],
        "metric": board["selection_metric"],
        "cv_mean": board["cv_mean"],
        "cv_std": board["cv_std"],
        "test": board["test_selection"],
    })  # fmt: skip
    write_text(out["comparison"], comparison.to_csv(index=False))


def register_and_promote(params: Params, paths: ProjectPaths, winner: str, cv_report: dict, test_report: dict,
                         summary: dict) -> dict:  # fmt: skip
    """Register the winner's model (alias challenger) and, with registry.auto_promote, try to promote it."""
    name = params.registered_model_name
    metric = params.selection.metric
    tags = {
        "architecture": winner,
        "selection_metric": metric,
        f"cv_{metric}_mean": f"{summary['cv_mean']:.6f}",
        f"cv_{metric}_std": f"{summary['cv_std']:.6f}",
        **{f"test_{m}": f"{test_report[m]:.6f}" for m in SCALAR_METRICS},
        f"test_{metric}": f"{summary['test_value']:.6f}",
        "params_hash": test_report.get("params_hash", ""),
        "cv_params_hash": cv_report.get("params_hash", ""),
        "git_commit": test_report.get("git_commit", ""),
        "dataset": params.data.name,
        "dataset_hash": test_report.get("dataset_hash", ""),
        "test_set_hash": summary["test_set_hash"],
        "train_run_id": test_report.get("mlflow_run_id", ""),
        "cv_run_id": cv_report.get("mlflow_run_id", ""),
        "select_run_id": summary.get("mlflow_run_id", ""),
    }
    if summary.get("p_value") is not None:
        tags["lead_p_value"] = f"{summary['p_value']:.6g}"
        tags["runner_up"] = summary["runner_up"]
    description = (
        f"{winner}: CV {metric} {summary['cv_mean']:.4f} ± {summary['cv_std']:.4f}, "
        f"test {metric} {summary['test_value']:.4f}. {sel.selection_sentence(summary)}"
    )
    version = registry.register_challenger(name, test_report["model_uri"], test_report.get("model_id"), tags,
                                           description)  # fmt: skip
    result = {"name": name, "version": int(version.version), "alias": registry.CHALLENGER, "promotion": None}
    if params.registry.auto_promote:
        decision = promote_stage.promote_version(
            params, paths, version=int(version.version), actor="select (auto_promote)"
        )
        result["promotion"] = decision.to_dict()
        log.info("select: %s", decision.message)
    champion = registry.get_alias(name, registry.CHAMPION)
    result["champion"] = int(champion.version) if champion else None
    return result
