"""Model selection: the corrected resampled t-test against hand computations, the leaderboard ranking, the winner
following `selection.metric` (hand-written cv reports where precision and recall rank two models differently),
per-class (*_positive) metrics and the scoring used by the promotion gate."""

from __future__ import annotations

import math
from pathlib import Path

import numpy as np
import pytest
from helpers.project import SMALL_STUDY, deep_merge

from dlpipe.config import parse_params
from dlpipe.errors import DataError
from dlpipe.evaluation import selection as sel
from dlpipe.io import write_json
from dlpipe.metric_names import SCALAR_METRICS
from dlpipe.paths import ProjectPaths
from dlpipe.stages import select

# --- corrected resampled t-test --------------------------------------------------------------------------------


def test_ttest_matches_a_hand_computation() -> None:
    a = [0.90, 0.80, 0.85]
    b = [0.80, 0.78, 0.80]
    # d = (0.10, 0.02, 0.05): mean 0.17/3; deviations (0.13/3, -0.11/3, -0.02/3); var = (0.0169+0.0121+0.0004)/9/2
    mean = 0.17 / 3
    var = (0.0169 + 0.0121 + 0.0004) / 9 / 2
    ratio = 0.5  # n_test/n_train of 3-fold CV
    t = mean / math.sqrt((1 / 3 + ratio) * var)
    p = 1 - t / math.sqrt(t * t + 2)  # two-sided p of Student's t with 2 degrees of freedom, in closed form
    result = sel.corrected_resampled_ttest(np.array(a), np.array(b), ratio)
    assert result.k == 3 and result.dof == 2
    assert result.mean_difference == pytest.approx(mean)
    assert result.std_difference == pytest.approx(math.sqrt(var))
    assert result.t == pytest.approx(t, rel=1e-9)
    assert result.t == pytest.approx(1.5360, abs=1e-4)
    assert result.p_value == pytest.approx(p, rel=1e-9)
    assert result.p_value == pytest.approx(0.2643, abs=1e-4)


def test_correction_makes_the_test_more_conservative_than_the_naive_paired_t_test() -> None:
    rng = np.random.default_rng(0)
    a = rng.uniform(0.8, 0.9, 10)
    b = a - rng.uniform(0.0, 0.04, 10)
    corrected = sel.corrected_resampled_ttest(a, b, 1 / 9)
    naive = sel.corrected_resampled_ttest(a, b, 0.0)  # ratio 0: the ordinary paired t-test
    d = a - b
    assert naive.t == pytest.approx(d.mean() / (d.std(ddof=1) / math.sqrt(10)))
    assert abs(corrected.t) < abs(naive.t)
    assert corrected.p_value > naive.p_value
    assert corrected.t == pytest.approx(naive.t * math.sqrt((1 / 10) / (1 / 10 + 1 / 9)))


def test_ttest_sign_and_degenerate_cases() -> None:
    a, b = np.array([0.7, 0.8, 0.9]), np.array([0.8, 0.85, 0.88])
    forward, backward = sel.corrected_resampled_ttest(a, b, 0.5), sel.corrected_resampled_ttest(b, a, 0.5)
    assert forward.t == pytest.approx(-backward.t) and forward.p_value == pytest.approx(backward.p_value)
    same = sel.corrected_resampled_ttest(a, a, 0.5)
    assert (same.t, same.p_value) == (0.0, 1.0)
    constant_lead = sel.corrected_resampled_ttest(a + 0.1, a, 0.5)
    assert constant_lead.t == math.inf and constant_lead.p_value == 0.0
    with pytest.raises(ValueError, match="equal length"):
        sel.corrected_resampled_ttest(a, b[:2], 0.5)
    with pytest.raises(ValueError, match="at least 2 folds"):
        sel.corrected_resampled_ttest(a[:1], b[:1], 0.5)


def test_kfold_ratio_from_fold_sizes() -> None:
    assert sel.kfold_test_train_ratio([10, 10, 10]) == pytest.approx(0.5)
    assert sel.kfold_test_train_ratio([20] * 5) == pytest.approx(0.25)
    assert sel.kfold_test_train_ratio([3, 4]) == pytest.approx((3 / 4 + 4 / 3) / 2)


# --- hand-written reports: precision and recall rank A and B differently -----------------------------------------

