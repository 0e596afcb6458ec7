"""Model selection: the leaderboard, the champion on cross-validation (never the test set), and what the folds say
about its lead.

The leaderboard holds every deep model and every baseline (`kind`), ranked on the CV mean of the selection metric.
The champion is a deep model: the best one (`selection.rule: best`), or the smallest deep model practically
equivalent to the best (`smallest_within_rope`: its probability of being worse than the best by more than
`selection.rope` is at most 1 - `selection.equivalence`, by the Bayesian correlated t-test). The Pareto front over
(CV selection metric, latency, parameters) is marked. Reported beside the choice: the corrected resampled t-test and
the Bayesian test against the runner-up, and against the best baseline.

Selection metrics: `accuracy`, `{precision,recall,f1}_{macro,weighted}`, and `{precision,recall,f1}_positive` (the
per-class metric of `selection.positive_class`). A report (`reports/cv/<arch>.json`, a baseline in
`reports/baselines.json`) holds per-fold scalar metrics in `per_fold` and per-class ones in `per_fold_per_class`.
"""

from __future__ import annotations

import math
from typing import Any

import numpy as np
import pandas as pd

from dlpipe.errors import DataError
from dlpipe.evaluation.pareto import pareto_front
from dlpipe.evaluation.statistics import (
    TTest,
    corrected_resampled_ttest,
    correlated_bayesian_ttest,
    kfold_test_train_ratio,
)
from dlpipe.evaluation.wording import baseline_sentence
from dlpipe.metric_names import LABELS, SCALAR_METRICS, is_positive_metric, label, per_class_name

LEADERBOARD_METRICS = SCALAR_METRICS  # every metric kept in the CSV as CV mean/std and test value
__all__ = ["TTest", "corrected_resampled_ttest", "kfold_test_train_ratio"]


def _fold_keys(report: dict) -> list[str]:
    return sorted(report["per_fold"], key=lambda k: int(k.rsplit("_", 1)[-1]))


def fold_values(cv_report: dict, metric: str, positive_class: str | None = None) -> np.ndarray:
    """The per-fold values of `metric` in a cv report, in fold order."""
    keys = _fold_keys(cv_report)
    name = cv_report.get("architecture") or cv_report.get("name")
    if not is_positive_metric(metric):
        try:
            return np.array([float(cv_report["per_fold"][k][metric]) for k in keys])
        except KeyError:
            raise DataError(f"cv report of {name!r} has no per-fold {metric!r}") from None
    per_class = cv_report.get("per_fold_per_class")
    if not per_class or positive_class is None:
        raise DataError(
            f"cv report of {name!r}: {metric!r} needs per-fold per-class metrics "
            "(per_fold_per_class) and selection.positive_class"
        )
    try:
        return np.array([float(per_class[k][positive_class][per_class_name(metric)]) for k in keys])
    except KeyError:
        raise DataError(
            f"cv report of {name!r}: no per-fold {per_class_name(metric)!r} of class {positive_class!r}"
        ) from None


def test_value(test_report: dict, metric: str, positive_class: str | None = None) -> float:
    """The value of `metric` in a test report."""
    if is_positive_metric(metric):
        return float(test_report["per_class"][positive_class][per_class_name(metric)])
    return float(test_report[metric])


def averaging_of(metric: str) -> str:
    """The averaging whose test precision/recall/F1 the compact leaderboard shows for `metric`."""
    if is_positive_metric(metric):
        return "positive"
    return "weighted" if metric.endswith("_weighted") else "macro"


def _row(name: str, kind: str, cv: dict, test: dict, metric: str, positive: str | None) -> dict:
    values = fold_values(cv, metric, positive)
    oof = cv.get("oof") or {}
    row: dict = {
        "architecture": name,
        "kind": kind,
        "selection_metric": metric,
        "cv_mean": float(values.mean()),
        "cv_std": float(values.std(ddof=1)) if len(values) > 1 else 0.0,
        "folds": len(values),
    }
    for m in LEADERBOARD_METRICS:
        row[f"cv_{m}_mean"] = cv["mean"].get(m, math.nan)
        row[f"cv_{m}_std"] = cv["std"].get(m, math.nan)
    for m in LEADERBOARD_METRICS:
        row[f"test_{m}"] = test.get(m, math.nan)
    if positive is not None and test.get("per_class", {}).get(positive):
        for m in ("precision", "recall", "f1"):
            row[f"test_{m}_positive"] = float(test["per_class"][positive][m])
    row["test_selection"] = test_value(test, metric, positive) if test else math.nan
    row["average_precision"] = oof.get("average_precision", math.nan)
    row["ece"] = oof.get("ece", math.nan)
    row["n_params"] = test.get("n_params", math.nan)
    row["train_seconds"] = test.get("train_seconds", test.get("fit_seconds", math.nan))
    row["latency_ms_per_sample"] = test.get("latency_ms_per_sample", math.nan)
    row["cv_run_id"] = cv.get("mlflow_run_id") or ""
    row["train_run_id"] = test.get("mlflow_run_id") or ""
    return row


