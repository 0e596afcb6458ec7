"""cv@<arch> with MLflow, read back through MlflowClient: the run tree (one parent per architecture, one child per
fold), tags, flattened params, the dataset input, per-epoch metric histories, artifacts and aggregates; a failed or
interrupted fold and the re-run that completes only the missing folds; unchanged and changed params."""

from __future__ import annotations

import os
import signal
import statistics
from dataclasses import dataclass
from pathlib import Path

import mlflow
import pytest
from helpers.mlflow_store import install_mlflow_store
from helpers.project import copy_project, prepare_project, write_params
from lightning.pytorch.callbacks import Callback
from mlflow.entities import Run
from mlflow.tracking import MlflowClient

from dlpipe.config import Params, load_params
from dlpipe.data.store import dataset_digest
from dlpipe.evaluation.cv import run_fold as real_run_fold
from dlpipe.io import read_json
from dlpipe.metric_names import SCALAR_METRICS
from dlpipe.paths import ProjectPaths
from dlpipe.stages import cv
from dlpipe.stages.common import worker_context
from dlpipe.stages.runner import stage_main

ARCHS = ("perceptron", "mlp")
FAST = {"train": {"max_epochs": 2}}  # with early stopping patience 2, every fold trains exactly 2 epochs
EPOCHS = 2
FOLDS = 3
TAG_KEYS = ("stage", "architecture", "git_commit", "params_hash", "dataset", "dataset_hash")
EXPERIMENT = "dlpipe/digits"


class CountingRunFold:
    """Wraps evaluation.cv.run_fold: records the folds trained; `fail` maps a fold to the exception it raises."""

    def __init__(self, fail: dict[int, BaseException] | None = None):
        self.real = real_run_fold
        self.calls: list[int] = []
        self.fail = fail or {}

    def __call__(self, spec, data, k, *args, **kwargs):
        self.calls.append(k)
        if k in self.fail:
            raise self.fail[k]
        return self.real(spec, data, k, *args, **kwargs)


def experiment_runs(client: MlflowClient) -> list[Run]:
    exp = client.get_experiment_by_name(EXPERIMENT)
    assert exp is not None, f"no experiment {EXPERIMENT}"
    return client.search_runs([exp.experiment_id], max_results=1000)


def parents(client: MlflowClient, arch: str | None = None) -> list[Run]:
    return [
        r
        for r in experiment_runs(client)
        if "mlflow.parentRunId" not in r.data.tags and (arch is None or r.data.tags.get("architecture") == arch)
    ]


def children(client: MlflowClient, parent_id: str, status: str | None = None) -> list[Run]:
    return [
        r
        for r in experiment_runs(client)
        if r.data.tags.get("mlflow.parentRunId") == parent_id and (status is None or r.info.status == status)
    ]


def folds_of(runs: list[Run]) -> list[str]:
    return sorted(r.data.tags["fold"] for r in runs)


def the_parent(client: MlflowClient, arch: str) -> Run:
    found = parents(client, arch)
    assert len(found) == 1, [(r.info.run_id, r.info.status) for r in found]
    return found[0]


def artifact_paths(client: MlflowClient, run_id: str, path: str | None = None) -> dict[str, int]:
    return {a.path: a.file_size for a in client.list_artifacts(run_id, path) if not a.is_dir}


# ------------------------------------------------------------------------------------- one study, two architectures


@dataclass
class Study:
    params: Params
    paths: ProjectPaths
    uri: str
    client: MlflowClient
    outs: dict[str, dict]
    calls: list[int]


@pytest.fixture(scope="module")
def study(tmp_path_factory: pytest.TempPathFactory, mlflow_template_db: Path):
    """cv for perceptron and mlp on digits (SMALL_STUDY: 300 samples, 3 folds; 2 epochs), in-process, once."""
    root = copy_project(tmp_path_factory.mktemp("cv-study") / "project")
    with pytest.MonkeyPatch.context() as mp:
        mp.setenv("DLPIPE_ROOT", str(root))
        mp.delenv("MLFLOW_TRACKING_URI", raising=False)
        mp.chdir(root)
        uri = install_mlflow_store(root, mlflow_template_db)
        params, paths = prepare_project(root, FAST)
        counter = CountingRunFold()
        with pytest.MonkeyPatch.context() as counting:
            counting.setattr(cv, "run_fold", counter)
            outs = {arch: cv.run(params, paths, arch) for arch in ARCHS}
        yield Study(params, paths, uri, MlflowClient(tracking_uri=uri), outs, counter.calls)


