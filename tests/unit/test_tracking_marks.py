"""tracking.marks: the select run and the champion's runs are named, tagged and described in MLflow, the mark moves
to a new champion, and the select stage's plot files become pictures (checked through MlflowClient)."""

from __future__ import annotations

import shutil
from pathlib import Path

import pytest
from helpers.mlflow_store import install_mlflow_store
from helpers.project import REPO_ROOT
from mlflow.tracking import MlflowClient

from dlpipe.tracking import marks

ARCHS = ("cnn", "mlp")


def study_runs(client: MlflowClient, exp: str) -> dict:
    """A select run and each architecture's cv and train runs, named as the stages name them."""
    runs = {a: {s: client.create_run(exp, run_name=f"{s}-{a}").info.run_id for s in ("cv", "train")} for a in ARCHS}
    for a in ARCHS:
        runs[a]["tune"] = None
    return runs


def summary(winner: str, runs: dict) -> dict:
    return {"winner": winner, "runs": runs, "sentence": f"Champion: **{winner}** on the cross-validated F1 (macro)."}


@pytest.fixture
def client(tmp_path: Path, mlflow_template_db: Path) -> MlflowClient:
    return MlflowClient(tracking_uri=install_mlflow_store(tmp_path, mlflow_template_db))


def name_role(client: MlflowClient, run_id: str) -> tuple[str, str | None]:
    run = client.get_run(run_id)
    return run.info.run_name, run.data.tags.get("dlpipe.role")


def test_the_champion_and_the_select_run_are_marked_and_the_mark_moves(client: MlflowClient) -> None:
    exp = client.create_experiment("unit/marks")
    runs = study_runs(client, exp)
    first = client.create_run(exp, run_name="select").info.run_id
    marks.mark_study(client, first, summary("cnn", runs), "| model | CV |\n|---|---|\n| cnn | 0.99 |\n")
    assert name_role(client, first) == ("select (champion: cnn)", "select")
    note = client.get_run(first).data.tags["mlflow.note.content"]
    assert note.startswith("## Champion: cnn\n") and "| cnn | 0.99 |" in note
    for stage in ("cv", "train"):
        assert name_role(client, runs["cnn"][stage]) == (f"{stage}-cnn (champion)", "champion")
        assert first in client.get_run(runs["cnn"][stage]).data.tags["mlflow.note.content"]
        assert name_role(client, runs["mlp"][stage]) == (f"{stage}-mlp", None)

    marks.mark_study(client, first, summary("cnn", runs), "")  # select again: names are not marked twice
    assert name_role(client, runs["cnn"]["train"]) == ("train-cnn (champion)", "champion")

    second = client.create_run(exp, run_name="select").info.run_id  # a later study picks mlp
    marks.mark_study(client, second, summary("mlp", runs), "")
    assert name_role(client, runs["mlp"]["train"]) == ("train-mlp (champion)", "champion")
    assert name_role(client, runs["cnn"]["train"]) == ("train-cnn", "former champion")
    assert name_role(client, runs["cnn"]["cv"]) == ("cv-cnn", "former champion")


def test_plot_files_are_logged_as_pictures(client: MlflowClient, tmp_path: Path) -> None:
    plots = tmp_path / "plots"
    shutil.copytree(REPO_ROOT / "reports" / "plots", plots)  # the default study's plot files
    run_id = client.create_run(client.create_experiment("unit/plots")).info.run_id
    names = marks.log_plot_images(client, run_id, plots, "cnn", [str(i) for i in range(10)])
    assert names == ["comparison", "confusion", "pr", "roc", "calibration"]
    logged = {a.path: a.file_size for a in client.list_artifacts(run_id, "plots")}
    assert set(logged) == {f"plots/{n}.png" for n in names} and all(size > 10_000 for size in logged.values())
    png = Path(client.download_artifacts(run_id, "plots/confusion.png", str(tmp_path)))
    assert png.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"

    (plots / "pr.csv").unlink()  # a study without out-of-fold predictions: the others still drawn
    (plots / "roc.csv").write_text("class,x,y\n0,0.1,0.2\n")  # an odd file: no picture of it, no failure
    assert marks.log_plot_images(client, run_id, plots, "cnn") == ["comparison", "confusion", "calibration"]


def test_the_confusion_picture_draws_no_grid_through_its_counts_even_under_a_grid_style() -> None:
    """A matplotlibrc or style with `axes.grid: True` (seaborn's, ggplot's) would draw white lines through every
    cell; the confusion matrix turns the grid off and names its model in the title."""
    import matplotlib

    from dlpipe.evaluation import plots

    with matplotlib.rc_context({"axes.grid": True, "grid.color": "white"}):
        fig = plots.confusion_matrix_figure([[5, 1], [0, 7]], ["a", "b"], "cnn: confusion matrix")
    ax = fig.axes[0]
    assert not any(line.get_visible() for line in ax.get_xgridlines() + ax.get_ygridlines())
    assert ax.get_title() == "cnn: confusion matrix"
    plots.close(fig)