def build_leaderboard(
    cv_reports: dict[str, dict],
    test_reports: dict[str, dict],
    metric: str,
    positive_class: str | None = None,
    baselines: dict[str, dict] | None = None,
) -> pd.DataFrame:
    """One row per model (deep models, then baselines), ranked on the CV mean of `metric` (ties: lower std, fewer
    params, name). Deep rows on the Pareto front over (CV mean, latency, parameters) have `pareto` True."""
    rows = [_row(a, "deep", cv, test_reports.get(a, {}), metric, positive_class) for a, cv in cv_reports.items()]
    for name, report in (baselines or {}).items():
        rows.append(_row(name, "baseline", report, report.get("test", {}), metric, positive_class))
    if not rows:
        raise DataError("no models to compare")
    frame = pd.DataFrame(rows)
    deep = frame["kind"] == "deep"
    objectives = frame.loc[deep, ["cv_mean", "latency_ms_per_sample", "n_params"]].to_numpy(dtype=float)
    frame["pareto"] = False
    frame.loc[deep, "pareto"] = pareto_front(objectives, [True, False, False]) if deep.any() else []
    frame["_params_key"] = frame["n_params"].fillna(math.inf)
    frame = frame.sort_values(
        ["cv_mean", "cv_std", "_params_key", "architecture"], ascending=[False, True, True, True], kind="mergesort"
    )
    frame = frame.drop(columns="_params_key").reset_index(drop=True)
    frame.insert(0, "rank", range(1, len(frame) + 1))
    return frame


def choose_winner(leaderboard: pd.DataFrame) -> str:
    """The top-ranked deep model (the highest CV mean of the selection metric)."""
    deep = leaderboard[leaderboard["kind"] == "deep"] if "kind" in leaderboard else leaderboard
    if deep.empty:
        raise DataError("no deep model on the leaderboard to select")
    return str(deep.iloc[0]["architecture"])


def compare(a: dict, b: dict, metric: str, positive: str | None, ratio: float, rope: float) -> dict[str, Any]:
    """Both tests of model a against model b on the same folds (a - b)."""
    if _fold_keys(a) != _fold_keys(b):
        names = [r.get("architecture") or r.get("name") for r in (a, b)]
        raise DataError(f"cv reports of {names[0]!r} and {names[1]!r} cover different folds; run both again")
    x, y = fold_values(a, metric, positive), fold_values(b, metric, positive)
    return {
        "t_test": corrected_resampled_ttest(x, y, ratio).to_dict(),
        "bayes": correlated_bayesian_ttest(x, y, ratio, rope).to_dict(),
    }


def choose_by_rule(
    leaderboard: pd.DataFrame, cv_reports: dict[str, dict], selection: Any, ratio: float, positive: str | None
) -> tuple[str, dict]:
    """The champion under `selection.rule`, with the comparisons behind the choice."""
    best = choose_winner(leaderboard)
    if selection.rule == "best":
        return best, {}
    deep = leaderboard[leaderboard["kind"] == "deep"]
    candidates = []
    for _, row in deep.iterrows():
        arch = str(row["architecture"])
        if arch == best:
            candidates.append((row, None))
            continue
        result = compare(cv_reports[best], cv_reports[arch], selection.metric, positive, ratio, selection.rope)
        if result["bayes"]["p_right"] <= 1.0 - selection.equivalence:  # not practically worse than the best
            candidates.append((row, result["bayes"]))
    row, bayes = min(
        candidates, key=lambda c: (_num(c[0]["n_params"]), _num(c[0]["latency_ms_per_sample"]), -c[0]["cv_mean"])
    )
    return str(row["architecture"]), {"best": best, "equivalent_to_best": bayes}


def _num(value: Any) -> float:
    value = float(value)
    return math.inf if math.isnan(value) else value


