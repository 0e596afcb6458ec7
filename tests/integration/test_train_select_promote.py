"""train@<arch>, select and promotion on digits with small budgets, read back through MlflowClient and the files:
the final models and test reports, the leaderboard and plots, a registered version with its tags and alias
`challenger`, `champion` moving only when the challenger is better (a worse retrained model is refused with both
scores), --force, --version, ties, and --rollback restoring earlier champions repeatedly."""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
import torch
from helpers.mlflow_store import install_mlflow_store
from helpers.project import copy_project, prepare_project, write_params
from mlflow.tracking import MlflowClient

from dlpipe import cli
from dlpipe.config import Params, load_params
from dlpipe.data.prepared import PreparedData
from dlpipe.evaluation import selection as sel
from dlpipe.io import read_json
from dlpipe.metric_names import SCALAR_METRICS
from dlpipe.paths import ProjectPaths
from dlpipe.stages import cv, select, train

pytestmark = pytest.mark.slow

ARCHS = ("perceptron", "mlp")
GOOD = {"train": {"max_epochs": 3, "lr": 0.01}}  # learns digits well enough in 3 epochs
BAD = {"train": {"max_epochs": 1, "lr": 1e-6}}  # barely moves from its random initialisation
NAME = "dlpipe-digits"
EXPERIMENT = "dlpipe/digits"


@dataclass
class Study:
    root: Path
    params: Params
    paths: ProjectPaths
    client: MlflowClient
    trained: dict[str, dict]
    selected: dict


@pytest.fixture(scope="module")
def study(tmp_path_factory: pytest.TempPathFactory, mlflow_template_db: Path):
    """cv, train for perceptron and mlp, then select (auto-promote), in-process, once per module."""
    root = copy_project(tmp_path_factory.mktemp("train-study") / "project")
    with pytest.MonkeyPatch.context() as mp:
        mp.setenv("DLPIPE_ROOT", str(root))
        mp.delenv("MLFLOW_TRACKING_URI", raising=False)
        mp.chdir(root)
        uri = install_mlflow_store(root, mlflow_template_db)
        params, paths = prepare_project(root, GOOD)
        for arch in ARCHS:
            cv.run(params, paths, arch)
        trained = {arch: train.run(params, paths, arch) for arch in ARCHS}
        selected = select.run(params, paths)
        yield Study(root, params, paths, MlflowClient(tracking_uri=uri), trained, selected)


def version_tags(study: Study, version: int) -> dict[str, str]:
    return study.client.get_model_version(NAME, str(version)).tags


def alias(study: Study, name: str) -> int | None:
    aliases = study.client.get_registered_model(NAME).aliases
    return int(aliases[name]) if name in aliases else None


def promote_cli(capsys: pytest.CaptureFixture, *args: str) -> tuple[int, str, str]:
    code = cli.main(["promote", *args])
    out, err = capsys.readouterr()
    return code, out, err


# --- train -------------------------------------------------------------------------------------------------------


def test_train_saves_the_model_directory_and_the_test_report(study: Study) -> None:
    data = PreparedData.load(study.paths.raw, study.paths.prepared)
    for arch in ARCHS:
        folder = study.paths.models / arch
        assert sorted(p.name for p in folder.iterdir()) == ["model.pt", "model.pt2", "params.json"]
        meta = read_json(folder / "params.json")
        assert meta["architecture"] == arch and meta["input_shape"] == [1, 8, 8]
        assert meta["class_names"] == [str(i) for i in range(10)]
        assert meta["train"]["lr"] == 0.01 and meta["train"]["max_epochs"] == 3
        # the normaliser is the training slice's: the same one the validation slice and the test set went through
        split = data.holdout(study.params.data.val_size, study.params.seed)
        assert np.allclose(meta["normalizer"]["mean"], split.normalizer.mean.numpy())
        assert np.allclose(meta["normalizer"]["std"], split.normalizer.std.numpy())
        state = torch.load(folder / "model.pt", weights_only=True)
        assert sum(v.numel() for v in state.values()) == meta["n_params"]

        report = read_json(study.paths.test_report(arch))
        assert report == json.loads(json.dumps(study.trained[arch]))
        assert report["n_test"] == len(data.splits.test_idx) == 60
        assert 0.0 <= report["accuracy"] <= 1.0 and report["n_params"] == meta["n_params"]
        assert np.sum(report["confusion_matrix"]) == 60
        assert report["latency_ms_per_sample"] > 0 and report["train_seconds"] > 0
        assert set(report["per_class"]) == set(meta["class_names"])
        preds = pd.read_csv(study.paths.test_predictions(arch), dtype=str)
        assert list(preds.columns) == ["actual", "predicted"] and len(preds) == 60
        assert (preds["actual"] == preds["predicted"]).mean() == pytest.approx(report["accuracy"], abs=1e-6)
    assert not [p for p in study.paths.models.iterdir() if p.name.startswith(".")]  # no temp dirs left
    assert study.trained["mlp"]["accuracy"] > 0.5  # GOOD really learns (the refusal test relies on it)


