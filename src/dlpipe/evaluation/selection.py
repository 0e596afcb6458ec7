"""Model selection: the leaderboard, the winner on cross-validation (never the test set) and whether its lead is
statistically meaningful (corrected resampled paired t-test over the folds).

Selection metrics: `accuracy`, `{precision,recall,f1}_{macro,weighted}`, and `{precision,recall,f1}_positive`
(the per-class metric of `selection.positive_class`, for binary tasks). A cv report (`reports/cv/<arch>.json`)
holds per-fold scalar metrics in `per_fold`; per-class per-fold values come from `per_fold_per_class`
({fold_k: {class: {precision, recall, f1}}}) which the select stage fills in from the fold runs when absent.
"""

from __future__ import annotations

import math
from dataclasses import asdict, dataclass

import numpy as np
import pandas as pd
from scipy import stats

from dlpipe.errors import DataError
from dlpipe.metric_names import LABELS, SCALAR_METRICS, is_positive_metric, per_class_name

LEADERBOARD_METRICS = SCALAR_METRICS  # every metric shown as CV mean +/- std and on the test set


def _fold_keys(report: dict) -> list[str]:
    return sorted(report["per_fold"], key=lambda k: int(k.rsplit("_", 1)[-1]))


def fold_values(cv_report: dict, metric: str, positive_class: str | None = None) -> np.ndarray:
    """The per-fold values of `metric` in a cv report, in fold order."""
    keys = _fold_keys(cv_report)
    if not is_positive_metric(metric):
        try:
            return np.array([float(cv_report["per_fold"][k][metric]) for k in keys])
        except KeyError:
            raise DataError(f"cv report of {cv_report.get('architecture')!r} has no per-fold {metric!r}") from None
    base = per_class_name(metric)
    per_class = cv_report.get("per_fold_per_class")
    if not per_class or positive_class is None:
        raise DataError(
            f"cv report of {cv_report.get('architecture')!r}: {metric!r} needs per-fold per-class metrics "
            f"(per_fold_per_class) and selection.positive_class"
        )
    try:
        return np.array([float(per_class[k][positive_class][base]) for k in keys])
    except KeyError:
        raise DataError(
            f"cv report of {cv_report.get('architecture')!r}: no per-fold {base!r} of class {positive_class!r}"
        ) from None


def test_value(test_report: dict, metric: str, positive_class: str | None = None) -> float:
    """The value of `metric` in a test report (reports/test/<arch>.json)."""
    if is_positive_metric(metric):
        return float(test_report["per_class"][positive_class][per_class_name(metric)])
    return float(test_report[metric])


@dataclass
class TTest:
    """Corrected resampled paired t-test (Nadeau & Bengio 2003) of `a - b` over k folds."""

    k: int
    mean_difference: float
    std_difference: float
    t: float
    p_value: float
    dof: int
    test_train_ratio: float

    def to_dict(self) -> dict:
        return asdict(self)


def corrected_resampled_ttest(a: np.ndarray, b: np.ndarray, test_train_ratio: float) -> TTest:
    """Two-sided test that the paired per-fold scores `a` and `b` differ.

    t = mean(d) / sqrt((1/k + n_test/n_train) * var(d)), d = a - b, var with ddof=1, k - 1 degrees of freedom.
    The correction term n_test/n_train accounts for the overlap of training sets between folds (1/(k-1) for
    k-fold cross-validation). Identical differences on every fold give t = +/-inf and p = 0 (or t = 0, p = 1 when
    they are all zero).
    """
    a, b = np.asarray(a, dtype=float), np.asarray(b, dtype=float)
    if a.shape != b.shape or a.ndim != 1:
        raise ValueError(f"paired scores must be two 1-d arrays of equal length, got {a.shape} and {b.shape}")
    k = len(a)
    if k < 2:
        raise ValueError("the t-test needs at least 2 folds")
    d = a - b
    mean = float(d.mean())
    var = float(d.var(ddof=1))
    dof = k - 1
    if var <= 0.0:
        t = 0.0 if mean == 0.0 else math.copysign(math.inf, mean)
        p = 1.0 if mean == 0.0 else 0.0
    else:
        t = mean / math.sqrt((1.0 / k + test_train_ratio) * var)
        p = float(2.0 * stats.t.sf(abs(t), dof))
    return TTest(k, mean, math.sqrt(max(var, 0.0)), float(t), p, dof, float(test_train_ratio))


def kfold_test_train_ratio(fold_sizes: list[int] | np.ndarray) -> float:
    """n_test / n_train averaged over folds, from the number of samples in each fold."""
    sizes = np.asarray(fold_sizes, dtype=float)
    total = sizes.sum()
    return float(np.mean(sizes / (total - sizes)))