def verdict(
    leaderboard: pd.DataFrame,
    cv_reports: dict[str, dict],
    baselines: dict[str, dict] | None,
    selection: Any,
    ratio: float,
) -> dict:
    """The champion, and how it compares with the runner-up and with the best baseline (both tests)."""
    metric, positive = selection.metric, selection.positive_class
    winner, rule = choose_by_rule(leaderboard, cv_reports, selection, ratio, positive)
    out: dict = {
        "winner": winner,
        "metric": metric,
        "rule": selection.rule,
        "rope": selection.rope,
        "alpha": selection.alpha,
        "runner_up": None,
        "significant": None,
        "p_value": None,
        "t": None,
        "bayes": None,
        "baseline": None,
        **({"rule_detail": rule} if rule else {}),
    }
    deep = [str(a) for a in leaderboard.loc[leaderboard["kind"] == "deep", "architecture"] if str(a) != winner]
    if deep:
        runner = deep[0]
        result = compare(cv_reports[winner], cv_reports[runner], metric, positive, ratio, selection.rope)
        t = result["t_test"]
        out |= {"runner_up": runner, **t, "significant": bool(t["p_value"] < selection.alpha), "bayes": result["bayes"]}
    base = leaderboard[leaderboard["kind"] == "baseline"]
    if not base.empty and baselines:
        name = str(base.iloc[0]["architecture"])
        result = compare(cv_reports[winner], baselines[name], metric, positive, ratio, selection.rope)
        t, b = result["t_test"], result["bayes"]
        out["baseline"] = {
            "name": name,
            "mean_difference": t["mean_difference"],
            "p_value": t["p_value"],
            "significant": bool(t["p_value"] < selection.alpha),
            "bayes": b,
            "beats": bool(t["mean_difference"] > 0 and t["p_value"] < selection.alpha),
            "test_value": _test_selection(leaderboard, winner, "deep"),
            "baseline_test_value": _test_selection(leaderboard, name, "baseline"),
        }
    return out


def _test_selection(leaderboard: pd.DataFrame, name: str, kind: str) -> float | None:
    row = leaderboard[(leaderboard["architecture"] == name) & (leaderboard["kind"] == kind)]
    value = float(row.iloc[0]["test_selection"]) if len(row) else math.nan
    return None if math.isnan(value) else value


def significance(
    cv_reports: dict[str, dict],
    leaderboard: pd.DataFrame,
    metric: str,
    positive_class: str | None,
    test_train_ratio: float,
    alpha: float,
) -> dict:
    """Is the top deep model's lead over the runner-up meaningful across folds? (corrected resampled t-test)."""
    winner = choose_winner(leaderboard)
    out: dict = {
        "winner": winner,
        "metric": metric,
        "alpha": alpha,
        "runner_up": None,
        "significant": None,
        "p_value": None,
        "t": None,
    }
    deep = leaderboard[leaderboard["kind"] == "deep"] if "kind" in leaderboard else leaderboard
    if len(deep) < 2:
        return out
    runner = str(deep.iloc[1]["architecture"])
    if _fold_keys(cv_reports[winner]) != _fold_keys(cv_reports[runner]):
        raise DataError(f"cv reports of {winner!r} and {runner!r} cover different folds; run cv for both again")
    a = fold_values(cv_reports[winner], metric, positive_class)
    test = corrected_resampled_ttest(a, fold_values(cv_reports[runner], metric, positive_class), test_train_ratio)
    out |= {"runner_up": runner, **test.to_dict(), "significant": bool(test.p_value < alpha)}
    return out


# --- text -------------------------------------------------------------------------------------------------------


def _fmt(value: Any, digits: int = 4) -> str:
    if value is None or (isinstance(value, float) and math.isnan(value)):
        return ""
    return f"{value:.{digits}f}"


def compact_table(leaderboard: pd.DataFrame, winner: str | None = None) -> pd.DataFrame:
    """What a researcher reads first: rank, model, the selection metric's CV mean ± std, the test accuracy and
    precision/recall/F1 of its averaging, parameters and latency (everything else is in the CSV)."""
    metric = str(leaderboard.iloc[0]["selection_metric"]) if len(leaderboard) else "f1_macro"
    avg = averaging_of(metric)
    names = []
    for _, row in leaderboard.iterrows():
        name = str(row["architecture"]) + (" (baseline)" if row["kind"] == "baseline" else "")
        name += " ◆" if bool(row.get("pareto")) else ""
        names.append(f"**{name}**" if row["architecture"] == winner and row["kind"] == "deep" else name)
    table = pd.DataFrame({"rank": leaderboard["rank"], "model": names})
    table[f"CV {label(metric)}"] = [
        f"{_fmt(m)} ± {_fmt(s)}" for m, s in zip(leaderboard["cv_mean"], leaderboard["cv_std"], strict=True)
    ]
    table["test acc"] = [_fmt(v) for v in leaderboard["test_accuracy"]]
    for short, m in (("P", "precision"), ("R", "recall"), ("F1", "f1")):
        column = f"test_{m}_{avg}"
        table[f"test {short}"] = [_fmt(v) for v in leaderboard.get(column, pd.Series([math.nan] * len(table)))]
    table["params"] = [("" if math.isnan(float(v)) else f"{int(v):,}") for v in leaderboard["n_params"]]
    table["ms/sample"] = [_fmt(v, 3) for v in leaderboard["latency_ms_per_sample"].astype(float)]
    return table