def test_train_runs_in_mlflow_with_epochs_test_metrics_and_a_logged_model(study: Study) -> None:
    exp = study.client.get_experiment_by_name(EXPERIMENT)
    runs = study.client.search_runs([exp.experiment_id], "tags.stage = 'train'", max_results=100)
    assert sorted(r.data.tags["architecture"] for r in runs) == sorted(ARCHS)
    for run in runs:
        arch = run.data.tags["architecture"]
        report = study.trained[arch]
        assert run.info.run_id == report["mlflow_run_id"] and run.info.status == "FINISHED"
        for key in ("git_commit", "params_hash", "dataset", "dataset_hash"):
            assert run.data.tags[key]
        assert run.data.params["train.lr"] == "0.01" and run.data.params["arch"] == arch
        for m in SCALAR_METRICS:
            assert run.data.metrics[f"test_{m}"] == pytest.approx(report[m])
        assert len(study.client.get_metric_history(run.info.run_id, "train_loss")) == report["epochs"]
        artifacts = {a.path for a in study.client.list_artifacts(run.info.run_id, "plots")}
        assert artifacts == {"plots/confusion_matrix.png", "plots/learning_curves.png"}
        model = study.client.get_logged_model(report["model_id"])
        assert model.source_run_id == run.info.run_id and model.name == arch  # named after its architecture
        # its page shows the kept epoch's validation metrics and the test metrics, not epoch 0's
        linked = {m.key: m for m in model.metrics}
        best = report["best_epoch"]
        for key in ("val_loss", "val_accuracy"):
            at_best = [h for h in study.client.get_metric_history(run.info.run_id, key) if h.step == best]
            assert linked[key].value == pytest.approx(at_best[0].value) and linked[key].step == best
        for m in SCALAR_METRICS:
            assert linked[f"test_{m}"].value == pytest.approx(report[m])
        # and says which epoch it kept: on the logged model and on its run
        kept = {"kept_epoch": str(best + 1), "kept_step": str(best), "epochs_trained": str(report["epochs"])}
        assert {k: model.params[k] for k in kept} == kept and {k: model.tags[k] for k in kept} == kept
        assert {k: run.data.tags[k] for k in kept} == kept


# --- select --------------------------------------------------------------------------------------------------------


def test_select_writes_the_leaderboard_metrics_and_plots(study: Study) -> None:
    cv_reports = {a: read_json(study.paths.cv_report(a)) for a in ARCHS}
    expected = max(ARCHS, key=lambda a: cv_reports[a]["mean"]["f1_macro"])
    chosen = study.selected
    assert chosen["winner"] == expected and chosen["metric"] == "f1_macro"
    assert chosen["runner_up"] == next(a for a in ARCHS if a != expected)
    assert 0.0 <= chosen["p_value"] <= 1.0 and chosen["significant"] == (chosen["p_value"] < 0.05)
    board = pd.read_csv(study.paths.reports / "leaderboard.csv")
    assert board.iloc[0]["architecture"] == expected
    assert board.set_index("architecture").loc[expected, "cv_f1_macro_mean"] == pytest.approx(
        cv_reports[expected]["mean"]["f1_macro"]
    )
    md = (study.paths.reports / "leaderboard.md").read_text()
    assert "±" in md and f"p={chosen['p_value']:.4f}" in md
    metrics = read_json(study.paths.reports / "metrics.json")
    assert metrics["champion"] == expected and metrics["select_run"] == chosen["mlflow_run_id"]
    assert metrics["cv_mean"] == pytest.approx(cv_reports[expected]["mean"]["f1_macro"], abs=5e-5)
    assert metrics["cv_std"] == pytest.approx(board.iloc[0]["cv_std"], abs=5e-5)
    assert metrics["test"] == pytest.approx(board.iloc[0]["test_selection"], abs=5e-5)
    confusion = pd.read_csv(study.paths.reports / "plots" / "confusion.csv")
    assert list(confusion.columns) == ["actual", "predicted", "model"] and len(confusion) == 60
    assert set(confusion["model"]) == {expected}  # the charts' titles name the champion
    comparison = pd.read_csv(study.paths.reports / "plots" / "comparison.csv")
    assert set(comparison["architecture"]) == set(ARCHS)
    assert list(comparison.columns) == [
        "architecture",
        "kind",
        "metric",
        "cv_mean",
        "cv_std",
        "cv_low",
        "cv_high",
        "test",
    ]
    for name, columns in (
        ("pr", ["class", "recall", "precision", "model"]),
        ("roc", ["class", "fpr", "tpr", "model"]),
        ("calibration", ["architecture", "confidence", "accuracy", "count"]),
    ):
        frame = pd.read_csv(study.paths.reports / "plots" / f"{name}.csv", dtype={"class": str})
        assert list(frame.columns) == columns and len(frame) > 10
    # the select run links exactly the runs whose numbers are on the leaderboard
    tags = study.client.get_run(chosen["mlflow_run_id"]).data.tags
    for _, row in board.iterrows():
        assert tags[f"runs.{row['architecture']}.cv"] == row["cv_run_id"]
        assert tags[f"runs.{row['architecture']}.train"] == row["train_run_id"]
    assert read_json(study.paths.reports / "selection.json")["winner"] == expected
    # marked in MLflow: the select run and the champion's cv and train runs, named and described
    select_run = study.client.get_run(chosen["mlflow_run_id"])
    assert select_run.info.run_name == f"select (champion: {expected})"
    assert select_run.data.tags["dlpipe.role"] == "select"
    assert f"## Champion: {expected}" in select_run.data.tags["mlflow.note.content"]
    for stage in ("cv", "train"):
        run = study.client.get_run(chosen["runs"][expected][stage])
        assert run.info.run_name == f"{stage}-{expected} (champion)" and run.data.tags["dlpipe.role"] == "champion"
        assert chosen["mlflow_run_id"] in run.data.tags["mlflow.note.content"]
    loser = next(a for a in ARCHS if a != expected)
    assert "dlpipe.role" not in study.client.get_run(chosen["runs"][loser]["train"]).data.tags
    # its plots as pictures beside the CSV files
    logged = study.client.list_artifacts(chosen["mlflow_run_id"], "plots")
    pictures = {a.path for a in logged if a.path.endswith(".png")}
    assert pictures == {f"plots/{n}.png" for n in ("comparison", "confusion", "pr", "roc", "calibration")}


