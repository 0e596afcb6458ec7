"""tune@<arch> on digits (300 samples, 2-4 epochs, tiny models): pruning, MLflow run tree and plots, the report the cv
stage applies, resumption after an interrupt, a changed space, NaN trials, seeded repeats, k-fold objectives and
two worker processes on the journal storage."""

from __future__ import annotations

from pathlib import Path

import mlflow
import optuna
import pytest
import yaml
from helpers.mlflow_store import install_mlflow_store
from helpers.project import REPO_ROOT, SMALL_STUDY, deep_merge, write_params
from mlflow.entities import Run
from mlflow.tracking import MlflowClient
from optuna.trial import TrialState

from dlpipe import cli
from dlpipe.config import load_params
from dlpipe.data.prepared import PreparedData
from dlpipe.data.store import dataset_digest
from dlpipe.io import read_json
from dlpipe.paths import ProjectPaths
from dlpipe.stages import fetch, prepare, tune
from dlpipe.stages import study as study_stage
from dlpipe.stages.common import model_spec
from dlpipe.tuning import objective as objective_module
from dlpipe.tuning import study as S
from dlpipe.tuning.objective import Objective
from dlpipe.tuning.space import SearchSpace
from dlpipe.tuning.workers import TrialRunner, run_trials

EXPERIMENT = "dlpipe/digits"
LR_GOOD_BAD = {"type": "categorical", "choices": [1e-6, 0.05]}  # 1e-6 learns nothing in a few epochs
LR_LOG = {"type": "float", "low": 1e-3, "high": 0.1, "log": True}
PLAIN = {"sampler": "random", "pruner": "none", "max_epochs": 2}


def clean_base() -> dict:
    """The repository's params.yaml with empty search spaces, so each test states its whole space."""
    base = yaml.safe_load((REPO_ROOT / "params.yaml").read_text())
    base["tune"]["space"] = {}
    base["tune"]["spaces"] = {arch: {} for arch in base["tune"]["spaces"]}
    return base


def set_tune(project: Path, tune_params: dict, **top) -> tuple:
    """Write project/params.yaml (SMALL_STUDY + `tune_params` + `top`); returns (params, paths)."""
    tune_params = {"cv_folds": 0, **tune_params}  # one validation slice unless a test asks for folds
    write_params(project, deep_merge(SMALL_STUDY, {"tune": tune_params, **top}), base=clean_base())
    return load_params(project / "params.yaml"), ProjectPaths(project)


def prepared(project: Path, tune_params: dict, **top) -> tuple:
    params, paths = set_tune(project, tune_params, **top)
    fetch.run(params, paths)
    prepare.run(params, paths)
    return params, paths


def journal(paths: ProjectPaths):
    return optuna.storages.JournalStorage(optuna.storages.journal.JournalFileBackend(str(paths.optuna / "journal.log")))


def load_study(paths: ProjectPaths, name: str) -> optuna.Study:
    return optuna.load_study(study_name=name, storage=journal(paths))


def experiment_runs(client: MlflowClient) -> list[Run]:
    exp = client.get_experiment_by_name(EXPERIMENT)
    assert exp is not None
    return client.search_runs([exp.experiment_id], max_results=1000)


def tune_parents(client: MlflowClient, arch: str) -> list[Run]:
    return [
        r
        for r in experiment_runs(client)
        if "mlflow.parentRunId" not in r.data.tags
        and r.data.tags.get("stage") == "tune"
        and r.data.tags.get("architecture") == arch
    ]


def children(client: MlflowClient, parent_id: str) -> list[Run]:
    return [r for r in experiment_runs(client) if r.data.tags.get("mlflow.parentRunId") == parent_id]


# --- one median-pruned study with MLflow, shared by several tests -------------------------------------------------


@pytest.fixture(scope="module")
def pruned(tmp_path_factory: pytest.TempPathFactory, mlflow_template_db: Path):
    """tune@mlp: 6 random trials over a good and a hopeless learning rate, median pruning from the 2nd trial."""
    root = tmp_path_factory.mktemp("tune-pruned") / "project"
    root.mkdir()
    with pytest.MonkeyPatch.context() as mp:
        mp.setenv("DLPIPE_ROOT", str(root))
        mp.chdir(root)
        mp.setattr(S, "MEDIAN_STARTUP_TRIALS", 1)
        mp.setattr(S, "MEDIAN_WARMUP_STEPS", 0)
        uri = install_mlflow_store(root, mlflow_template_db)
        mp.setenv("MLFLOW_TRACKING_URI", uri)  # and removed after (mlflow.set_tracking_uri exports it)
        space = {"train.lr": LR_GOOD_BAD, "model.hidden": {"type": "categorical", "choices": [[16], [32, 16]]}}
        params, paths = prepared(
            root,
            {"n_trials": 6, "max_epochs": 4, "sampler": "random", "pruner": "median", "spaces": {"mlp": space}},
            train={"max_epochs": 4, "early_stopping": {"enabled": False}},
        )
        report = tune.run(params, paths, "mlp")
        yield {
            "params": params,
            "paths": paths,
            "report": report,
            "client": MlflowClient(uri),
            "uri": uri,
            "study": load_study(paths, report["study_name"]),
        }