def test_one_parent_run_per_architecture_in_the_dataset_experiment(study: Study) -> None:
    assert study.calls == [0, 1, 2, 0, 1, 2]
    exp = study.client.get_experiment_by_name(EXPERIMENT)
    assert exp is not None and exp.lifecycle_stage == "active"
    all_parents = parents(study.client)
    assert sorted(r.data.tags["architecture"] for r in all_parents) == sorted(ARCHS)
    for arch in ARCHS:
        parent = the_parent(study.client, arch)
        assert parent.info.status == "FINISHED"
        assert parent.data.tags["stage"] == "cv"
        assert parent.info.run_name == f"cv-{arch}"
        assert study.outs[arch]["mlflow_run_id"] == parent.info.run_id
    assert len(experiment_runs(study.client)) == len(ARCHS) * (1 + FOLDS)  # nothing else was created


def test_three_finished_fold_children_per_parent(study: Study) -> None:
    for arch in ARCHS:
        parent = the_parent(study.client, arch)
        kids = children(study.client, parent.info.run_id)
        assert len(kids) == FOLDS
        assert all(r.info.status == "FINISHED" for r in kids)
        assert folds_of(kids) == ["0", "1", "2"]
        for r in kids:
            assert r.data.tags["mlflow.parentRunId"] == parent.info.run_id
            assert r.info.run_name == f"cv-{arch}-fold{r.data.tags['fold']}"
            assert r.info.end_time >= r.info.start_time >= parent.info.start_time


def test_standard_tags_on_parent_and_children(study: Study) -> None:
    digest = dataset_digest(study.paths.raw)
    for arch in ARCHS:
        parent = the_parent(study.client, arch)
        expected = {
            "stage": "cv",
            "architecture": arch,
            "params_hash": study.outs[arch]["params_hash"],
            "dataset": "digits",
            "dataset_hash": digest,
        }
        for run in [parent, *children(study.client, parent.info.run_id)]:
            tags = run.data.tags
            assert set(TAG_KEYS) <= set(tags), set(TAG_KEYS) - set(tags)
            assert {k: tags[k] for k in expected} == expected
            assert tags["git_commit"] == parent.data.tags["git_commit"] != ""
    hashes = {the_parent(study.client, a).data.tags["params_hash"] for a in ARCHS}
    assert len(hashes) == len(ARCHS)  # the hash identifies the architecture's result


def test_parent_has_flattened_params(study: Study) -> None:
    for arch in ARCHS:
        params = the_parent(study.client, arch).data.params
        assert params["arch"] == arch
        assert float(params["train.lr"]) == pytest.approx(0.001)
        assert params["train.max_epochs"] == "2"
        assert params["train.optimizer"] == "adam"
        assert params["train.early_stopping.patience"] == "2"
        assert params["data.folds"] == "3"
        assert params["data.limit"] == "300"
        assert params["data.name"] == "digits"
        assert params["seed"] == "42"
        assert params["trainer.accelerator"] == "cpu"
        for section in ("train", "model", "data", "trainer"):  # no section logged as one repr string
            assert section not in params, f"{section} = {params[section][:80]!r}"
    mlp = the_parent(study.client, "mlp").data.params
    assert mlp["model.hidden"] == "[32]"
    assert float(mlp["model.dropout"]) == pytest.approx(0.2)
    assert the_parent(study.client, "perceptron").data.params["model.init"] == "default"


def test_dataset_logged_as_an_input_of_the_parent(study: Study) -> None:
    for arch in ARCHS:
        run = the_parent(study.client, arch)
        inputs = run.inputs.dataset_inputs
        assert len(inputs) == 1
        ds = inputs[0].dataset
        assert ds.name == "digits"
        assert str(study.paths.raw) in ds.source
        assert '"features_shape": [300, 1, 8, 8]' in ds.profile
        assert {t.key: t.value for t in inputs[0].tags}["mlflow.data.context"] == "training"


def test_per_epoch_metric_histories_on_every_fold(study: Study) -> None:
    for arch in ARCHS:
        for child in children(study.client, the_parent(study.client, arch).info.run_id):
            rid = child.info.run_id
            assert child.data.metrics["epochs"] == EPOCHS
            fold_report = mlflow.artifacts.load_dict(f"{child.info.artifact_uri}/{cv.FOLD_REPORT}")
            assert len(fold_report["history"]) == EPOCHS
            for key in ("val_loss", "train_loss", "val_accuracy", "val_f1_macro"):
                history = sorted(study.client.get_metric_history(rid, key), key=lambda m: m.step)
                assert [m.step for m in history] == list(range(EPOCHS)), key
                logged = [m.value for m in history]
                recorded = [row[key] for row in fold_report["history"]]
                assert logged == pytest.approx(recorded, rel=1e-6), key
            # the fold's final metrics: one value each, equal to the fold report
            for m in SCALAR_METRICS:
                assert len(study.client.get_metric_history(rid, m)) == 1
                assert child.data.metrics[m] == pytest.approx(fold_report["metrics"][m], abs=1e-12)