def test_select_registers_the_winner_with_tags_and_aliases(study: Study) -> None:
    winner = study.selected["winner"]
    report = study.trained[winner]
    versions = study.client.search_model_versions(f"name = '{NAME}'")
    assert [int(v.version) for v in versions] == [1]
    v1 = versions[0]
    assert v1.run_id == report["mlflow_run_id"]
    tags = v1.tags
    assert tags["architecture"] == winner and tags["selection_metric"] == "f1_macro"
    assert float(tags["test_f1_macro"]) == pytest.approx(report["f1_macro"], abs=1e-6)
    assert float(tags["cv_f1_macro_mean"]) == pytest.approx(study.selected["cv_mean"], abs=1e-6)
    assert tags["params_hash"] == report["params_hash"] and tags["git_commit"] == report["git_commit"]
    assert tags["dataset_hash"] == report["dataset_hash"] and tags["model_id"] == report["model_id"]
    assert alias(study, "challenger") == 1
    assert alias(study, "champion") == 1  # no champion before: auto-promoted
    assert tags["previous_champion"] == "none" and tags["promoted_by"] == "select (auto_promote)"
    assert study.selected["registry"]["promotion"]["action"] == "promoted"


def test_per_class_fold_metrics_are_in_the_cv_report_and_the_leaderboard_cli(study: Study, capsys, monkeypatch) -> None:
    monkeypatch.chdir(study.root)
    monkeypatch.setenv("DLPIPE_ROOT", str(study.root))
    filled = {}
    for arch in ARCHS:
        report = read_json(study.paths.cv_report(arch))
        filled[arch] = report
        for fold, per_class in filled[arch]["per_fold_per_class"].items():
            assert sorted(per_class, key=int) == [str(i) for i in range(10)]
            # every class occurs in every validation fold, so macro F1 is the mean of the per-class F1s
            mean_f1 = np.mean([v["f1"] for v in per_class.values()])
            assert mean_f1 == pytest.approx(report["per_fold"][fold]["f1_macro"], abs=1e-5)
    # recall of class "3" as the selection metric (the *_positive path) ranks on the per-class fold values
    board = sel.build_leaderboard(
        filled, {a: read_json(study.paths.test_report(a)) for a in ARCHS}, "recall_positive", "3"
    )
    expected = {a: np.mean([f["3"]["recall"] for f in filled[a]["per_fold_per_class"].values()]) for a in ARCHS}
    assert board.set_index("architecture")["cv_mean"].to_dict() == pytest.approx(expected)
    assert board.iloc[0]["architecture"] == max(expected, key=expected.get)
    assert cli.main(["leaderboard"]) == 0  # the leaderboard select wrote
    out = capsys.readouterr().out
    assert out.startswith("Ranked on cross-validated") and study.selected["winner"] in out
    assert all(arch in out for arch in ARCHS) and "Registered: " in out


