"""Fixture reports in the select stage's contract (reports/leaderboard.csv, selection.json, metrics.json), for the
command-line views' tests: 8 architectures and 4 baselines, with the columns and keys stages/select.py writes, in
its order (pandas CSV: empty cells for what baselines lack, counts as 1234.0 beside them)."""

from __future__ import annotations

import json
import math
from pathlib import Path

import pandas as pd

from dlpipe.metric_names import SCALAR_METRICS

DEEP = ("transformer", "cnn", "resnet", "mlp", "gru", "lstm", "wide_deep", "perceptron")
BASELINES = ("svc", "knn", "logreg", "random_forest")
PARAMS = dict(zip(DEEP, (68_234, 206_922, 11_175_370, 43_018, 44_810, 58_890, 10_058, 650), strict=True))


def run_id(arch: str, stage: str) -> str:
    return f"{stage[:2]}{arch}".ljust(32, "0")[:32]


def model_row(i: int, name: str, metric: str) -> dict:
    """Row `i` of the board: CV mean 0.99 - 0.01 i; test values distinct per metric (macro vs weighted)."""
    deep = name in DEEP
    base = 0.99 - 0.01 * i
    row: dict = {"architecture": name, "kind": "deep" if deep else "baseline", "selection_metric": metric}
    row |= {"cv_mean": base, "cv_std": 0.001 * (i + 1), "folds": 5}
    for j, m in enumerate(SCALAR_METRICS):
        row[f"cv_{m}_mean"] = base - 0.0001 * j
        row[f"cv_{m}_std"] = 0.002 + 0.0001 * j
    for j, m in enumerate(SCALAR_METRICS):
        row[f"test_{m}"] = round(base - 0.005 - 0.0011 * j, 6)
    if metric.endswith("_positive"):
        for j, m in enumerate(("precision", "recall", "f1")):
            row[f"test_{m}_positive"] = round(base - 0.003 - 0.0007 * j, 6)
    row["test_selection"] = round(base - 0.0042, 6)
    row["average_precision"] = base - 0.003 if deep else math.nan
    row["ece"] = 0.01 * (i + 1) if deep else math.nan
    row["n_params"] = PARAMS[name] if deep else math.nan
    row["train_seconds"] = 12.5 * (i + 1)
    row["latency_ms_per_sample"] = 0.0123 * (i + 1) if deep else math.nan
    for stage in ("tune", "cv", "train"):
        row[f"{stage}_run_id"] = run_id(name, stage) if deep else ""
    row["pareto"] = i in (0, 3, 7)
    return row


def leaderboard_frame(metric: str = "f1_macro") -> pd.DataFrame:
    """12 rows ranked on cv_mean, every contract column."""
    frame = pd.DataFrame([model_row(i, name, metric) for i, name in enumerate(DEEP + BASELINES)])
    frame.insert(0, "rank", range(1, len(frame) + 1))
    return frame


def selection(metric: str = "f1_macro", significant: bool = False, registry: bool = True) -> dict:
    registered = {"name": "dlpipe-digits", "version": 4, "alias": "challenger", "champion": 3, "promotion": None}
    baseline = {
        "name": "svc",
        "mean_difference": 0.08,
        "p_value": 0.001,
        "significant": True,
        "beats": True,
        "bayes": {"p_left": 0.0, "p_rope": 0.01, "p_right": 0.99},
    }
    return {
        "winner": "transformer",
        "metric": metric,
        "rule": "best",
        "rope": 0.005,
        "alpha": 0.05,
        "runner_up": "cnn",
        "significant": significant,
        "p_value": 0.0123 if significant else 0.4321,
        "t": 2.5 if significant else 0.9,
        "bayes": {"p_left": 0.1, "p_rope": 0.2, "p_right": 0.7, "rope": 0.005},
        "baseline": baseline,
        "k": 5,
        "mean_difference": 0.01,
        "cv_mean": 0.99,
        "cv_std": 0.001,
        "runs": {a: {"tune": run_id(a, "tune"), "cv": run_id(a, "cv"), "train": run_id(a, "train")} for a in DEEP},
        "mlflow_run_id": "se" + "1" * 30,
        "registry": registered if registry else None,
    }


def metrics(champion: str = "transformer", version: int = 4, shift: float = 0.0) -> dict:
    """reports/metrics.json: the champion, its CV mean, std and test value (its leaderboard row's), the version and
    the select run."""
    i = DEEP.index(champion)
    return {
        "champion": champion,
        "cv_mean": round(0.99 - 0.01 * i + shift, 4),
        "cv_std": round(0.001 * (i + 1), 4),
        "test": round(0.99 - 0.01 * i - 0.0042 + shift, 4),
        "version": version,
        "select_run": "se" + "1" * 30,
    }


def metrics_per_architecture(champion: str = "transformer", version: int = 4, shift: float = 0.0) -> dict:
    """reports/metrics.json as earlier versions wrote it: every architecture's CV value beside the champion."""
    values = {name: round(0.99 - 0.01 * i + shift, 4) for i, name in enumerate(DEEP)}
    return {"champion": champion, **values, "version": version, "select_run": "se" + "1" * 30}


def write_reports(root: Path, metric: str = "f1_macro", with_selection: bool = True) -> Path:
    """reports/leaderboard.csv (and selection.json, metrics.json) under `root`; returns the reports folder."""
    reports = root / "reports"
    reports.mkdir(parents=True, exist_ok=True)
    (reports / "leaderboard.csv").write_text(leaderboard_frame(metric).to_csv(index=False))
    if with_selection:
        (reports / "selection.json").write_text(json.dumps(selection(metric), indent=2))
    (reports / "metrics.json").write_text(json.dumps(metrics(), indent=2))
    return reports