def test_artifacts_on_children_and_parent(study: Study) -> None:
    for arch in ARCHS:
        parent = the_parent(study.client, arch)
        pid = parent.info.run_id
        top = artifact_paths(study.client, pid)
        assert "cv_summary.json" in top
        plots = artifact_paths(study.client, pid, "plots")
        assert plots.get("plots/confusion_matrix.png", 0) > 1000
        # one picture of every fold's learning curves on the parent; the folds' per-epoch values are their metrics
        assert plots.get("plots/learning_curves.png", 0) > 1000
        summary = mlflow.artifacts.load_dict(f"{parent.info.artifact_uri}/cv_summary.json")
        assert summary["folds"] == FOLDS and summary["mean"] == study.outs[arch]["mean"]
        for child in children(study.client, pid):
            cid = child.info.run_id
            top = artifact_paths(study.client, cid)
            assert cv.FOLD_REPORT in top
            assert not artifact_paths(study.client, cid, "plots")
            assert len(study.client.get_metric_history(cid, "val_loss")) >= 1
            fold = mlflow.artifacts.load_dict(f"{child.info.artifact_uri}/{cv.FOLD_REPORT}")
            report = fold["report"]
            assert set(report["per_class"]) == {str(i) for i in range(10)}
            assert report["accuracy"] == pytest.approx(child.data.metrics["accuracy"], abs=1e-12)
            # out-of-fold class probabilities of exactly the scored fold's samples
            assert len(fold["probs"]) == len(fold["idx"]) == sum(map(sum, report["confusion_matrix"]))
    on_disk = list((study.paths.mlruns / "artifacts").rglob("confusion_matrix.png"))
    assert len(on_disk) == len(ARCHS)  # the parents' summed matrices, under the project's mlruns/
    assert (study.paths.mlruns / "mlflow.db").is_file()


def test_aggregates_are_the_mean_and_sample_std_of_the_folds(study: Study) -> None:
    for arch in ARCHS:
        parent = the_parent(study.client, arch)
        kids = sorted(children(study.client, parent.info.run_id), key=lambda r: r.data.tags["fold"])
        report = read_json(study.paths.cv_report(arch))
        assert report == study.outs[arch]
        assert report["architecture"] == arch and report["folds"] == FOLDS
        assert report["mlflow_run_id"] == parent.info.run_id
        assert report["params_hash"] == parent.data.tags["params_hash"]
        for m in SCALAR_METRICS:
            values = [r.data.metrics[m] for r in kids]
            assert parent.data.metrics[f"mean_{m}"] == pytest.approx(statistics.fmean(values), abs=1e-12), m
            assert parent.data.metrics[f"std_{m}"] == pytest.approx(statistics.stdev(values), abs=1e-12), m
            assert report["mean"][m] == pytest.approx(parent.data.metrics[f"mean_{m}"], abs=1e-12)
            assert report["std"][m] == pytest.approx(parent.data.metrics[f"std_{m}"], abs=1e-12)
            assert [report["per_fold"][f"fold_{k}"][m] for k in range(FOLDS)] == pytest.approx(values, abs=1e-12)
        confusions = [
            mlflow.artifacts.load_dict(f"{r.info.artifact_uri}/{cv.FOLD_REPORT}")["report"]["confusion_matrix"]
            for r in kids
        ]
        summed = [[sum(c[i][j] for c in confusions) for j in range(10)] for i in range(10)]
        assert report["confusion_matrix"] == summed
        assert sum(map(sum, summed)) == 240  # every training-part sample (300 - 20% test) validated exactly once


