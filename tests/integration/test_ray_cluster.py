"""The study's units on a Ray cluster (issue #25): a local cluster (`ray.cluster_utils.Cluster`, three nodes of one
CPU, each node its own raylet, workers and session folder) runs the study stage's trials, folds and final fit,
logging to an `mlflow server` whose backend is PostgreSQL (artifacts proxied by it: the units share no disk with the
stage), with Optuna's storage on PostgreSQL too. Two of its nodes die, each while it holds a fold: one in the middle
of the fold (the fold is trained again elsewhere), one after the fold was logged and its run ended but before the
result reached the stage (the retried task finds the recorded run and reuses it: nothing is trained twice). Every
number equals the local pool's for the same seed; no run is left RUNNING.

One cluster run serves every test (a cluster study costs most of a minute on 2 cores). The cluster runs in a
network namespace with only `lo` up (`unshare --net`), so nothing it starts can reach beyond loopback (Ray binds to
the interface address and probes a public resolver by default); the script reports every interface and socket it
saw, and they are checked to be loopback only. PostgreSQL runs outside the namespace (this module's fixture); the
server and the units reach it through its Unix socket.
"""

from __future__ import annotations

import json
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import optuna
import pytest
import yaml
from helpers import servers
from helpers.capabilities import LOOPBACK_NETNS
from helpers.mlflow_store import install_mlflow_store
from helpers.processes import subprocess_env
from helpers.project import REPO_ROOT, SMALL_STUDY, copy_project, deep_merge, write_params
from mlflow.tracking import MlflowClient

from dlpipe.config import load_params
from dlpipe.evaluation.selection import build_leaderboard
from dlpipe.io import read_json
from dlpipe.paths import ProjectPaths
from dlpipe.stages import fetch, prepare
from dlpipe.stages import study as study_stage
from dlpipe.tracking import store
from dlpipe.tracking.runs import FOLD_REPORT
from dlpipe.tuning.study import with_driver

pytestmark = [pytest.mark.slow, pytest.mark.loopback_netns, pytest.mark.postgres]

LOOPBACK = ("::1", "::ffff:127.0.0.1", "*", "0.0.0.0", "::")  # and 127.*; the last three: listening on every address
SCRIPT = Path(__file__).with_name("ray_cluster_script.py")
STUDY = deep_merge(
    SMALL_STUDY,
    {
        "data": {"limit": 240, "folds": 3},
        "architectures": ["mlp"],
        "models": {"mlp": {"hidden": [32]}},
        "train": {"max_epochs": 3, "lr": 0.01, "batch_size": 32},
        "tune": {
            "n_trials": 2,
            "sampler": "random",
            "pruner": "none",
            "max_epochs": 2,
            "cv_folds": 0,
            "space": {"train.lr": {"type": "float", "low": 0.003, "high": 0.03, "log": True}},
        },
        "mlflow": {"log_models": False},
    },
)


def prepared(root: Path, executor: str, storage: str | None = None) -> ProjectPaths:
    project = copy_project(root)
    overrides = {"study": {"executor": executor}, "trainer": {"workers": 1}, "tune": {"storage": storage}}
    base = yaml.safe_load((REPO_ROOT / "params.yaml").read_text())
    base["tune"]["space"], base["tune"]["spaces"] = {}, {}  # STUDY's space alone: the tiny mlp stays tiny
    write_params(project, deep_merge(STUDY, overrides), base)
    params, paths = load_params(project / "params.yaml"), ProjectPaths(project)
    fetch.run(params, paths)
    prepare.run(params, paths)
    return paths


@pytest.fixture(scope="module")
def pg() -> Iterator[servers.Postgres]:
    """PostgreSQL for MLflow's runs (database `mlflow`) and Optuna's trials (`optuna`)."""
    with servers.postgres("mlflow", "optuna") as running:
        yield running


@pytest.fixture(scope="module")
def local(tmp_path_factory, mlflow_template_db) -> ProjectPaths:
    """The study on the local pool (trainer.workers 1: in this process), its own SQLite store and Optuna journal."""
    paths = prepared(tmp_path_factory.mktemp("local"), "local")
    install_mlflow_store(paths.root, mlflow_template_db)
    with pytest.MonkeyPatch.context() as mp:
        for name in ("MLFLOW_TRACKING_URI", "MLFLOW_REGISTRY_URI", store.CONFIGURED_ENV):
            mp.delenv(name, raising=False)  # the project's own store, and none of it left behind
        mp.setenv("DLPIPE_ROOT", str(paths.root))
        mp.chdir(paths.root)
        study_stage.run(load_params(paths.root / "params.yaml"), paths)
    return paths


@pytest.fixture(scope="module")
def cluster(tmp_path_factory, pg) -> tuple[ProjectPaths, dict, MlflowClient, Path]:
    """The same study on the Ray cluster whose nodes die (see the script); returns the project, the script's report,
    a client of the (stopped) server's PostgreSQL backend and the server's artifact folder."""
    paths = prepared(tmp_path_factory.mktemp("ray"), "ray", storage=pg.socket_url("optuna"))
    server = tmp_path_factory.mktemp("server")
    out = paths.root / "cluster.json"
    cmd = [*LOOPBACK_NETNS, sys.executable, str(SCRIPT), str(paths.root), str(out), str(server)]
    cmd.append(pg.socket_url("mlflow"))
    proc = subprocess.run(cmd, env=subprocess_env(paths.root), capture_output=True, text=True, timeout=400)
    assert proc.returncode == 0, proc.stderr[-3000:]
    result = json.loads(out.read_text())
    assert result["returncode"] == 0, result["stderr"]
    return paths, result, MlflowClient(tracking_uri=with_driver(pg.url("mlflow"))), server / "art"


