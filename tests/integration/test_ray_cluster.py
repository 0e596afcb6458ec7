"""The study's units on a Ray cluster (issue #25): a two-node local cluster (`ray.cluster_utils.Cluster`, one CPU per
node, each node its own raylet and workers) runs the study stage's folds and final fit, logging to an `mlflow
server` (artifacts proxied by it: the units share no disk with the stage), while its worker node is killed in the
middle of a fold. The fold is retried on the other node, and every number equals the local pool's for the same
seed; no run is left RUNNING, the lost attempt's run ends KILLED.

One cluster run serves both tests (a cluster study costs most of a minute on 2 cores): the retried fold must give
the local pool's metrics too. The cluster runs in a network namespace with only `lo` up (`unshare --net`), so
nothing it starts can reach beyond loopback (Ray binds to the interface address and probes a public resolver by
default); the script reports every interface and socket it saw, and they are checked to be loopback only. The
server's backend is a SQLite file (a PostgreSQL backend is not tested here); tuning on Ray, which needs Optuna on
PostgreSQL, is not tested either.
"""

from __future__ import annotations

import json
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
from helpers.capabilities import LOOPBACK_NETNS
from helpers.mlflow_store import install_mlflow_store
from helpers.processes import subprocess_env
from helpers.project import SMALL_STUDY, copy_project, deep_merge, write_params
from mlflow.tracking import MlflowClient

from dlpipe.config import load_params
from dlpipe.io import read_json
from dlpipe.paths import ProjectPaths
from dlpipe.stages import fetch, prepare
from dlpipe.tracking.runs import FOLD_REPORT

pytestmark = [pytest.mark.slow, pytest.mark.loopback_netns]

LOOPBACK = ("::1", "::ffff:127.0.0.1", "*", "0.0.0.0", "::")  # and 127.*; the last three: listening on every address
SCRIPT = Path(__file__).with_name("ray_cluster_script.py")
STUDY = deep_merge(
    SMALL_STUDY,
    {
        "data": {"limit": 300, "folds": 2},
        "architectures": ["mlp"],
        "models": {"mlp": {"hidden": [32]}},
        "train": {"max_epochs": 3, "lr": 0.01},
        "tune": {"enabled": False},
        "mlflow": {"log_models": False},
    },
)


def prepared(root: Path, executor: str) -> ProjectPaths:
    project = copy_project(root)
    write_params(project, deep_merge(STUDY, {"study": {"executor": executor}, "trainer": {"workers": 1}}))
    params, paths = load_params(project / "params.yaml"), ProjectPaths(project)
    fetch.run(params, paths)
    prepare.run(params, paths)
    return paths


@pytest.fixture(scope="module")
def local(tmp_path_factory, mlflow_template_db) -> ProjectPaths:
    """The study on the local pool."""
    paths = prepared(tmp_path_factory.mktemp("local"), "local")
    install_mlflow_store(paths.root, mlflow_template_db)
    proc = subprocess.run(
        [sys.executable, "pipelines/study.py"],
        cwd=paths.root,
        env=subprocess_env(paths.root),
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert proc.returncode == 0, proc.stderr[-3000:]
    return paths


@pytest.fixture(scope="module")
def cluster(tmp_path_factory, mlflow_template_db) -> tuple[ProjectPaths, dict, MlflowClient]:
    """The same study on a two-node Ray cluster whose worker node is killed as soon as a fold runs on it; returns
    the project, the script's report and a client of the (stopped) server's backend store."""
    paths = prepared(tmp_path_factory.mktemp("ray"), "ray")
    server = tmp_path_factory.mktemp("server")
    shutil.copy2(mlflow_template_db, server / "srv.db")
    out = paths.root / "cluster.json"
    cmd = [*LOOPBACK_NETNS, sys.executable, str(SCRIPT), str(paths.root), str(out), str(server), "--kill-node"]
    proc = subprocess.run(cmd, env=subprocess_env(paths.root), capture_output=True, text=True, timeout=400)
    assert proc.returncode == 0, proc.stderr[-3000:]
    result = json.loads(out.read_text())
    assert result["returncode"] == 0, result["stderr"]
    return paths, result, MlflowClient(tracking_uri=f"sqlite:///{server / 'srv.db'}")


def test_nothing_the_cluster_started_left_loopback(cluster):
    _, result, _ = cluster
    assert "Ray cluster of 2 node(s), 2 unit(s) at once" in result["stderr"]
    assert all(" lo " in line for line in result["interfaces"]), result["interfaces"]
    assert result["sockets"], "no socket seen"
    for sock in result["sockets"]:  # local and peer address of every socket: loopback (or unbound) only
        for address in sock.split():
            host = address.rsplit(":", 1)[0].strip("[]")
            assert host in LOOPBACK or host.startswith("127."), sock


def test_ray_cluster_folds_and_test_metrics_equal_the_local_pools(local, cluster):
    there, _, _ = cluster
    cv = [read_json(p.cv_report("mlp")) for p in (local, there)]
    assert sorted(cv[1]["per_fold"]) == ["fold_0", "fold_1"]
    assert cv[0]["per_fold"] == cv[1]["per_fold"]  # every fold's metrics, exactly (the retried one too)
    assert cv[0]["per_fold_per_class"] == cv[1]["per_fold_per_class"]
    assert cv[0]["params_hash"] == cv[1]["params_hash"]
    assert local.oof_predictions("mlp").read_text() == there.oof_predictions("mlp").read_text()
    test = [read_json(p.test_report("mlp")) for p in (local, there)]  # written back from the node that trained
    assert test[1]["accuracy"] > 0.5
    for key in ("accuracy", "f1_macro", "params_hash"):
        assert test[0][key] == test[1][key], key
    assert (there.model_dir("mlp") / "params.json").is_file()
    assert local.test_predictions("mlp").read_text() == there.test_predictions("mlp").read_text()


def logged_fold_report(client: MlflowClient, run_id: str) -> bool:
    """Whether the run logged a whole fold report (read through the server, as the sweep reads it)."""
    try:
        return isinstance(json.loads(Path(client.download_artifacts(run_id, FOLD_REPORT)).read_text()), dict)
    except Exception:  # no report, or a torn one
        return False


def test_a_node_killed_mid_fold_costs_only_that_attempt(cluster):
    paths, result, client = cluster
    assert len(result["killed"]) == 1, "the worker node was not killed in the middle of a fold"
    experiments = client.search_experiments()
    assert [e.artifact_location.split(":")[0] for e in experiments if e.name != "Default"] == ["mlflow-artifacts"]
    runs = client.search_runs([e.experiment_id for e in experiments], "")
    assert [r.info.run_name for r in runs if r.info.status == "RUNNING"] == []
    lost = client.get_run(result["killed"][0])
    # a kill that lands after the fold logged its whole report ends the run FINISHED (its work was recorded, as the
    # sweep of dead owners decides for the local pool); before that, KILLED
    ended = "FINISHED" if logged_fold_report(client, lost.info.run_id) else "KILLED"
    assert lost.info.status == ended, lost.data.tags
    folds = [r for r in runs if r.data.tags.get("fold")]
    assert sorted((r.data.tags["fold"], r.info.status) for r in folds) == sorted(
        [("0", "FINISHED"), ("1", "FINISHED"), (lost.data.tags["fold"], ended)]
    )
    assert not (paths.root / "mlruns").exists()  # nothing was logged beside the project: all went to the server
