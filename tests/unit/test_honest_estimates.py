"""Answers known in advance: operating-point thresholds, the Pareto front, the Bayesian correlated t-test,
calibration error and temperature scaling, and the smallest-within-rope rule."""

from __future__ import annotations

import numpy as np
import pandas as pd
import pytest
import torch
from scipy import stats

from dlpipe.config import SelectionParams
from dlpipe.evaluation import selection as sel
from dlpipe.evaluation.calibration import expected_calibration_error, fit_temperature, reliability_bins
from dlpipe.evaluation.operating_point import OperatingPoint, choose, decide, parse_rule
from dlpipe.evaluation.pareto import pareto_front
from dlpipe.evaluation.statistics import corrected_resampled_ttest, correlated_bayesian_ttest
from dlpipe.evaluation.wording import baseline_sentence

# --- operating points -----------------------------------------------------------------------------------------------


def synthetic_scores(n: int = 4000, seed: int = 0) -> tuple[np.ndarray, np.ndarray]:
    """Positives score higher on average, with overlap: precision rises with the threshold."""
    rng = np.random.default_rng(seed)
    y = rng.random(n) < 0.3
    score = 1 / (1 + np.exp(-(rng.normal(0, 1, n) + 2.0 * y - 1.0)))
    return y.astype(int), score


def precision_recall(y: np.ndarray, predicted: np.ndarray) -> tuple[float, float]:
    tp = int(((predicted == 1) & (y == 1)).sum())
    return tp / max(1, int((predicted == 1).sum())), tp / int((y == 1).sum())


def test_a_precision_target_is_reached_with_the_best_recall():
    y, score = synthetic_scores()
    point = choose("precision>=0.95", y, score, "pos")
    predicted = (score >= point.threshold).astype(int)
    precision, recall = precision_recall(y, predicted)
    assert point.reached and precision >= 0.95
    assert precision == pytest.approx(point.precision) and recall == pytest.approx(point.recall)
    # any lower threshold that still reaches 0.95 would have more recall: none exists
    lower = np.sort(score[score < point.threshold])[::-1][:50]
    for t in lower:
        p, r = precision_recall(y, (score >= t).astype(int))
        assert p < 0.95 or r <= recall


def test_a_recall_target_and_max_f1_and_argmax():
    y, score = synthetic_scores(seed=1)
    point = choose("recall>=0.9", y, score, "pos")
    assert precision_recall(y, (score >= point.threshold).astype(int))[1] >= 0.9
    best = choose("max_f1", y, score, "pos")
    f1s = []
    for t in np.quantile(score, np.linspace(0.01, 0.99, 99)):
        p, r = precision_recall(y, (score >= t).astype(int))
        f1s.append(2 * p * r / (p + r) if p + r else 0.0)
    assert best.f1 >= max(f1s) - 1e-9
    assert choose("argmax", y, score, "pos").threshold is None


def test_an_unreachable_target_is_reported_not_hidden():
    y = np.array([0, 1, 0, 1])
    point = choose("precision>=1.0", y, np.array([0.9, 0.8, 0.7, 0.6]), "pos")
    assert not point.reached and point.precision < 1.0


def test_decide_applies_the_threshold_to_the_positive_class_only():
    probs = np.array([[0.7, 0.3], [0.4, 0.6], [0.85, 0.15]])
    point = OperatingPoint("precision>=0.9", 0.2, "yes")
    assert decide(probs, point, ["no", "yes"]).tolist() == [1, 1, 0]
    assert decide(probs, OperatingPoint("argmax", None, None), ["no", "yes"]).tolist() == [0, 1, 0]


@pytest.mark.parametrize("text", ["precision>=1.5", "recall>0.9", "f1>=0.9", "precision>=", "best"])
def test_bad_operating_points_are_refused(text):
    with pytest.raises(ValueError, match=r"operating point|target"):
        parse_rule(text)


# --- the Pareto front -----------------------------------------------------------------------------------------------


def test_pareto_front_by_hand():
    # (score up, latency down, params down)
    rows = np.array(
        [
            [0.99, 2.0, 1000],  # a: best score
            [0.98, 1.0, 1000],  # b: faster than a, a bit worse: on the front
            [0.97, 1.5, 2000],  # c: dominated by b (worse everywhere)
            [0.95, 0.1, 10],  # d: tiny and fast: on the front
            [0.95, 0.1, 20],  # e: dominated by d
            [0.99, 2.0, 1000],  # f: ties a exactly: neither dominates the other
            [np.nan, 0.1, 10],  # g: no score: never on the front
        ]
    )
    assert pareto_front(rows, [True, False, False]).tolist() == [True, True, False, True, False, True, False]