def build_leaderboard(
    cv_reports: dict[str, dict],
    test_reports: dict[str, dict],
    metric: str,
    positive_class: str | None = None,
) -> pd.DataFrame:
    """One row per architecture, ranked on the CV mean of `metric` (ties: lower std, fewer params, name).

    Columns: rank, architecture, selection_metric, cv_mean, cv_std (of the selection metric), cv_<m>_mean/std and
    test_<m> for every scalar metric, test_selection, n_params, train_seconds, latency_ms_per_sample.
    """
    rows = []
    for arch, cv in cv_reports.items():
        test = test_reports.get(arch, {})
        values = fold_values(cv, metric, positive_class)
        row: dict = {
            "architecture": arch,
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
        row["test_selection"] = test_value(test, metric, positive_class) if test else math.nan
        row["n_params"] = test.get("n_params", math.nan)
        row["train_seconds"] = test.get("train_seconds", math.nan)
        row["latency_ms_per_sample"] = test.get("latency_ms_per_sample", math.nan)
        rows.append(row)
    if not rows:
        raise DataError("no architectures to compare")
    frame = pd.DataFrame(rows)
    frame["_params_key"] = frame["n_params"].fillna(math.inf)
    frame = frame.sort_values(["cv_mean", "cv_std", "_params_key", "architecture"],
                              ascending=[False, True, True, True], kind="mergesort")  # fmt: skip
    frame = frame.drop(columns="_params_key").reset_index(drop=True)
    frame.insert(0, "rank", range(1, len(frame) + 1))
    return frame


def choose_winner(leaderboard: pd.DataFrame) -> str:
    """The top-ranked architecture (the highest CV mean of the selection metric)."""
    return str(leaderboard.iloc[0]["architecture"])


def significance(
    cv_reports: dict[str, dict],
    leaderboard: pd.DataFrame,
    metric: str,
    positive_class: str | None,
    test_train_ratio: float,
    alpha: float,
) -> dict:
    """Is the winner's lead over the runner-up meaningful across folds? (corrected resampled t-test)."""
    winner = choose_winner(leaderboard)
    out: dict = {"winner": winner, "metric": metric, "alpha": alpha, "runner_up": None, "significant": None,
                 "p_value": None, "t": None}  # fmt: skip
    if len(leaderboard) < 2:
        return out
    runner = str(leaderboard.iloc[1]["architecture"])
    a_keys, b_keys = _fold_keys(cv_reports[winner]), _fold_keys(cv_reports[runner])
    if a_keys != b_keys:
        raise DataError(f"cv reports of {winner!r} and {runner!r} cover different folds; run cv for both again")
    test = corrected_resampled_ttest(
        fold_values(cv_reports[winner], metric, positive_class),
        fold_values(cv_reports[runner], metric, positive_class),
        test_train_ratio,
    )
    out |= {"runner_up": runner, **test.to_dict(), "significant": bool(test.p_value < alpha)}
    return out


def _fmt(value: float, digits: int = 4) -> str:
    return "" if value is None or (isinstance(value, float) and math.isnan(value)) else f"{value:.{digits}f}"


def leaderboard_markdown(leaderboard: pd.DataFrame, selection: dict | None = None) -> str:
    """A readable table: CV mean +/- std per metric, test metrics, size and speed; the selection verdict below."""
    metric = str(leaderboard.iloc[0]["selection_metric"]) if len(leaderboard) else ""
    table = pd.DataFrame({"rank": leaderboard["rank"], "architecture": leaderboard["architecture"]})
    if is_positive_metric(metric):
        table[f"CV {LABELS[metric]} *"] = [
            f"{_fmt(m)} ± {_fmt(s)}" for m, s in zip(leaderboard["cv_mean"], leaderboard["cv_std"], strict=True)
        ]
    for m in LEADERBOARD_METRICS:
        table[f"CV {LABELS[m]}{' *' if m == metric else ''}"] = [
            f"{_fmt(a)} ± {_fmt(b)}"
            for a, b in zip(leaderboard[f"cv_{m}_mean"], leaderboard[f"cv_{m}_std"], strict=True)
        ]
    for m in LEADERBOARD_METRICS:
        table[f"test {LABELS[m]}"] = [_fmt(v) for v in leaderboard[f"test_{m}"]]
    if is_positive_metric(metric):
        table[f"test {LABELS[metric]}"] = [_fmt(v) for v in leaderboard["test_selection"]]
    table["parameters"] = [("" if math.isnan(v) else f"{int(v):,}") for v in leaderboard["n_params"].astype(float)]
    table["training (s)"] = [_fmt(v, 1) for v in leaderboard["train_seconds"].astype(float)]
    table["latency (ms/sample, CPU)"] = [_fmt(v, 3) for v in leaderboard["latency_ms_per_sample"].astype(float)]
    lines = [
        "# Leaderboard",
        "",
        f"Ranked on the cross-validated {LABELS.get(metric, metric)} (*), mean ± std over folds; "
        "test columns: the held-out test set, evaluated once per model.",
        "",
        table.to_markdown(index=False),
        "",
    ]
    if selection:
        lines.append(selection_sentence(selection))
        lines.append("")
    return "\n".join(lines)


def selection_sentence(selection: dict) -> str:
    metric = selection["metric"]
    text = f"Winner: **{selection['winner']}** on the cross-validated {LABELS.get(metric, metric)}"
    if selection.get("runner_up") is None:
        return text + " (the only candidate)."
    verdict = "significant" if selection["significant"] else "not significant"
    return (
        f"{text}; its lead of {selection['mean_difference']:+.4f} over {selection['runner_up']} is {verdict} at "
        f"alpha={selection['alpha']} (corrected resampled t-test over {selection['k']} folds: "
        f"t={selection['t']:.3f}, p={selection['p_value']:.4f})."
    )


def score_predictions(y_true: np.ndarray, y_pred: np.ndarray, metric: str, class_names: list[str],
                      positive_class: str | None = None) -> float:  # fmt: skip
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
        label = class_names.index(positive_class)
        values = precision_recall_fscore_support(y_true, y_pred, labels=[label], average=None, zero_division=0)
        return float(values[index][0])
    values = precision_recall_fscore_support(y_true, y_pred, average=average, zero_division=0)
    return float(values[index])
