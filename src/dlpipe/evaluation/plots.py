"""Matplotlib figures for runs and reports: confusion matrix, learning curves."""

from __future__ import annotations

import matplotlib

matplotlib.use("Agg")  # no display: figures go to files and MLflow

import matplotlib.pyplot as plt
import numpy as np
from matplotlib.figure import Figure


def confusion_matrix_figure(matrix: list[list[int]], class_names: list[str], title: str = "Confusion matrix") -> Figure:
    cm = np.asarray(matrix)
    size = max(4.0, 0.5 * len(class_names) + 2)
    fig, ax = plt.subplots(figsize=(size, size))
    ax.imshow(cm, cmap="Blues")
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


def close(fig: Figure) -> None:
    plt.close(fig)
