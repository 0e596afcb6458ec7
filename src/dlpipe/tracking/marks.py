"""What leads a researcher in the MLflow UI to the study's answer: the select run and the champion's runs are named,
tagged (`dlpipe.role`) and described (`mlflow.note.content`, the run page's description), and the select run
carries its plots as pictures beside the CSV files `dvc plots` draws.

A later study that picks another champion moves the mark: the former champion's runs get their plain names back and
`dlpipe.role` = `former champion`.
"""

from __future__ import annotations

import logging
from pathlib import Path
from typing import Any

import pandas as pd
from mlflow.tracking import MlflowClient

log = logging.getLogger(__name__)

ROLE_TAG = "dlpipe.role"
NOTE_TAG = "mlflow.note.content"
NAME_TAG = "mlflow.runName"
PLAIN_NAME_TAG = "dlpipe.plain_name"  # a marked run's name before the mark
CHAMPION, FORMER, SELECT = "champion", "former champion", "select"
MARKED_STAGES = ("cv", "train")  # the runs whose numbers make the champion's leaderboard row
IMAGES_DIR = "plots"


def champion_name(plain: str) -> str:
    return f"{plain} (champion)"


def mark_study(client: MlflowClient, select_run_id: str, summary: dict[str, Any], leaderboard_md: str) -> None:
    """Name, tag and describe the select run and the champion's cv and train runs; unmark former champions."""
    winner = summary["winner"]
    select = client.get_run(select_run_id)
    client.set_tag(select_run_id, NAME_TAG, f"select (champion: {winner})")
    client.set_tag(select_run_id, ROLE_TAG, SELECT)
    client.set_tag(select_run_id, NOTE_TAG, _select_note(summary, leaderboard_md))
    marked = [rid for stage, rid in (summary["runs"].get(winner) or {}).items() if rid and stage in MARKED_STAGES]
    query = f"tags.`{ROLE_TAG}` = '{CHAMPION}'"
    for run in client.search_runs([select.info.experiment_id], query, max_results=1000):
        if run.info.run_id not in marked:
            client.set_tag(run.info.run_id, ROLE_TAG, FORMER)
            plain = run.data.tags.get(PLAIN_NAME_TAG)
            if plain:
                client.set_tag(run.info.run_id, NAME_TAG, plain)
    note = (
        f"**Champion** of the study summarised by the select run `{select_run_id}`: {summary.get('sentence', winner)}"
    )
    for rid in marked:
        tags = client.get_run(rid).data.tags
        plain = tags.get(PLAIN_NAME_TAG) or tags.get(NAME_TAG) or rid
        for key, value in ((PLAIN_NAME_TAG, plain), (NAME_TAG, champion_name(plain)), (ROLE_TAG, CHAMPION)):
            client.set_tag(rid, key, value)
        client.set_tag(rid, NOTE_TAG, note)


def _select_note(summary: dict[str, Any], leaderboard_md: str) -> str:
    return (
        f"## Champion: {summary['winner']}\n\n{summary.get('sentence', '')}\n\n{leaderboard_md.strip()}\n\n"
        f"Plots: the artifacts `{IMAGES_DIR}/*.png` (pictures) and `{IMAGES_DIR}/*.csv` (what `dvc plots` draws)."
    )


def record(
    select_run_id: str, summary: dict[str, Any], leaderboard_md: str, plots_dir: Path, classes: list[str]
) -> None:
    """The select stage's marks: see `mark_study` and `log_plot_images`."""
    client = MlflowClient()
    mark_study(client, select_run_id, summary, leaderboard_md)
    log_plot_images(client, select_run_id, plots_dir, summary["winner"], classes)


def log_plot_images(
    client: MlflowClient, run_id: str, plots_dir: Path, winner: str, classes: list[str] | None = None
) -> list[str]:
    """Pictures of the select stage's plot files (those present), logged as `plots/<name>.png`; their names.
    `classes`: the dataset's class names in order (else the confusion matrix sorts those it finds)."""
    from dlpipe.evaluation import plots

    def read(name: str) -> pd.DataFrame | None:
        path = plots_dir / f"{name}.csv"
        return pd.read_csv(path, dtype={"class": str, "actual": str, "predicted": str}) if path.is_file() else None

    figures = {}
    if (frame := read("comparison")) is not None and len(frame):
        figures["comparison"] = lambda f=frame: plots.comparison_figure(f, winner)
    if (frame := read("confusion")) is not None and len(frame):
        found = set(frame["actual"]) | set(frame["predicted"])
        names = [str(c) for c in classes or ()] if found <= {str(c) for c in classes or ()} else sorted(found)
        matrix = pd.crosstab(frame["actual"], frame["predicted"]).reindex(index=names, columns=names, fill_value=0)
        title = f"{winner}: confusion matrix on the held-out test set ({len(frame)} samples)"
        figures["confusion"] = lambda m=matrix, n=names, t=title: plots.confusion_matrix_figure(m.values.tolist(), n, t)
    if (frame := read("pr")) is not None and len(frame):
        title = f"{winner}: precision-recall per class (out-of-fold)"
        figures["pr"] = lambda f=frame, t=title: plots.curves_figure(f, "recall", "precision", t)
    if (frame := read("roc")) is not None and len(frame):
        title = f"{winner}: ROC per class, one-vs-rest (out-of-fold)"
        figures["roc"] = lambda f=frame, t=title: plots.curves_figure(f, "fpr", "tpr", t, log_x=True)
    if (frame := read("calibration")) is not None and len(frame):
        figures["calibration"] = lambda f=frame: plots.reliability_figure(f)
    drawn = []
    for name, make in figures.items():
        try:
            fig = make()
        except (ValueError, KeyError, TypeError) as exc:  # an odd plot file: the CSV is logged, the others drawn
            log.warning("select: no picture of %s.csv (%s: %s)", name, type(exc).__name__, exc)
            continue
        try:
            client.log_figure(run_id, fig, f"{IMAGES_DIR}/{name}.png")
        finally:
            plots.close(fig)
        drawn.append(name)
    return drawn