def test_unchanged_rerun_creates_no_runs_trains_nothing_and_rewrites_the_report(
    study: Study, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.delenv("MLFLOW_TRACKING_URI", raising=False)
    arch = "perceptron"
    before = {r.info.run_id: (r.info.status, r.info.end_time) for r in experiment_runs(study.client)}
    pid = study.outs[arch]["mlflow_run_id"]
    mean_history = len(study.client.get_metric_history(pid, "mean_accuracy"))
    study.paths.cv_report(arch).unlink()
    counter = CountingRunFold()
    monkeypatch.setattr(cv, "run_fold", counter)
    again = cv.run(study.params, study.paths, arch)
    assert counter.calls == []
    after = {r.info.run_id: (r.info.status, r.info.end_time) for r in experiment_runs(study.client)}
    assert after == before  # no new run, none reopened or re-ended
    assert len(study.client.get_metric_history(pid, "mean_accuracy")) == mean_history  # nothing logged again
    assert again == study.outs[arch]
    assert read_json(study.paths.cv_report(arch)) == study.outs[arch]


def test_a_fold_unit_run_again_reuses_its_recorded_run_and_trains_nothing(
    study: Study, monkeypatch: pytest.MonkeyPatch
) -> None:
    """What Ray's retry of a fold does when the fold's node died after logging it (tests/integration/
    test_ray_cluster.py kills such a node): the unit finds the fold's recorded run under the parent and returns it."""
    monkeypatch.delenv("MLFLOW_TRACKING_URI", raising=False)
    arch = "mlp"
    p = cv.plan(worker_context(study.params, study.paths), arch)
    before = {r.info.run_id for r in experiment_runs(study.client)}
    counter = CountingRunFold()
    monkeypatch.setattr(cv, "run_fold", counter)
    result = cv.fold_unit(cv.FoldJob(study.params, study.paths, arch, 1, p.parent_run_id, p.tags))
    assert counter.calls == []
    assert {r.info.run_id for r in experiment_runs(study.client)} == before  # no new run
    (child,) = [r for r in children(study.client, p.parent_run_id) if r.data.tags["fold"] == "1"]
    assert result.fold == 1 and result.metrics["accuracy"] == child.data.metrics["accuracy"]


# ------------------------------------------------------------------------------------- failures and resumption


@pytest.fixture
def fast_project(project: Path, mlflow_store: str):
    """`project` with SMALL_STUDY params at 2 epochs, prepared, with its own store: (params, paths, client)."""
    params, paths = prepare_project(project, FAST)
    return params, paths, MlflowClient(tracking_uri=mlflow_store)


def test_failed_fold_fails_the_runs_and_a_rerun_completes_only_the_missing_folds(fast_project, monkeypatch) -> None:
    params, paths, client = fast_project
    arch = "perceptron"
    failing = CountingRunFold(fail={1: RuntimeError("boom in fold 1")})
    monkeypatch.setattr(cv, "run_fold", failing)
    with pytest.raises(RuntimeError, match="boom in fold 1"):
        cv.run(params, paths, arch)
    assert failing.calls == [0, 1]
    parent = the_parent(client, arch)
    assert parent.info.status == "FAILED"
    kids = {r.data.tags["fold"]: r for r in children(client, parent.info.run_id)}
    assert sorted(kids) == ["0", "1"]
    assert kids["0"].info.status == "FINISHED"
    assert kids["1"].info.status == "FAILED"
    assert not paths.cv_report(arch).exists()
    assert mlflow.active_run() is None

    resumed = CountingRunFold()
    monkeypatch.setattr(cv, "run_fold", resumed)
    out = cv.run(params, paths, arch)
    assert resumed.calls == [1, 2]  # fold 0 reused, not retrained
    again = the_parent(client, arch)
    assert again.info.run_id == parent.info.run_id
    assert again.info.status == "FINISHED"
    finished = children(client, parent.info.run_id, "FINISHED")
    assert folds_of(finished) == ["0", "1", "2"]
    assert kids["0"].info.run_id in {r.info.run_id for r in finished}
    assert client.get_run(kids["1"].info.run_id).info.status == "FAILED"  # the failed attempt stays recorded
    report = read_json(paths.cv_report(arch))
    assert report == out and report["folds"] == FOLDS and report["mlflow_run_id"] == parent.info.run_id
    kid_acc = [r.data.metrics["accuracy"] for r in sorted(finished, key=lambda r: r.data.tags["fold"])]
    assert report["mean"]["accuracy"] == pytest.approx(statistics.fmean(kid_acc), abs=1e-12)
    assert again.data.metrics["mean_accuracy"] == pytest.approx(report["mean"]["accuracy"], abs=1e-12)
    assert again.data.params["train.lr"] == parent.data.params["train.lr"]  # params logged once, still there

    # a changed param is another result: a new parent run with a new params hash whose fold 0 trains again
    # (stopped right there to keep the test fast), the finished run untouched
    write_params(paths.root, {"train": {"lr": 0.01}}, base=_yaml(paths.params))
    changed = load_params(paths.params)
    fresh = CountingRunFold(fail={0: RuntimeError("stop after the first fold started")})
    monkeypatch.setattr(cv, "run_fold", fresh)
    with pytest.raises(RuntimeError, match="stop after"):
        cv.run(changed, paths, arch)
    assert fresh.calls == [0]  # the finished folds of the old params are not reused
    runs = {r.info.run_id: r for r in parents(client, arch)}
    assert len(runs) == 2 and parent.info.run_id in runs
    (new,) = (r for rid, r in runs.items() if rid != parent.info.run_id)
    assert new.data.tags["params_hash"] != report["params_hash"]
    assert float(new.data.params["train.lr"]) == pytest.approx(0.01)
    assert [(r.data.tags["fold"], r.info.status) for r in children(client, new.info.run_id)] == [("0", "FAILED")]
    old = client.get_run(parent.info.run_id)
    assert (old.info.status, old.info.end_time) == ("FINISHED", again.info.end_time)
    assert read_json(paths.cv_report(arch)) == report  # the failed run wrote no report


def _yaml(path: Path) -> dict:
    import yaml

    return yaml.safe_load(path.read_text())


def test_keyboard_interrupt_in_a_fold_ends_runs_killed_and_exits_130(
    fast_project, monkeypatch, keep_signal_handlers, capsys
) -> None:
    _, paths, client = fast_project
    arch = "perceptron"
    interrupting = CountingRunFold(fail={0: KeyboardInterrupt()})
    monkeypatch.setattr(cv, "run_fold", interrupting)
    assert stage_main("cv", cv.run, ["--arch", arch], with_arch=True) == 130
    assert "dlpipe cv: interrupted" in capsys.readouterr().err
    parent = the_parent(client, arch)
    assert parent.info.status == "KILLED"
    kids = children(client, parent.info.run_id)
    assert [(r.data.tags["fold"], r.info.status) for r in kids] == [("0", "KILLED")]
    assert not paths.cv_report(arch).exists()
    assert mlflow.active_run() is None


class SigtermAtEpochEnd(Callback):
    """Sends this process SIGTERM inside Lightning's fit loop, as `dvc queue kill` or a scheduler would; the stage
    runner's handler turns it into a KeyboardInterrupt there."""

    def on_train_epoch_end(self, trainer, pl_module) -> None:
        handler = signal.getsignal(signal.SIGTERM)
        assert callable(handler), "stage_main did not install its SIGTERM handler"  # never SIGTERM pytest itself
        os.kill(os.getpid(), signal.SIGTERM)


def test_sigterm_inside_lightning_training_ends_runs_killed_exits_130_and_resumes(
    fast_project, monkeypatch, keep_signal_handlers, capsys
) -> None:
    """Lightning catches a KeyboardInterrupt in fit and calls sys.exit(1); the stage must still see an interrupt."""
    _, paths, client = fast_project
    arch = "perceptron"
    calls: list[int] = []

    def interrupt_fold_0(spec, data, k, *args, callbacks=None, **kwargs):
        calls.append(k)
        return real_run_fold(spec, data, k, *args, callbacks=[*(callbacks or []), SigtermAtEpochEnd()], **kwargs)

    monkeypatch.setattr(cv, "run_fold", interrupt_fold_0)
    assert stage_main("cv", cv.run, ["--arch", arch], with_arch=True) == 130
    assert "dlpipe cv: interrupted" in capsys.readouterr().err
    assert calls == [0]
    parent = the_parent(client, arch)
    assert parent.info.status == "KILLED"
    kids = children(client, parent.info.run_id)
    assert [(r.data.tags["fold"], r.info.status) for r in kids] == [("0", "KILLED")]
    assert len(client.get_metric_history(kids[0].info.run_id, "val_loss")) == 1  # stopped after its first epoch
    assert not paths.cv_report(arch).exists()
    assert mlflow.active_run() is None

    # the re-run reopens the killed parent and trains the killed fold again (stopped at fold 1 to stay fast)
    resumed = CountingRunFold(fail={1: RuntimeError("enough")})
    monkeypatch.setattr(cv, "run_fold", resumed)
    with pytest.raises(RuntimeError, match="enough"):
        stage_main("cv", cv.run, ["--arch", arch], with_arch=True)
    assert resumed.calls == [0, 1]
    again = the_parent(client, arch)
    assert (again.info.run_id, again.info.status) == (parent.info.run_id, "FAILED")
    status = sorted((r.data.tags["fold"], r.info.status) for r in children(client, parent.info.run_id))
    assert status == [("0", "FINISHED"), ("0", "KILLED"), ("1", "FAILED")]
