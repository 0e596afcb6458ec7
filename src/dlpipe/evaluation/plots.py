"""Matplotlib figures for runs and reports: confusion matrix, learning curves, and the select stage's plots (the
files `dvc plots` draws, as pictures for MLflow)."""

from __future__ import annotations

import matplotlib

matplotlib.use("Agg")  # no display: figures go to files and MLflow

import matplotlib.pyplot as plt
import numpy as np
import pandas as pd
from matplotlib.figure import Figure


def confusion_matrix_figure(matrix: list[list[int]], class_names: list[str], title: str = "Confusion matrix") -> Figure:
    cm = np.asarray(matrix)
    size = max(4.0, 0.5 * len(class_names) + 2)
    fig, ax = plt.subplots(figsize=(size, size))
    ax.imshow(cm, cmap="Blues")
    ax.grid(False)  # a style's grid would cross every count
    ax.set(
        xticks=range(len(class_names)), yticks=range(len(class_names)), xlabel="predicted", ylabel="true", title=title
    )
    ax.set_xticklabels(class_names, rotation=45, ha="right")
    ax.set_yticklabels(class_names)
    threshold = cm.max() / 2 if cm.size else 0
    for (i, j), v in np.ndenumerate(cm):
        ax.text(j, i, str(v), ha="center", va="center", color="white" if v > threshold else "black", fontsize=8)
    fig.tight_layout()
    return fig


def learning_curves_figure(history: list[dict[str, float]], title: str = "Learning curves") -> Figure:
    fig, (loss_ax, acc_ax) = plt.subplots(1, 2, figsize=(10, 4))
    epochs = [row["epoch"] for row in history]
    for key, ax in (("loss", loss_ax), ("accuracy", acc_ax)):
        for split in ("train", "val"):
            values = [row.get(f"{split}_{key}") for row in history]
            if any(v is not None for v in values):
                ax.plot(epochs, values, marker=".", label=split)
        ax.set(xlabel="epoch", ylabel=key, title=f"{title}: {key}")
        ax.legend()
    fig.tight_layout()
    return fig


def fold_curves_figure(histories: dict[int, list[dict[str, float]]], title: str = "Learning curves") -> Figure:
    """Every fold's train and validation loss and accuracy in one picture (train dashed, validation solid)."""
    fig, (loss_ax, acc_ax) = plt.subplots(1, 2, figsize=(10, 4))
    colours = plt.rcParams["axes.prop_cycle"].by_key()["color"]
    for i, (fold, history) in enumerate(sorted(histories.items())):
        epochs = [row["epoch"] for row in history]
        colour = colours[i % len(colours)]
        for key, ax in (("loss", loss_ax), ("accuracy", acc_ax)):
            for split, style in (("train", "--"), ("val", "-")):
                values = [row.get(f"{split}_{key}") for row in history]
                if any(v is not None for v in values):
                    ax.plot(epochs, values, style, color=colour, label=f"fold {fold} {split}")
    for key, ax in (("loss", loss_ax), ("accuracy", acc_ax)):
        ax.set(xlabel="epoch", ylabel=key, title=f"{title}: {key}")
    acc_ax.legend(fontsize=7, ncol=2)
    fig.tight_layout()
    return fig


def comparison_figure(comparison: pd.DataFrame, champion: str) -> Figure:
    """reports/plots/comparison.csv: every model's CV mean ± one fold std (bar and whisker) and its test score (dot),
    best first, the champion and baselines named, the axis zoomed to the scores."""
    frame = comparison.sort_values("cv_mean").reset_index(drop=True)
    labels = [
        f"{a} (champion)" if a == champion and k == "deep" else (f"{a} (baseline)" if k == "baseline" else a)
        for a, k in zip(frame["architecture"], frame["kind"], strict=True)
    ]
    fig, ax = plt.subplots(figsize=(8, 0.4 * len(frame) + 1.6))
    colours = ["tab:orange" if k == "baseline" else "tab:blue" for k in frame["kind"]]
    y = np.arange(len(frame))
    ax.barh(y, frame["cv_mean"], xerr=frame["cv_std"], color=colours, alpha=0.8, capsize=3, label="CV mean ± std")
    ax.plot(frame["test"], y, "k.", markersize=9, label="held-out test")
    ax.set_yticks(y, labels)
    low = float(np.nanmin(np.r_[frame["cv_mean"] - frame["cv_std"], frame["test"]]))
    ax.set_xlim(max(0.0, low - 0.02), 1.0)
    metric = str(frame["metric"].iloc[0]) if "metric" in frame and len(frame) else "score"
    ax.set(xlabel=metric, title=f"Models ranked by cross-validated {metric}; champion: {champion}")
    ax.legend(loc="upper center", bbox_to_anchor=(0.5, -0.1), ncol=2, fontsize=8)  # below: clear of the bars
    fig.tight_layout()
    return fig


def curves_figure(frame: pd.DataFrame, x: str, y: str, title: str, log_x: bool = False) -> Figure:
    """Per-class curves (reports/plots/pr.csv or roc.csv): the whole curve, and beside it the corner where good
    classifiers' curves crowd (recall and precision near 1; a log false-positive rate for ROC)."""
    fig, (whole, zoom) = plt.subplots(1, 2, figsize=(11, 4.5))
    for name, part in frame.groupby("class", sort=False):
        for ax in (whole, zoom):
            ax.plot(part[x], part[y], lw=1.2, label=str(name))
    whole.set(xlabel=x, ylabel=y, title=title, xlim=(0, 1), ylim=(0, 1.01))
    if log_x:
        positive = frame.loc[frame[x] > 0, x]
        zoom.set_xscale("log")
        zoom.set_xlim(max(float(positive.min()) if len(positive) else 1e-3, 1e-4) / 2, 1.0)
        floor = float(frame.loc[frame[x] >= zoom.get_xlim()[0], y].min()) if len(frame) else 0.0
    else:
        zoom.set_xlim(0.8, 1.0)
        # the lowest of the classes' best precision at recall >= 0.99: below it lies only the tail every PR curve
        # ends in (recall 1 at the lowest thresholds, precision falling to the class's share)
        best = [part.loc[part[x] >= 0.99, y].max() for _, part in frame.groupby("class")]
        floor = float(np.nanmin(best)) if best else 0.0
    zoom.set_ylim(max(0.0, floor - 0.01), 1.005)
    zoom.set(xlabel=x + (" (log)" if log_x else ""), ylabel=y, title="zoomed")
    zoom.legend(fontsize=7, ncol=2, title="class")
    fig.tight_layout()
    return fig


def reliability_figure(calibration: pd.DataFrame) -> Figure:
    """reports/plots/calibration.csv: accuracy against mean confidence per bin, one line per architecture."""
    fig, ax = plt.subplots(figsize=(6, 5))
    ax.plot([0, 1], [0, 1], ":", color="grey", label="perfectly calibrated")
    for name, part in calibration.groupby("architecture", sort=False):
        ax.plot(part["confidence"], part["accuracy"], marker=".", label=str(name))
    ax.set(xlabel="mean confidence", ylabel="accuracy", title="Calibration: accuracy per confidence bin", xlim=(0, 1))
    ax.legend(fontsize=7)
    fig.tight_layout()
    return fig


def close(fig: Figure) -> None:
    plt.close(fig)