# --- the Bayesian correlated t-test -------------------------------------------------------------------------------


def test_bayesian_test_matches_a_direct_monte_carlo_posterior():
    """Benavoli et al. (2017): with a non-informative prior, sigma^2 | d follows (k-1) s^2 / chi2_{k-1} and
    mu | sigma^2 ~ N(mean(d), sigma^2 (1/k + rho/(1-rho))). Sampling that hierarchy must give the closed form."""
    a = np.array([0.962, 0.971, 0.955, 0.968, 0.975, 0.959, 0.966, 0.972, 0.961, 0.969])
    b = np.array([0.958, 0.962, 0.957, 0.960, 0.966, 0.951, 0.963, 0.965, 0.957, 0.962])
    ratio, rope = 1 / 9, 0.005
    result = correlated_bayesian_ttest(a, b, ratio, rope)
    d = a - b
    k, s2 = len(d), d.var(ddof=1)
    rng = np.random.default_rng(0)
    sigma2 = (k - 1) * s2 / rng.chisquare(k - 1, 400_000)
    mu = rng.normal(d.mean(), np.sqrt(sigma2 * (1 / k + ratio)))
    assert result.p_left == pytest.approx(np.mean(mu < -rope), abs=0.003)
    assert result.p_rope == pytest.approx(np.mean(np.abs(mu) <= rope), abs=0.003)
    assert result.p_right == pytest.approx(np.mean(mu > rope), abs=0.003)
    assert result.p_left + result.p_rope + result.p_right == pytest.approx(1.0)
    # the same scale as the corrected t-test: P(mu > 0) is one minus half its two-sided p-value when mean > 0
    t = corrected_resampled_ttest(a, b, ratio)
    assert stats.t(k - 1, d.mean(), result.scale).sf(0) == pytest.approx(1 - t.p_value / 2)


def test_bayesian_test_degenerate_and_symmetric_cases():
    a = np.array([0.9, 0.9, 0.9])
    same = correlated_bayesian_ttest(a, a, 0.5, 0.01)
    assert (same.p_left, same.p_rope, same.p_right) == (0.0, 1.0, 0.0)
    ahead = correlated_bayesian_ttest(a + 0.05, a, 0.5, 0.01)
    assert ahead.p_right == 1.0
    x, y = np.array([0.91, 0.93, 0.90, 0.94]), np.array([0.92, 0.90, 0.93, 0.91])
    forward, backward = correlated_bayesian_ttest(x, y, 1 / 3, 0.01), correlated_bayesian_ttest(y, x, 1 / 3, 0.01)
    assert forward.p_left == pytest.approx(backward.p_right) and forward.p_rope == pytest.approx(backward.p_rope)


# --- calibration ----------------------------------------------------------------------------------------------------


def calibrated_sample(n: int = 50_000, classes: int = 4, seed: int = 0) -> tuple[np.ndarray, np.ndarray]:
    """Labels drawn from the very probabilities predicted: a perfectly calibrated model."""
    rng = np.random.default_rng(seed)
    probs = rng.dirichlet(np.full(classes, 0.5), n)
    y = np.array([rng.choice(classes, p=p) for p in probs])
    return probs, y


def test_a_perfectly_calibrated_model_has_an_ece_near_zero():
    probs, y = calibrated_sample()
    assert expected_calibration_error(probs, y) < 0.01
    for b in reliability_bins(probs, y):
        if b["count"] > 2000:
            assert b["accuracy"] == pytest.approx(b["confidence"], abs=0.03)


def test_overconfidence_shows_and_temperature_scaling_removes_it():
    probs, y = calibrated_sample(20_000)
    logits = torch.log(torch.as_tensor(probs)) * 3.0  # the same model, three times too confident
    overconfident = torch.softmax(logits, dim=1).numpy()
    assert expected_calibration_error(overconfident, y) > 0.1
    temperature = fit_temperature(logits, torch.as_tensor(y))
    assert temperature == pytest.approx(3.0, rel=0.1)
    rescaled = torch.softmax(logits / temperature, dim=1).numpy()
    assert expected_calibration_error(rescaled, y) < 0.02
    assert (rescaled.argmax(1) == overconfident.argmax(1)).all()  # never changes the decision


# --- the selection rule -----------------------------------------------------------------------------------------