PRECISE = {"precision_macro": [0.95, 0.93, 0.94], "recall_macro": [0.70, 0.72, 0.71]}  # A: precise, misses a lot
SENSITIVE = {"precision_macro": [0.80, 0.82, 0.81], "recall_macro": [0.90, 0.91, 0.89]}  # B: finds more, less precise


def cv_report(arch: str, values: dict[str, list[float]], positive: dict[str, list[float]] | None = None) -> dict:
    folds = len(next(iter(values.values())))
    per_fold = {}
    for k in range(folds):
        row = {m: 0.8 for m in SCALAR_METRICS}
        row |= {m: v[k] for m, v in values.items()}
        per_fold[f"fold_{k}"] = row
    mean = {m: float(np.mean([per_fold[f][m] for f in per_fold])) for m in SCALAR_METRICS}
    std = {m: float(np.std([per_fold[f][m] for f in per_fold], ddof=1)) for m in SCALAR_METRICS}
    out = {
        "architecture": arch,
        "params_hash": f"cv-{arch}",
        "mlflow_run_id": None,
        "folds": folds,
        "mean": mean,
        "std": std,
        "per_fold": per_fold,
        "confusion_matrix": [[5, 1], [1, 5]],
        "class_names": ["neg", "pos"],
    }
    if positive is not None:
        out["per_fold_per_class"] = {
            f"fold_{k}": {
                "pos": {"precision": positive["precision"][k], "recall": positive["recall"][k], "f1": 0.5},
                "neg": {"precision": 0.5, "recall": 0.5, "f1": 0.5},
            }
            for k in range(folds)
        }
    return out


def test_report(arch: str, value: float, n_params: int) -> dict:
    return {
        "architecture": arch,
        "params_hash": f"train-{arch}",
        **{m: value for m in SCALAR_METRICS},
        "per_class": {
            "neg": {"precision": 0.6, "recall": 0.6, "f1": 0.6},
            "pos": {"precision": value, "recall": value, "f1": value},
        },
        "n_params": n_params,
        "train_seconds": 1.5,
        "latency_ms_per_sample": 0.02,
    }


test_report.__test__ = False  # a helper, not a test


def write_reports(root: Path, cv_reports: dict[str, dict], test_reports: dict[str, dict]) -> ProjectPaths:
    paths = ProjectPaths(root)
    for arch, report in cv_reports.items():
        write_json(paths.reports / "cv" / f"{arch}.json", report)
    for arch, report in test_reports.items():
        write_json(paths.reports / "test" / f"{arch}.json", report)
    return paths


def params_for(metric: str, positive_class: str | None = None):
    selection = {"metric": metric, **({"positive_class": positive_class} if positive_class else {})}
    return parse_params(deep_merge(SMALL_STUDY, {"selection": selection}))


@pytest.fixture
def precision_vs_recall(tmp_path: Path) -> ProjectPaths:
    """perceptron = A (higher precision), mlp = B (higher recall); B is better on the test set in every metric."""
    return write_reports(
        tmp_path,
        {"perceptron": cv_report("perceptron", PRECISE), "mlp": cv_report("mlp", SENSITIVE)},
        {"perceptron": test_report("perceptron", 0.70, 650), "mlp": test_report("mlp", 0.99, 2410)},
    )


@pytest.mark.parametrize(("metric", "winner"), [("precision_macro", "perceptron"), ("recall_macro", "mlp")])
def test_winner_follows_the_selection_metric(precision_vs_recall: ProjectPaths, metric: str, winner: str) -> None:
    params = params_for(metric)
    r = select.load_reports(params, precision_vs_recall)
    cv_reports, test_reports = r.cv, r.test
    board = sel.build_leaderboard(cv_reports, test_reports, metric)
    assert sel.choose_winner(board) == winner
    assert list(board["rank"]) == [1, 2]
    expected = PRECISE if winner == "perceptron" else SENSITIVE
    assert board.iloc[0]["cv_mean"] == pytest.approx(np.mean(expected[metric]))


def test_winner_is_chosen_on_cv_never_on_the_test_set(precision_vs_recall: ProjectPaths) -> None:
    params = params_for("precision_macro")
    r = select.load_reports(params, precision_vs_recall)
    board = sel.build_leaderboard(r.cv, r.test, "precision_macro")
    assert sel.choose_winner(board) == "perceptron"  # although mlp's test precision is far higher
    assert board.set_index("architecture").loc["mlp", "test_precision_macro"] > board.iloc[0]["test_precision_macro"]


