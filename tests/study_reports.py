"""Fixture reports in the select stage's contract (reports/leaderboard.csv, selection.json, metrics.json), for the
command-line views' tests: 8 architectures and 4 baselines, written as the stage writes them (pandas CSV)."""

from __future__ import annotations

import json
import math
from pathlib import Path

import pandas as pd

SCALARS = ("accuracy", "precision_macro", "recall_macro", "f1_macro", "precision_weighted", "recall_weighted",
           "f1_weighted")  # fmt: skip
DEEP = ("transformer", "cnn", "resnet", "mlp", "gru", "lstm", "wide_deep", "perceptron")
BASELINES = ("svc", "knn", "logreg", "random_forest")
PARAMS = {"transformer": 68_234, "cnn": 206_922, "resnet": 11_175_370, "mlp": 43_018, "gru": 44_810,
          "lstm": 58_890, "wide_deep": 10_058, "perceptron": 650}  # fmt: skip


def run_id(arch: str, stage: str) -> str:
    return f"{stage[:2]}{arch}".ljust(32, "0")[:32]


def leaderboard_frame(metric: str = "f1_macro") -> pd.DataFrame:
    """12 rows ranked on cv_mean, every contract column; test values distinct per (model, metric) so tests can tell
    macro from weighted."""
    rows = []
    for i, name in enumerate(DEEP + BASELINES):
        deep = name in DEEP
        base = 0.99 - 0.01 * i
        row: dict = {"architecture": name, "kind": "deep" if deep else "baseline", "selection_metric": metric,
                     "cv_mean": base, "cv_std": 0.001 * (i + 1), "folds": 5, "pareto": i in (0, 3, 7)}  # fmt: skip
        for j, m in enumerate(SCALARS):
            row[f"cv_{m}_mean"] = base - 0.0001 * j
            row[f"cv_{m}_std"] = 0.002 + 0.0001 * j
        for j, m in enumerate(SCALARS):
            row[f"test_{m}"] = round(base - 0.005 - 0.0011 * j, 6)
        row["test_selection"] = round(base - 0.0042, 6)
        row["average_precision"] = base - 0.003
        row["ece"] = 0.01 * (i + 1)
        row["n_params"] = PARAMS[name] if deep else math.nan
        row["train_seconds"] = 12.5 * (i + 1) if deep else math.nan
        row["latency_ms_per_sample"] = 0.0123 * (i + 1) if deep else math.nan
        row["tune_run_id"] = run_id(name, "tune") if deep else None
        row["cv_run_id"] = run_id(name, "cv") if deep else None
        row["train_run_id"] = run_id(name, "train") if deep else None
        rows.append(row)
    frame = pd.DataFrame(rows)
    frame.insert(0, "rank", range(1, len(frame) + 1))
    return frame


def selection(metric: str = "f1_macro", significant: bool = False, registry: bool = True) -> dict:
    return {
        "winner": "transformer",
        "metric": metric,
        "alpha": 0.05,
        "runner_up": "cnn",
        "significant": significant,
        "p_value": 0.0123 if significant else 0.4321,
        "t": 2.5 if significant else 0.9,
        "k": 5,
        "mean_difference": 0.01,
        "mlflow_run_id": "se" + "1" * 30,
        "registry": {"name": "dlpipe-digits", "version": 4, "alias": "challenger", "champion": 3,
                     "promotion": None} if registry else None,  # fmt: skip
        "runs": {a: {"tune": run_id(a, "tune"), "cv": run_id(a, "cv"), "train": run_id(a, "train")} for a in DEEP},
    }


def metrics(champion: str = "transformer", version: int = 4, shift: float = 0.0) -> dict:
    frame = leaderboard_frame()
    values = {a: round(v + shift, 6) for a, v in zip(frame["architecture"], frame["cv_mean"], strict=True)}
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