def test_median_pruner_prunes_trials_in_the_hopeless_part_of_the_space(pruned):
    study = pruned["study"]
    states = [t.state for t in study.trials]
    assert len(states) == 6 and all(s in S.FINISHED for s in states)
    pruned_trials = [t for t in study.trials if t.state == TrialState.PRUNED]
    assert pruned_trials, [(t.params, t.intermediate_values) for t in study.trials]
    for t in pruned_trials:
        assert t.params["train.lr"] == 1e-6
        assert t.user_attrs["epochs"] < 4 and len(t.intermediate_values) == t.user_attrs["epochs"]
    assert all(t.user_attrs["epochs"] == 4 for t in study.trials if t.state == TrialState.COMPLETE)
    assert pruned["report"]["best_params"]["train.lr"] == 0.05
    assert pruned["report"]["trials"]["PRUNED"] == len(pruned_trials)


def test_every_trial_is_a_child_run_with_its_state_params_and_intermediate_values(pruned):
    client, study, report = pruned["client"], pruned["study"], pruned["report"]
    (parent,) = tune_parents(client, "mlp")
    assert parent.info.run_id == report["mlflow_run_id"] and parent.info.status == "FINISHED"
    tags = parent.data.tags
    assert tags["study_name"] == report["study_name"] and tags["params_hash"] == report["study_name"][4:]
    assert {"git_commit", "dataset", "dataset_hash"} <= set(tags)
    assert parent.data.params["space.train.lr.type"] == "categorical" and parent.data.params["tune.n_trials"] == "6"
    assert parent.data.metrics["best_f1_macro"] == pytest.approx(report["best_value"])
    runs = {int(r.data.tags["trial"]): r for r in children(client, parent.info.run_id)}
    assert sorted(runs) == [t.number for t in study.trials]
    for t in study.trials:
        run = runs[t.number]
        assert run.data.tags["state"] == t.state.name and run.data.tags["stage"] == "tune"
        assert run.info.status == "FINISHED"
        assert run.data.params["train.lr"] == str(t.params["train.lr"])
        assert run.data.params["model.hidden"] in ("[16]", "[32, 16]")  # the real value, not Optuna's text
        history = client.get_metric_history(run.info.run_id, "val_f1_macro")
        assert {m.step: pytest.approx(m.value) for m in history} == t.intermediate_values
        if t.state == TrialState.COMPLETE:
            assert run.data.metrics["f1_macro"] == pytest.approx(t.value)


def test_the_study_plots_trials_table_and_report_are_parent_artifacts(pruned):
    client, report = pruned["client"], pruned["report"]
    files = {a.path for a in client.list_artifacts(report["mlflow_run_id"], "plots")}
    assert {
        "plots/optimization_history.png",
        "plots/intermediate_values.png",
        "plots/parallel_coordinate.png",
        "plots/param_importances.png",
    } <= files
    top = {a.path for a in client.list_artifacts(report["mlflow_run_id"])}
    assert {"trials.csv", "tuning_report.json"} <= top
    local = mlflow.artifacts.download_artifacts(
        run_id=report["mlflow_run_id"], artifact_path="plots", tracking_uri=pruned["uri"]
    )
    assert (Path(local) / "optimization_history.png").read_bytes()[:4] == b"\x89PNG"


def test_the_report_holds_real_best_params_that_model_spec_applies(pruned):
    params, paths, report, study = pruned["params"], pruned["paths"], pruned["report"], pruned["study"]
    on_disk = read_json(paths.reports / "tuning" / "mlp.json")
    assert on_disk == report
    best = max((t for t in study.trials if t.state == TrialState.COMPLETE), key=lambda t: t.value)
    assert report["best_value"] == pytest.approx(best.value) and report["best_trial"] == best.number
    assert report["best_params"] == {
        "train.lr": best.params["train.lr"],
        "model.hidden": yaml.safe_load(best.params["model.hidden"]),
    }
    assert report["metric"] == "f1_macro" and report["direction"] == "maximize" and report["n_trials"] == 6
    assert sum(report["trials"].values()) == 6 and report["storage"] == str(paths.optuna / "journal.log")
    spec = model_spec(params, paths, "mlp")
    assert spec.train.lr == report["best_params"]["train.lr"]
    assert spec.model.hidden == report["best_params"]["model.hidden"]
    assert spec.model.hidden != params.models.mlp.hidden or spec.train.lr != params.train.lr