def test_significance_of_the_lead_is_reported(precision_vs_recall: ProjectPaths) -> None:
    params = params_for("recall_macro")
    r = select.load_reports(params, precision_vs_recall)
    cv_reports, test_reports = r.cv, r.test
    board = sel.build_leaderboard(cv_reports, test_reports, "recall_macro")
    verdict = sel.significance(cv_reports, board, "recall_macro", None, 0.5, 0.05)
    expected = sel.corrected_resampled_ttest(
        np.array(SENSITIVE["recall_macro"]), np.array(PRECISE["recall_macro"]), 0.5
    )
    assert verdict["winner"] == "mlp" and verdict["runner_up"] == "perceptron"
    assert verdict["p_value"] == pytest.approx(expected.p_value) and verdict["t"] == pytest.approx(expected.t)
    assert verdict["significant"] is (expected.p_value < 0.05)
    text = sel.leaderboard_markdown(board, verdict)
    assert "| **mlp" in text and "±" in text and f"p={expected.p_value:.4f}" in text  # the champion in bold
    assert "significant" in sel.selection_sentence(verdict)


def test_a_narrow_noisy_lead_is_not_significant() -> None:
    a = cv_report("a", {"f1_macro": [0.80, 0.90, 0.70]})
    b = cv_report("b", {"f1_macro": [0.85, 0.80, 0.74]})
    board = sel.build_leaderboard({"a": a, "b": b}, {}, "f1_macro")
    verdict = sel.significance({"a": a, "b": b}, board, "f1_macro", None, 0.5, 0.05)
    assert verdict["winner"] == "a" and verdict["significant"] is False and verdict["p_value"] > 0.5


def test_ties_on_cv_go_to_the_steadier_then_the_smaller_model() -> None:
    steady = cv_report("steady", {"f1_macro": [0.75, 0.75, 0.75]})  # exact in binary: equal means
    shaky = cv_report("shaky", {"f1_macro": [0.5, 0.75, 1.0]})
    big = cv_report("big", {"f1_macro": [0.75, 0.75, 0.75]})
    tests = {
        "steady": test_report("steady", 0.5, 100),
        "shaky": test_report("shaky", 0.5, 10),
        "big": test_report("big", 0.9, 1000),
    }
    board = sel.build_leaderboard({"big": big, "shaky": shaky, "steady": steady}, tests, "f1_macro")
    assert list(board["architecture"]) == ["steady", "big", "shaky"]


def test_positive_class_metrics_use_per_fold_per_class_values(tmp_path: Path) -> None:
    # A is better on recall of class "pos", B on its precision; macro metrics are equal
    a = cv_report("perceptron", {"f1_macro": [0.8] * 3}, {"precision": [0.6, 0.6, 0.7], "recall": [0.9, 0.9, 0.8]})
    b = cv_report("mlp", {"f1_macro": [0.8] * 3}, {"precision": [0.9, 0.8, 0.9], "recall": [0.5, 0.6, 0.5]})
    tests = {"perceptron": test_report("perceptron", 0.7, 1), "mlp": test_report("mlp", 0.6, 1)}
    paths = write_reports(tmp_path, {"perceptron": a, "mlp": b}, tests)
    for metric, winner in (("recall_positive", "perceptron"), ("precision_positive", "mlp")):
        params = params_for(metric, "pos")
        r = select.load_reports(params, paths)
        cv_reports, test_reports = r.cv, r.test
        board = sel.build_leaderboard(cv_reports, test_reports, metric, "pos")
        assert sel.choose_winner(board) == winner
        assert board.iloc[0]["test_selection"] == (0.7 if winner == "perceptron" else 0.6)
    with pytest.raises(DataError, match="per_fold_per_class"):
        sel.fold_values(cv_report("x", {"f1_macro": [0.8] * 3}), "f1_positive", "pos")


def test_missing_reports_name_the_stage_to_run(tmp_path: Path) -> None:
    paths = write_reports(
        tmp_path, {"perceptron": cv_report("perceptron", PRECISE)}, {"perceptron": test_report("perceptron", 0.7, 1)}
    )
    with pytest.raises(DataError, match=r"cv/mlp.json: missing; run the study stage first"):
        select.load_reports(params_for("f1_macro"), paths)
    write_json(paths.reports / "cv" / "mlp.json", cv_report("mlp", SENSITIVE))
    with pytest.raises(DataError, match=r"test/mlp.json: missing; run the study stage first"):
        select.load_reports(params_for("f1_macro"), paths)