# --- promotion -----------------------------------------------------------------------------------------------------


def test_promotion_is_gated_forced_recorded_and_rolled_back(study: Study, capsys, monkeypatch) -> None:
    monkeypatch.chdir(study.root)
    monkeypatch.setenv("DLPIPE_ROOT", str(study.root))
    winner = study.selected["winner"]
    good = study.trained[winner]

    # a worse challenger: the winner retrained for 1 epoch at a tiny learning rate, selected again
    write_params(study.root, BAD, base=load_params_raw(study.root))
    bad_params = load_params(study.root / "params.yaml")
    bad = train.run(bad_params, study.paths, winner)
    second = select.run(bad_params, study.paths)
    assert bad["f1_macro"] < good["f1_macro"]
    assert second["winner"] == winner  # chosen on the unchanged CV reports
    assert second["registry"]["version"] == 2 and second["registry"]["promotion"]["action"] == "refused"
    assert alias(study, "challenger") == 2 and alias(study, "champion") == 1
    assert "does not beat" in version_tags(study, 2)["promotion_refused"]

    # the CLI refuses too, giving both scores (re-evaluated on the test set), and exits 0
    code, out, _ = promote_cli(capsys)
    assert code == 0
    assert "not promoted" in out and f"{bad['f1_macro']:.4f}" in out and f"{good['f1_macro']:.4f}" in out
    assert alias(study, "champion") == 1

    # --force moves it anyway, and records the move on the version
    code, out, _ = promote_cli(capsys, "--version", "2", "--force")
    assert code == 0 and "forced" in out
    assert alias(study, "champion") == 2
    tags = version_tags(study, 2)
    assert tags["previous_champion"] == "1" and tags["promotion_forced"] == "true" and tags["promoted_at"]
    assert version_tags(study, 1)["replaced_by"] == "2"

    # the better version 1 wins the gated comparison against champion 2
    code, out, _ = promote_cli(capsys, "--version", "1")
    assert code == 0 and out.startswith("promoted:") and "beats version 2" in out
    assert alias(study, "champion") == 1
    tags = version_tags(study, 1)
    assert tags["previous_champion"] == "2" and tags["promotion_forced"] == "false"
    assert float(tags["promotion_score"]) == pytest.approx(good["f1_macro"], abs=1e-4)
    assert float(tags["previous_champion_score"]) == pytest.approx(bad["f1_macro"], abs=1e-4)

    # a tie does not promote: the same logged model registered again as version 3
    v1 = study.client.get_model_version(NAME, "1")
    study.client.create_model_version(
        NAME, v1.source, run_id=v1.run_id, tags={"test_set_hash": v1.tags["test_set_hash"]}
    )
    code, out, _ = promote_cli(capsys, "--version", "3")
    assert code == 0 and "not promoted" in out and alias(study, "champion") == 1

    # rollback walks back through the champions: 1 -> 2 -> 1, then there is nothing before
    code, out, _ = promote_cli(capsys, "--rollback")
    assert code == 0 and alias(study, "champion") == 2 and "version 2" in out
    assert version_tags(study, 1)["rolled_back_to"] == "2" and version_tags(study, 2)["restored_from"] == "1"
    code, out, _ = promote_cli(capsys, "--rollback")
    assert code == 0 and alias(study, "champion") == 1
    code, _, err = promote_cli(capsys, "--rollback")
    assert code == 1 and "no previous one" in err and alias(study, "champion") == 1

    model_tags = study.client.get_registered_model(NAME).tags
    assert json.loads(model_tags["champion_history"]) == [1]
    actions = [r["action"] for r in json.loads(model_tags["champion_audit"])]
    assert actions == [
        "promoted",
        "refused",
        "refused",
        "promoted",
        "promoted",
        "refused",
        "rolled_back",
        "rolled_back",
    ]


def test_promote_usage_errors_exit_with_dlpipe_codes(study: Study, capsys, monkeypatch) -> None:
    monkeypatch.chdir(study.root)
    monkeypatch.setenv("DLPIPE_ROOT", str(study.root))
    code, _, err = promote_cli(capsys, "--rollback", "--force")
    assert code == 2 and "--rollback" in err
    # bad input (exit 2), one line naming what exists
    code, _, err = promote_cli(capsys, "--version", "99")
    assert code == 2 and f"registered model '{NAME}' has no version 99; versions: 1" in err
    assert len(err.strip().splitlines()) == 1
    for args in (("--model-name", "no-such-model"), ("--model-name", "no-such-model", "--rollback")):
        code, _, err = promote_cli(capsys, *args)
        assert code == 2
        assert f"no registered model 'no-such-model' in the MLflow store; registered models: {NAME}" in err


def load_params_raw(root: Path) -> dict:
    import yaml

    return yaml.safe_load((root / "params.yaml").read_text())