def leaderboard_markdown(leaderboard: pd.DataFrame, selection: dict | None = None) -> str:
    """The compact table and the selection verdict below it."""
    metric = str(leaderboard.iloc[0]["selection_metric"]) if len(leaderboard) else ""
    winner = selection["winner"] if selection else None
    avg = {"macro": "macro-averaged", "weighted": "weighted", "positive": "of the positive class"}[averaging_of(metric)]
    lines = [
        "# Leaderboard",
        "",
        f"Ranked on the cross-validated {LABELS.get(metric, metric)} (mean ± std over folds); test columns: the "
        f"held-out test set, seen once per model (P/R/F1 {avg}); ◆ on the Pareto front (CV score, latency, "
        "parameters); **champion** in bold. Every column: reports/leaderboard.csv.",
        "",
        compact_table(leaderboard, winner).to_markdown(index=False),
        "",
    ]
    if selection:
        lines += [selection_sentence(selection), ""]
    if selection and selection.get("dropped"):
        lines += [dropped_table(selection["dropped"], metric), ""]
    return "\n".join(lines)


def dropped_table(dropped: dict[str, dict], metric: str) -> str:
    """The architectures the study budget dropped (never scored, never champion) and why."""
    rows = [
        {
            "model": arch,
            "status": "dropped",
            f"CV {label(metric)} (first folds)": f"{why['mean']:.4f} ({why['after_folds']} folds)",
            "leader": f"{why['leader']} {why['leader_mean']:.4f}",
            "why": why["reason"],
        }
        for arch, why in sorted(dropped.items())
    ]
    return "Dropped by the study budget (not scored, not ranked):\n\n" + pd.DataFrame(rows).to_markdown(index=False)


def selection_sentence(selection: dict) -> str:
    metric = label(selection["metric"])
    text = f"Champion: **{selection['winner']}** on the cross-validated {metric}"
    detail = selection.get("rule_detail") or {}
    if selection.get("rule") == "smallest_within_rope" and detail.get("best") != selection["winner"]:
        b = detail.get("equivalent_to_best") or {}
        text += (
            f", the smallest model practically equivalent to the best ({detail.get('best')}; P(worse by more "
            f"than {selection['rope']}) = {b.get('p_right', 0):.3f})"
        )
    if selection.get("runner_up") is None:
        text += " (the only deep model)."
    else:
        verdict = "significant" if selection["significant"] else "not significant"
        text += (
            f"; its lead of {selection['mean_difference']:+.4f} over {selection['runner_up']} is {verdict} at "
            f"alpha={selection['alpha']} (corrected resampled t-test over {selection['k']} folds: "
            f"t={selection['t']:.3f}, p={selection['p_value']:.4f})"
        )
        if selection.get("bayes"):
            b = selection["bayes"]
            text += (
                f"; Bayesian correlated t-test, rope ±{selection['rope']}: P(better) {b['p_right']:.3f}, "
                f"P(equivalent) {b['p_rope']:.3f}, P(worse) {b['p_left']:.3f}"
            )
        text += "."
    if selection.get("baseline"):
        text += baseline_sentence(selection["baseline"], metric)
    return text


def score_predictions(
    y_true: np.ndarray, y_pred: np.ndarray, metric: str, class_names: list[str], positive_class: str | None = None
) -> float:
    """`metric` of class-index predictions (the promotion gate re-evaluates registered models with this)."""
    from sklearn.metrics import accuracy_score, precision_recall_fscore_support

    y_true, y_pred = np.asarray(y_true), np.asarray(y_pred)
    if metric == "accuracy":
        return float(accuracy_score(y_true, y_pred))
    base, _, average = metric.rpartition("_")
    index = {"precision": 0, "recall": 1, "f1": 2}[base]
    if average == "positive":
        if positive_class not in class_names:
            raise DataError(f"selection.positive_class: {positive_class!r} is not a class ({', '.join(class_names)})")
        label_index = class_names.index(positive_class)
        values = precision_recall_fscore_support(y_true, y_pred, labels=[label_index], average=None, zero_division=0)
        return float(values[index][0])
    values = precision_recall_fscore_support(y_true, y_pred, average=average, zero_division=0)
    return float(values[index])
