"""select: the leaderboard over every model and baseline, the champion on cross-validation, registration and
promotion, and the study's summary run in MLflow.

The champion is chosen on the CV mean of `selection.metric` (never a test-set number), by `selection.rule` (see
`evaluation.selection`); its lead over the runner-up and over the best baseline is judged with the corrected
resampled t-test and the Bayesian correlated t-test over the folds. Its logged model becomes a new version of
`registry.model_name` (default: one registered model per data set or CSV file) with alias `challenger`; with
`registry.auto_promote` the `champion` alias moves to it when it beats the current champion on the held-out test set
both were held out on; when they were held out on different ones, nothing is compared and the decision is left to the
user (see stages.promote).

The `select` MLflow run is the study's summary: it links (tags `runs.<arch>.<stage>` and the logged lineage.json)
the exact tune, cv and train runs whose numbers are on the leaderboard, and logs the leaderboard and plots.

Outputs: reports/leaderboard.csv (every column) and .md (the compact table), reports/selection.json (the verdict,
the registry outcome, the runs behind it), reports/metrics.json (for `dvc metrics show` / `dvc exp show`: the
champion, every architecture's CV selection metric, the registered version and the select run), and for
`dvc plots`: reports/plots/{comparison,confusion,pr,roc,calibration}.csv.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass, field
from typing import Any

import mlflow
import numpy as np
import pandas as pd

from dlpipe.config import Params, params_hash
from dlpipe.errors import DataError
from dlpipe.evaluation import selection as sel
from dlpipe.io import check_writable, read_json, write_json, write_text
from dlpipe.metric_names import SCALAR_METRICS, label
from dlpipe.paths import ProjectPaths
from dlpipe.stages import promote as promote_stage
from dlpipe.stages.common import StageContext
from dlpipe.tracking import marks, registry
from dlpipe.tracking.runs import is_global_zero, log_metrics, log_params, set_tags, tracked_run

log = logging.getLogger(__name__)
STAGE = "select"
CURVE_POINTS = 2000  # per class in the PR/ROC plot files


@dataclass
class StudyReports:
    """What the study and baselines stages wrote, for the architectures and baselines params list."""

    cv: dict[str, dict]
    test: dict[str, dict]
    tuning: dict[str, dict]
    baselines: dict[str, dict]
    dropped: dict[str, dict] = field(default_factory=dict)  # cv reports of architectures the study budget dropped

    def cv_of(self, arch: str) -> dict:
        return self.cv.get(arch) or self.dropped.get(arch, {})


def load_reports(params: Params, paths: ProjectPaths, dataset_hash: str | None = None) -> StudyReports:
    """Every report select needs (DataError naming the stage to run if one is missing or stale)."""
    cv, test, tuning, dropped = {}, {}, {}, {}
    for arch in params.architectures:
        tuning_path = paths.tuning_report(arch)
        tuning[arch] = read_json(tuning_path) if tuning_path.is_file() else {}
        if paths.cv_report(arch).is_file() and read_json(paths.cv_report(arch)).get("dropped"):
            dropped[arch] = read_json(paths.cv_report(arch))  # not scored: no test report is read
            continue
        for path in (paths.cv_report(arch), paths.test_report(arch)):
            if not path.is_file():
                raise DataError(f"{path}: missing; run the study stage first (dvc repro study)")
        cv[arch], test[arch] = read_json(paths.cv_report(arch)), read_json(paths.test_report(arch))
        got = test[arch].get("dataset_hash")
        if dataset_hash and got and got != dataset_hash:
            raise DataError(
                f"{paths.test_report(arch)}: trained on another version of the dataset; run the study stage again"
            )
    if not cv:
        raise DataError(f"every architecture was dropped by the study budget ({', '.join(dropped)}); nothing to select")
    baselines: dict[str, dict] = {}
    if params.baselines.models:
        if not paths.baselines_report.is_file():
            raise DataError(f"{paths.baselines_report}: missing; run the baselines stage first (dvc repro baselines)")
        found = read_json(paths.baselines_report)
        baselines = {name: found[name] for name in params.baselines.models if name in found}
    return StudyReports(cv, test, tuning, baselines, dropped)


def run(params: Params, paths: ProjectPaths) -> dict:
    check_writable(paths.reports, paths.plots)
    ctx = StageContext.load(params, paths)
    ctx.check_against_data()
    ctx.close_orphans(STAGE)
    reports = load_reports(params, paths, ctx.dataset_hash)
    ratio = sel.kfold_test_train_ratio(np.bincount(ctx.data.splits.fold, minlength=ctx.data.splits.folds))
    board = sel.build_leaderboard(
        reports.cv, reports.test, params.selection.metric, params.selection.positive_class, reports.baselines
    )
    board = with_run_ids(board, reports)
    verdict = sel.verdict(board, reports.cv, reports.baselines, params.selection, ratio)
    if reports.dropped:  # a study without a budget writes what it always wrote
        verdict["dropped"] = {arch: report["dropped"] for arch, report in reports.dropped.items()}
    summary = {**summarize(ctx, reports, board, verdict), "sentence": sel.selection_sentence(verdict)}
    if not is_global_zero():
        return summary
    write_tables(paths, board, verdict)
    write_plots(ctx, board, verdict["winner"])
    with tracked_run(
        run_name=STAGE, tags={**ctx.tags(STAGE, None, summary["params_hash"]), "winner": verdict["winner"]}
    ) as run_:
        summary["mlflow_run_id"] = run_.info.run_id
        record_summary(run_.info.run_id, params, paths, summary, reports)
        summary["registry"] = register(params, paths, reports, summary)
        marks.record(
            run_.info.run_id, summary, paths.leaderboard_md.read_text(), paths.plots, list(ctx.data.dataset.class_names)
        )
        mlflow.log_dict(summary, "selection.json")
    write_json(paths.selection, summary)
    write_json(paths.metrics, dvc_metrics(params, board, summary))
    log.info(sel.selection_sentence(verdict).replace("**", ""))  # a log line, not Markdown
    return summary


def with_run_ids(board: pd.DataFrame, reports: StudyReports) -> pd.DataFrame:
    board = board.copy()
    board.insert(
        board.columns.get_loc("cv_run_id"),
        "tune_run_id",
        [reports.tuning.get(a, {}).get("mlflow_run_id") or "" for a in board["architecture"]],
    )
    return board


def summarize(ctx: StageContext, reports: StudyReports, board: pd.DataFrame, verdict: dict) -> dict:
    """reports/selection.json: the verdict, the champion's numbers, the runs behind every row."""
    params, winner = ctx.params, verdict["winner"]
    row = board[(board["architecture"] == winner) & (board["kind"] == "deep")].iloc[0]
    phash = params_hash(
        STAGE,
        params.selection,
        params.architectures,
        params.baselines,
        {
            a: (reports.cv_of(a).get("params_hash"), reports.test.get(a, {}).get("params_hash"))
            for a in params.architectures
        },
    )
    return {
        **verdict,
        "positive_class": params.selection.positive_class,
        "cv_mean": float(row["cv_mean"]),
        "cv_std": float(row["cv_std"]),
        "test_value": float(row["test_selection"]),
        "operating_point": reports.test[winner].get("operating_point"),
        "test_set_hash": promote_stage.test_set_hash(ctx.dataset_hash, ctx.data.splits.test_idx),
        "params_hash": phash,
        "runs": {a: runs_of(reports, a) for a in params.architectures},
        "mlflow_run_id": None,
        "registry": None,
    }