# --- resumption, a changed space, failing trials ------------------------------------------------------------------


class InterruptingFit:
    """Wraps training.fit inside the objective: raises KeyboardInterrupt on call number `at` (1-based)."""

    def __init__(self, at: int):
        self.at, self.calls = at, 0
        self.real = objective_module.fit

    def __call__(self, *args, **kwargs):
        self.calls += 1
        if self.calls == self.at:
            raise KeyboardInterrupt
        return self.real(*args, **kwargs)


def test_an_interrupted_study_resumes_and_finishes_exactly_its_budget(project, mlflow_store, monkeypatch):
    params, paths = prepared(project, {**PLAIN, "n_trials": 4, "space": {"train.lr": LR_LOG}})
    interrupt = InterruptingFit(at=3)
    monkeypatch.setattr(objective_module, "fit", interrupt)
    with pytest.raises(KeyboardInterrupt):
        tune.run(params, paths, "perceptron")
    assert not (paths.reports / "tuning" / "perceptron.json").exists()
    client = MlflowClient(mlflow_store)
    (parent,) = tune_parents(client, "perceptron")
    assert parent.info.status == "KILLED"
    name = parent.data.tags["study_name"]
    study = load_study(paths, name)
    assert [t.state for t in study.trials] == [TrialState.COMPLETE, TrialState.COMPLETE, TrialState.FAIL]
    assert study.trials[2].system_attrs[S.ATTR_INTERRUPTED] is True

    monkeypatch.setattr(objective_module, "fit", interrupt.real)
    report = tune.run(params, paths, "perceptron")
    assert report["study_name"] == name and report["finished"] == 4
    study = load_study(paths, name)
    assert len(study.trials) == 5  # 2 before, the interrupted one, and only the 2 missing ones after
    assert S.state_counts(study)["COMPLETE"] == 4
    (again,) = tune_parents(client, "perceptron")  # the same parent run, resumed
    assert again.info.run_id == parent.info.run_id and again.info.status == "FINISHED"
    statuses = sorted(r.info.status for r in children(client, parent.info.run_id))
    assert statuses == ["FINISHED"] * 4 + ["KILLED"]


def test_a_changed_space_starts_a_new_study_and_an_unchanged_one_runs_nothing(project, mlflow_store):
    lr = {"type": "float", "low": 1e-3, "high": 0.1, "log": True}
    params, paths = prepared(project, {**PLAIN, "n_trials": 2, "space": {"train.lr": lr}})
    first = tune.run(params, paths, "perceptron")
    again = tune.run(params, paths, "perceptron")
    assert again["study_name"] == first["study_name"] and again["finished"] == 2
    assert len(load_study(paths, first["study_name"]).trials) == 2  # nothing more ran
    params, paths = set_tune(project, {**PLAIN, "n_trials": 2, "space": {"train.lr": {**lr, "high": 0.5}}})
    changed = tune.run(params, paths, "perceptron")
    assert changed["study_name"] != first["study_name"] and changed["finished"] == 2
    assert len(load_study(paths, changed["study_name"]).trials) == 2  # a fresh count
    assert len(load_study(paths, first["study_name"]).trials) == 2
    assert sorted(optuna.get_all_study_names(journal(paths))) == sorted([first["study_name"], changed["study_name"]])
    params, paths = set_tune(project, {**PLAIN, "n_trials": 3, "space": {"train.lr": lr}})
    more = tune.run(params, paths, "perceptron")  # a bigger budget continues the first study
    assert more["study_name"] == first["study_name"] and len(load_study(paths, first["study_name"]).trials) == 3


def test_a_trial_whose_loss_is_not_finite_fails_and_the_study_completes_its_budget(project, mlflow_store):
    space = {"train.l2": {"type": "categorical", "choices": [0.0, 1e300]}}  # 1e300 * sum(w^2) is inf in float32
    params, paths = prepared(project, {**PLAIN, "n_trials": 3, "space": space})
    report = tune.run(params, paths, "perceptron")
    study = load_study(paths, report["study_name"])
    failed = [t for t in study.trials if t.state == TrialState.FAIL]
    assert failed and all(t.params["train.l2"] == 1e300 for t in failed)
    assert all(t.system_attrs[S.ATTR_ERROR].startswith("NonFiniteLoss: ") for t in failed)
    assert report["finished"] == 3 and report["trials"]["FAIL"] == len(failed)
    assert report["best_params"] == {"train.l2": 0.0}
    runs = children(MlflowClient(mlflow_store), report["mlflow_run_id"])
    bad = [r for r in runs if r.data.tags["state"] == "FAIL"]
    assert len(bad) == len(failed) and all(r.info.status == "FAILED" for r in bad)
    assert all("NonFiniteLoss" in r.data.tags["error"] for r in bad)