def test_nothing_the_cluster_started_left_loopback(cluster):
    _, result, _, _ = cluster
    assert "Ray cluster of 3 node(s), 3 unit(s) at once" in result["stderr"]
    assert all(" lo " in line for line in result["interfaces"]), result["interfaces"]
    assert result["sockets"], "no socket seen"
    for sock in result["sockets"]:  # local and peer address of every socket: loopback (or unbound) only
        for address in sock.split():
            host = address.rsplit(":", 1)[0].strip("[]")
            assert host in LOOPBACK or host.startswith("127."), sock


def test_ray_cluster_trials_folds_test_metrics_and_leaderboard_equal_the_local_pools(local, cluster, pg):
    there, _, _, _ = cluster
    tuned = [read_json(p.tuning_report("mlp")) for p in (local, there)]
    assert tuned[1]["finished"] == 2 and tuned[1]["storage"].startswith("postgresql://")
    for key in ("study_name", "best_params", "best_value", "best_trial"):
        assert tuned[0][key] == tuned[1][key], key
    study = optuna.load_study(study_name=tuned[1]["study_name"], storage=with_driver(pg.url("optuna")))
    assert len(study.trials) == 2  # in PostgreSQL
    cv = [read_json(p.cv_report("mlp")) for p in (local, there)]
    assert sorted(cv[1]["per_fold"]) == ["fold_0", "fold_1", "fold_2"]
    assert cv[0]["per_fold"] == cv[1]["per_fold"]  # every fold's metrics, exactly (the retried and reused ones too)
    assert cv[0]["per_fold_per_class"] == cv[1]["per_fold_per_class"]
    assert cv[0]["params_hash"] == cv[1]["params_hash"]
    assert local.oof_predictions("mlp").read_text() == there.oof_predictions("mlp").read_text()
    test = [read_json(p.test_report("mlp")) for p in (local, there)]  # written back from the node that trained
    assert test[1]["accuracy"] > 0.5
    for key in ("accuracy", "f1_macro", "params_hash"):
        assert test[0][key] == test[1][key], key
    assert (there.model_dir("mlp") / "params.json").is_file()
    assert local.test_predictions("mlp").read_text() == there.test_predictions("mlp").read_text()
    boards = [leaderboard(p) for p in (local, there)]
    assert boards[0].equals(boards[1]), (boards[0].T, boards[1].T)


def leaderboard(paths: ProjectPaths):
    """select's leaderboard of the project's reports, less what differs by machine and run (timings, run ids)."""
    params = load_params(paths.root / "params.yaml")
    cv, test = {"mlp": read_json(paths.cv_report("mlp"))}, {"mlp": read_json(paths.test_report("mlp"))}
    board = build_leaderboard(cv, test, params.selection.metric, params.selection.positive_class)
    varying = ["train_seconds", "latency_ms_per_sample", "pareto", "cv_run_id", "train_run_id"]
    return board.drop(columns=varying)


def logged_fold_report(art: Path, run_id: str) -> bool:
    """Whether the run logged a whole fold report (read in the server's artifact destination)."""
    try:
        (report,) = art.glob(f"*/{run_id}/artifacts/{FOLD_REPORT}")
        return isinstance(json.loads(report.read_text()), dict)
    except ValueError:  # no report, or a torn one
        return False


def fold_runs(client: MlflowClient) -> list:
    experiments = [e.experiment_id for e in client.search_experiments()]
    return [r for r in client.search_runs(experiments, "") if r.data.tags.get("fold")]


def test_a_node_killed_mid_fold_costs_only_that_attempt(cluster):
    paths, result, client, art = cluster
    assert len(result["killed"].get("mid-fold", [])) == 1, "no node was killed in the middle of a fold"
    experiments = client.search_experiments()
    assert [e.artifact_location.split(":")[0] for e in experiments if e.name != "Default"] == ["mlflow-artifacts"]
    runs = client.search_runs([e.experiment_id for e in experiments], "")
    assert [r.info.run_name for r in runs if r.info.status == "RUNNING"] == []
    lost = client.get_run(result["killed"]["mid-fold"][0])
    # its unit stopped itself once the fold's run was open, before training (dlpipe.processes.stop_point)
    assert not logged_fold_report(art, lost.info.run_id), "the kill landed after the fold was logged"
    assert lost.info.status == "KILLED", lost.data.tags
    assert "ended without closing this run" in lost.data.tags["dlpipe.killed_reason"]
    k = lost.data.tags["fold"]
    assert sorted(r.info.status for r in fold_runs(client) if r.data.tags["fold"] == k) == ["FINISHED", "KILLED"]
    assert not (paths.root / "mlruns").exists()  # nothing was logged beside the project: all went to the server


def test_a_fold_recorded_on_a_node_that_died_before_its_result_came_back_is_not_trained_again(cluster):
    _, result, client, art = cluster
    assert len(result["killed"].get("recorded", [])) == 1, "no node died holding a recorded fold"
    recorded = client.get_run(result["killed"]["recorded"][0])
    assert recorded.info.status == "FINISHED" and logged_fold_report(art, recorded.info.run_id)
    k = recorded.data.tags["fold"]
    # Ray ran the unit again on the head node: it found the recorded run and trained nothing, logged nothing
    assert [r.info.run_id for r in fold_runs(client) if r.data.tags["fold"] == k] == [recorded.info.run_id]
    assert f"reusing run {recorded.info.run_id}, which recorded it" in result["stderr"]
    statuses = sorted((r.data.tags["fold"], r.info.status) for r in fold_runs(client))
    assert len(statuses) == 4 and [s for _, s in statuses].count("FINISHED") == 3, statuses