def runs_of(reports: StudyReports, arch: str) -> dict[str, str | None]:
    """The MLflow runs whose numbers the leaderboard shows for `arch`."""
    return {
        "tune": reports.tuning[arch].get("mlflow_run_id"),
        "cv": reports.cv_of(arch).get("mlflow_run_id"),
        "train": reports.test.get(arch, {}).get("mlflow_run_id"),
    }


def write_tables(paths: ProjectPaths, board: pd.DataFrame, verdict: dict) -> None:
    write_text(paths.leaderboard_csv, board.to_csv(index=False))
    write_text(paths.leaderboard_md, sel.leaderboard_markdown(board, verdict))


def dvc_metrics(params: Params, board: pd.DataFrame, summary: dict) -> dict[str, Any]:
    """What `dvc metrics show`, `dvc metrics diff` and `dvc exp show` compare across experiments, one short column
    each (a line fits 120 columns): the champion, its CV mean and std and its test score of the selection metric, the
    registered version and the select run. Every model's scores are in reports/leaderboard.csv."""
    winner = summary["winner"]
    row = board[(board["kind"] == "deep") & (board["architecture"] == winner)].iloc[0]

    def number(column: str) -> float | None:
        value = row.get(column)
        return None if value is None or pd.isna(value) else round(float(value), 4)

    return {
        "champion": winner,
        "cv_mean": number("cv_mean"),
        "cv_std": number("cv_std"),
        "test": number("test_selection"),
        "version": (summary.get("registry") or {}).get("version"),
        "select_run": summary["mlflow_run_id"],
    }