def test_tuning_disabled_writes_a_report_without_a_study(project):
    params, paths = set_tune(project, {"enabled": False, "space": {"train.lr": LR_GOOD_BAD}})
    report = tune.run(params, paths, "mlp")
    assert read_json(paths.reports / "tuning" / "mlp.json") == report
    assert report["best_params"] == {} and report["study_name"] is None and report["enabled"] is False
    assert not paths.optuna.exists()
    assert cli.main(["tune-worker", "--arch", "mlp"]) == 2  # nothing to join
    assert cli.main(["tune-worker", "--arch", "cnn"]) == 2  # not in architectures


# --- without MLflow: the objective and the sampler directly -------------------------------------------------------


def run_study(params, paths: ProjectPaths, arch: str) -> optuna.Study:
    """A sequential study of `arch` in the storage params name, without MLflow."""
    space = SearchSpace.for_arch(params, arch)
    data = PreparedData.load(paths.raw, paths.prepared, params.data.normalize)
    handle = S.open_study(params, paths, arch, space, dataset_digest(paths.raw))
    runner = TrialRunner(handle.study, Objective(params, arch, space, data), params.tune.n_trials, "w0")
    assert run_trials(runner) == "budget"
    return handle.study


def test_seeded_sequential_studies_repeat_their_trials(project):
    space = {
        "train.lr": {"type": "float", "low": 1e-3, "high": 0.1, "log": True},
        "train.batch_size": {"type": "categorical", "choices": [16, 64]},
    }
    tpe = {"sampler": "tpe", "pruner": "none", "max_epochs": 2, "n_trials": 2, "space": space}
    params, paths = prepared(project, {**tpe, "storage": "optuna/a.log"})
    a = run_study(params, paths, "perceptron")
    params, paths = set_tune(project, {**tpe, "storage": "optuna/b.log"})
    b = run_study(params, paths, "perceptron")
    params, paths = set_tune(project, {**tpe, "storage": "optuna/c.log"}, seed=7)
    c = run_study(params, paths, "perceptron")
    assert a.study_name == b.study_name != c.study_name
    assert [t.params for t in a.trials] == [t.params for t in b.trials]
    assert [t.value for t in a.trials] == [t.value for t in b.trials]  # and, on the CPU, the same scores
    assert [t.params for t in a.trials] != [t.params for t in c.trials]


def test_k_fold_objective_reports_every_fold_with_its_own_steps_and_returns_their_mean(project):
    params, paths = prepared(
        project,
        {**PLAIN, "n_trials": 1, "cv_folds": 2, "space": {"train.lr": LR_GOOD_BAD}},
        train={"early_stopping": {"enabled": False}},
    )
    (trial,) = run_study(params, paths, "perceptron").trials
    assert sorted(trial.intermediate_values) == [0, 1, 2, 3]  # fold k reports steps 2k, 2k+1
    assert trial.value == pytest.approx((trial.user_attrs["fold_0"] + trial.user_attrs["fold_1"]) / 2)
    assert trial.user_attrs["epochs"] == 4


# --- two worker processes -----------------------------------------------------------------------------------------


@pytest.mark.slow
def test_two_worker_processes_share_the_journal_study(project, mlflow_store):
    params, paths = prepared(
        project,
        {**PLAIN, "n_trials": 4, "workers": 2, "space": {"train.lr": {"type": "float", "low": 1e-3, "high": 0.1}}},
        architectures=["perceptron"],
        trainer={"workers": 2},
    )
    study_stage.run(params, paths)  # tune.workers: 2 of the study stage's two worker processes share the study
    report = read_json(paths.tuning_report("perceptron"))
    assert report["finished"] == 4 and report["stopped"] == "budget"
    study = load_study(paths, report["study_name"])
    done = [t for t in study.trials if t.state in S.FINISHED]
    assert len(done) == 4
    numbers = [t.number for t in study.trials]
    assert len(numbers) == len(set(numbers))
    surplus = [t for t in study.trials if S.ATTR_SURPLUS in t.system_attrs]
    assert len(study.trials) == 4 + len(surplus)
    workers = {t.user_attrs["worker"] for t in done}
    assert len(workers) == 2, workers
    assert {w.rsplit(":", 1)[1] for w in workers} == {"w0", "w1"}
    runs = children(MlflowClient(mlflow_store), report["mlflow_run_id"])  # each worker logged its own trials
    assert sorted(int(r.data.tags["trial"]) for r in runs) == sorted(t.number for t in done)
    assert {r.data.tags["worker"] for r in runs} == workers