def cv(name: str, values: list[float], n_params: int, latency: float) -> tuple[dict, dict]:
    folds = {f"fold_{k}": {"f1_macro": v, "accuracy": v} for k, v in enumerate(values)}
    mean = {"f1_macro": float(np.mean(values)), "accuracy": float(np.mean(values))}
    std = {"f1_macro": float(np.std(values, ddof=1)), "accuracy": float(np.std(values, ddof=1))}
    test = {
        "f1_macro": mean["f1_macro"],
        "accuracy": mean["accuracy"],
        "n_params": n_params,
        "latency_ms_per_sample": latency,
    }
    return {"architecture": name, "per_fold": folds, "mean": mean, "std": std}, test


def board_of(models: dict) -> tuple[pd.DataFrame, dict]:
    cvs = {n: m[0] for n, m in models.items()}
    return sel.build_leaderboard(cvs, {n: m[1] for n, m in models.items()}, "f1_macro"), cvs


def test_smallest_within_rope_prefers_a_practically_equivalent_smaller_model():
    models = {
        "big": cv("big", [0.970, 0.975, 0.968, 0.972, 0.974], 1_000_000, 2.0),
        "small": cv("small", [0.969, 0.974, 0.968, 0.971, 0.973], 10_000, 0.1),  # 0.0008 behind, steadily
        "weak": cv("weak", [0.930, 0.935, 0.925, 0.931, 0.933], 500, 0.05),  # clearly worse
    }
    board, cvs = board_of(models)
    best = sel.verdict(board, cvs, None, SelectionParams(rule="best"), 0.25)
    assert best["winner"] == "big"
    rope = sel.verdict(board, cvs, None, SelectionParams(rule="smallest_within_rope", rope=0.005), 0.25)
    assert rope["winner"] == "small"
    assert rope["rule_detail"]["best"] == "big" and rope["rule_detail"]["equivalent_to_best"]["p_right"] <= 0.05
    assert "smallest model practically equivalent" in sel.selection_sentence(rope)
    # a rope of zero makes nothing equivalent: the best stays
    strict = sel.verdict(board, cvs, None, SelectionParams(rule="smallest_within_rope", rope=0.0), 0.25)
    assert strict["winner"] == "big"


def test_the_verdict_compares_the_champion_with_the_best_baseline():
    models = {"net": cv("net", [0.95, 0.96, 0.94, 0.95, 0.96], 50_000, 0.5)}
    svc, _ = cv("svc", [0.99, 0.99, 0.98, 0.99, 0.99], 0, 0.0)
    baselines = {"svc": {**svc, "name": "svc", "test": {"f1_macro": 0.99, "accuracy": 0.99}}}
    board = sel.build_leaderboard({"net": models["net"][0]}, {"net": models["net"][1]}, "f1_macro", None, baselines)
    assert list(board["architecture"]) == ["svc", "net"] and list(board["kind"]) == ["baseline", "deep"]
    assert list(board["pareto"]) == [False, True]  # baselines have no size or latency to compare
    out = sel.verdict(board, {"net": models["net"][0]}, baselines, SelectionParams(), 0.25)
    assert out["winner"] == "net"  # the champion is a deep model ...
    assert out["baseline"]["name"] == "svc" and not out["baseline"]["beats"]  # ... and the truth is stated
    assert out["baseline"]["mean_difference"] < 0
    lead = out["baseline"]["mean_difference"]
    assert f"on CV, it trails svc by {-lead:.4f}, significantly (p = " in sel.selection_sentence(out)
    net_test = board.set_index("architecture").loc["net", "test_selection"]
    assert out["baseline"]["test_value"] == pytest.approx(net_test) and out["baseline"]["baseline_test_value"] == 0.99
    assert f"on the test set, F1 (macro) {net_test:.4f} vs 0.9900 ({net_test - 0.99:+.4f})." in sel.selection_sentence(
        out
    )


@pytest.mark.parametrize(
    ("lead", "significant", "said"),
    [
        (0.0094, False, "on CV, the lead of +0.0094 over logreg is not significant (p = 0.5700"),
        (0.0451, True, "on CV, the lead of +0.0451 over logreg is significant (p = 0.5700"),
        (-0.0200, False, "on CV, it trails logreg by 0.0200, not significantly (p = 0.5700"),
    ],
)
def test_the_baseline_verdict_never_puts_a_lead_beside_does_not_beat(lead, significant, said):
    base = {"name": "logreg", "mean_difference": lead, "p_value": 0.57, "significant": significant, "beats": False}
    text = baseline_sentence({**base, "test_value": 0.93, "baseline_test_value": 0.92}, "F1 (macro)")
    assert said in text and "beat" not in text
    assert text.endswith("; on the test set, F1 (macro) 0.9300 vs 0.9200 (+0.0100).")