# --- plots ----------------------------------------------------------------------------------------------------------


def write_plots(ctx: StageContext, board: pd.DataFrame, winner: str) -> None:
    """The files `dvc plots` draws: model comparison, the champion's test confusion, its out-of-fold PR and ROC
    curves per class, and every architecture's reliability diagram."""
    paths = ctx.paths
    pred_path = paths.test_predictions(winner)
    if not pred_path.is_file():
        raise DataError(f"{pred_path}: missing; run the study stage again (dvc repro study)")
    # every curve and confusion file names the champion in a `model` column: the charts' titles show it (dvc.yaml)
    confusion = pd.read_csv(pred_path, dtype=str, keep_default_na=False).assign(model=winner)
    write_text(paths.plots / "confusion.csv", confusion.to_csv(index=False))
    comparison = pd.DataFrame(
        {
            "architecture": board["architecture"],
            "kind": board["kind"],
            "metric": [label(m) for m in board["selection_metric"]],
            "cv_mean": board["cv_mean"],
            "cv_std": board["cv_std"],
            "cv_low": board["cv_mean"] - board["cv_std"],
            "cv_high": (board["cv_mean"] + board["cv_std"]).clip(upper=1.0),
            "test": board["test_selection"],
        }
    )
    write_text(paths.plots / "comparison.csv", comparison.to_csv(index=False))
    if paths.oof_predictions(winner).is_file():
        pr, roc = curves(ctx, winner)
        write_text(paths.plots / "pr.csv", pr.assign(model=winner).to_csv(index=False))
        write_text(paths.plots / "roc.csv", roc.assign(model=winner).to_csv(index=False))
    else:  # a report without out-of-fold predictions: the other plots still stand
        log.warning("select: %s has no out-of-fold predictions; no PR/ROC curves", paths.oof_predictions(winner))
        for name in ("pr.csv", "roc.csv"):
            (paths.plots / name).unlink(missing_ok=True)
    rows = [
        {"architecture": arch, **b}
        for arch in ctx.params.architectures
        for b in read_json(paths.cv_report(arch)).get("oof", {}).get("reliability", [])
    ]
    frame = pd.DataFrame(rows, columns=["architecture", "confidence", "accuracy", "count"])
    write_text(paths.plots / "calibration.csv", frame.to_csv(index=False))


def curves(ctx: StageContext, arch: str) -> tuple[pd.DataFrame, pd.DataFrame]:
    """Per-class (one vs rest) precision-recall and ROC curves from the out-of-fold probabilities of `arch`; a
    binary task shows its positive class only."""
    from sklearn.metrics import precision_recall_curve, roc_curve

    oof = pd.read_csv(ctx.paths.oof_predictions(arch), dtype={"target": str})
    names = ctx.data.dataset.class_names
    shown = names
    if len(names) == 2:
        shown = [ctx.params.selection.positive_class or names[1]]
    pr_parts, roc_parts = [], []
    for name in shown:
        truth, score = (oof["target"] == name).to_numpy(), oof[f"prob_{name}"].to_numpy()
        precision, recall, _ = precision_recall_curve(truth, score)
        fpr, tpr, _ = roc_curve(truth, score)
        pr_parts.append(_thin(pd.DataFrame({"class": name, "recall": recall, "precision": precision})))
        roc_parts.append(_thin(pd.DataFrame({"class": name, "fpr": fpr, "tpr": tpr})))
    return pd.concat(pr_parts, ignore_index=True), pd.concat(roc_parts, ignore_index=True)