def test_paired_test_needs_the_same_folds() -> None:
    a = cv_report("a", {"f1_macro": [0.9, 0.9, 0.9]})
    b = cv_report("b", {"f1_macro": [0.8, 0.8]})
    board = sel.build_leaderboard({"a": a, "b": b}, {}, "f1_macro")
    with pytest.raises(DataError, match="different folds"):
        sel.significance({"a": a, "b": b}, board, "f1_macro", None, 0.5, 0.05)


# --- the promotion gate's scoring ----------------------------------------------------------------------------------


def test_score_predictions_by_hand() -> None:
    names = ["neg", "pos"]
    y_true = np.array([0, 0, 0, 1, 1])
    y_pred = np.array([0, 1, 0, 1, 0])
    # pos: tp 1, fp 1, fn 1 -> precision 1/2, recall 1/2; neg: tp 2, fp 1, fn 1 -> 2/3, 2/3
    assert sel.score_predictions(y_true, y_pred, "accuracy", names) == pytest.approx(3 / 5)
    assert sel.score_predictions(y_true, y_pred, "precision_positive", names, "pos") == pytest.approx(1 / 2)
    assert sel.score_predictions(y_true, y_pred, "recall_macro", names) == pytest.approx((1 / 2 + 2 / 3) / 2)
    assert sel.score_predictions(y_true, y_pred, "f1_weighted", names) == pytest.approx((3 * 2 / 3 + 2 * 1 / 2) / 5)
    with pytest.raises(DataError, match="not a class"):
        sel.score_predictions(y_true, y_pred, "f1_positive", names, "maybe")


def test_dvc_metrics_show_fits_120_columns_and_diff_shows_the_champions_scores(tmp_path: Path) -> None:
    """metrics.json as `dvc metrics show` prints it: one line of short, named columns (every model's scores are in
    the leaderboard), and `dvc metrics diff` shows the champion's scores change."""
    import json
    import subprocess

    from helpers.processes import subprocess_env
    from helpers.reports import leaderboard_frame, selection

    board, summary = leaderboard_frame(), selection()
    summary["winner"] = "transformer"  # the longest architecture name of the family
    written = select.dvc_metrics(params_for("f1_macro"), board, summary)
    assert written == {
        "champion": "transformer",
        "cv_mean": 0.99,
        "cv_std": 0.001,
        "test": 0.9858,
        "version": 4,
        "select_run": summary["mlflow_run_id"],
    }

    def sh(*cmd: str) -> str:
        env = {**subprocess_env(tmp_path), "COLUMNS": "200"}
        proc = subprocess.run(cmd, cwd=tmp_path, env=env, capture_output=True, text=True, timeout=120)
        assert proc.returncode == 0, proc.stderr
        return proc.stdout

    (tmp_path / "dvc.yaml").write_text(
        "stages:\n  select:\n    cmd: 'true'\n    metrics:\n      - reports/metrics.json:\n          cache: false\n"
    )
    (tmp_path / "reports").mkdir()
    (tmp_path / "reports" / "metrics.json").write_text(json.dumps(written, indent=2))
    for cmd in (("git", "init", "-q"), ("dvc", "init", "-q"), ("git", "add", "-A")):
        sh(*cmd)
    sh("git", "-c", "user.email=t@example.com", "-c", "user.name=t", "commit", "-qm", "study")
    shown = sh("dvc", "metrics", "show").splitlines()
    assert max(len(line) for line in shown) <= 120, shown
    assert shown[0].split() == ["Path", "champion", "cv_mean", "cv_std", "select_run", "test", "version"]

    later = {**written, "cv_mean": 0.9925, "version": 5}
    (tmp_path / "reports" / "metrics.json").write_text(json.dumps(later, indent=2))
    diff = sh("dvc", "metrics", "diff").splitlines()
    assert max(len(line) for line in diff) <= 120, diff
    changed = {line.split()[1]: line.split()[2:] for line in diff[1:]}
    assert changed["cv_mean"] == ["0.99", "0.9925", "0.0025"] and changed["version"] == ["4", "5", "1"]