def _thin(frame: pd.DataFrame) -> pd.DataFrame:
    if len(frame) <= CURVE_POINTS:
        return frame
    keep = np.unique(np.linspace(0, len(frame) - 1, CURVE_POINTS).astype(int))
    return frame.iloc[keep]


# --- MLflow and the registry ----------------------------------------------------------------------------------------


def record_summary(run_id: str, params: Params, paths: ProjectPaths, summary: dict, reports: StudyReports) -> None:
    """The select run links the runs behind the leaderboard and carries the leaderboard and plots."""
    links = {
        f"runs.{arch}.{stage}": rid for arch, stages in summary["runs"].items() for stage, rid in stages.items() if rid
    }
    set_tags(run_id, links)
    log_params(
        run_id,
        {
            "selection": params.selection,
            "architectures": ",".join(params.architectures),
            "baselines": ",".join(reports.baselines),
        },
    )
    numbers = {
        "champion_cv_mean": summary["cv_mean"],
        "champion_cv_std": summary["cv_std"],
        **{f"champion_test_{m}": reports.test[summary["winner"]][m] for m in SCALAR_METRICS},
    }
    if summary.get("p_value") is not None:
        numbers |= {"lead_p_value": summary["p_value"], "lead_t": summary["t"]}
    if summary.get("bayes"):
        numbers |= {f"lead_{k}": v for k, v in summary["bayes"].items() if k.startswith("p_")}
    log_metrics(run_id, {k: v for k, v in numbers.items() if v is not None and np.isfinite(v)})
    lineage = [
        {
            "architecture": arch,
            "stage": stage,
            "run_id": rid,
            "params_hash": {
                "tune": reports.tuning[arch].get("study_name"),
                "cv": reports.cv_of(arch).get("params_hash"),
                "train": reports.test.get(arch, {}).get("params_hash"),
            }[stage],
        }
        for arch, stages in summary["runs"].items()
        for stage, rid in stages.items()
        if rid
    ]
    mlflow.log_dict({"runs": lineage}, "lineage.json")
    for path in (paths.leaderboard_csv, paths.leaderboard_md):
        mlflow.log_artifact(str(path))
    mlflow.log_artifacts(str(paths.plots), "plots")


def register(params: Params, paths: ProjectPaths, reports: StudyReports, summary: dict) -> dict | None:
    winner = summary["winner"]
    if not reports.test[winner].get("model_uri"):
        log.warning("select: %s has no logged model (mlflow.log_models false?); nothing registered", winner)
        return None
    return register_and_promote(params, paths, winner, reports.cv[winner], reports.test[winner], summary)


def register_and_promote(
    params: Params, paths: ProjectPaths, winner: str, cv_report: dict, test_report: dict, summary: dict
) -> dict:
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
        "operating_point": (test_report.get("operating_point") or {}).get("rule", "argmax"),
    }
    if summary.get("p_value") is not None:
        tags["lead_p_value"] = f"{summary['p_value']:.6g}"
        tags["runner_up"] = summary["runner_up"]
    description = (
        f"{winner}: CV {metric} {summary['cv_mean']:.4f} ± {summary['cv_std']:.4f}, "
        f"test {metric} {summary['test_value']:.4f}. {sel.selection_sentence(summary)}"
    )
    version = registry.register_challenger(
        name, test_report["model_uri"], test_report.get("model_id"), tags, description
    )
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


def leaderboard_text(params: Params, paths: ProjectPaths, csv: bool = False) -> str:
    """The leaderboard as select wrote it (nothing recomputed, nothing registered)."""
    if not paths.leaderboard_csv.is_file():
        raise DataError(f"{paths.leaderboard_csv}: missing; run the select stage first (dvc repro select)")
    if csv:
        return paths.leaderboard_csv.read_text()
    return paths.leaderboard_md.read_text()
