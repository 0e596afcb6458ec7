"""Tuning across machines: a real PostgreSQL server on 127.0.0.1 as the Optuna storage, two worker processes of the
tune stage on one study, then a `dlpipe tune-worker` from a second project copy (another machine) joining it.

Needs Debian's `postgresql` package (initdb/pg_ctl under /usr/lib/postgresql/<version>/bin): the `postgres` marker
skips the test where it is absent, and fails it in CI (DLPIPE_REQUIRE=postgres), where .ci/run installs it.
The server (tests/helpers/servers.py) refuses to run as root, so as root it runs as the `postgres` user."""

from __future__ import annotations

import json
from collections.abc import Iterator

import optuna
import pytest
from helpers import servers
from helpers.mlflow_store import install_mlflow_store
from helpers.project import copy_project
from mlflow.tracking import MlflowClient
from test_tuning import PLAIN, children, prepared, tune_parents

from dlpipe import cli
from dlpipe.io import read_json
from dlpipe.stages import study as study_stage
from dlpipe.tuning import study as S

pytestmark = [pytest.mark.slow, pytest.mark.postgres]  # absent binaries: skipped here, failed in CI

DB = "dlpipe"
PASSWORD = "s3cret-pw"  # trust auth ignores it; the report and MLflow must not show it


@pytest.fixture(scope="module")
def postgres_url() -> Iterator[str]:
    """A throwaway PostgreSQL cluster on a free loopback port with database `dlpipe`; stopped and removed after."""
    with servers.postgres(DB) as pg:
        yield pg.url(DB, PASSWORD)


def test_workers_on_two_machines_share_one_study_in_postgresql(
    project, mlflow_store, postgres_url, tmp_path, mlflow_template_db, monkeypatch
):
    settings = {
        **PLAIN,
        "n_trials": 4,
        "workers": 2,
        "storage": postgres_url,
        "space": {"train.lr": {"type": "float", "low": 1e-3, "high": 0.1, "log": True}},
    }
    params, paths = prepared(project, settings, architectures=["perceptron"], trainer={"workers": 2})
    study_stage.run(params, paths)  # the study stage's two worker processes share the study in PostgreSQL
    report = read_json(paths.tuning_report("perceptron"))
    assert report["finished"] == 4 and report["stopped"] == "budget"
    assert report["storage"] == postgres_url.replace(PASSWORD, "***")
    assert PASSWORD not in json.dumps(report)
    study = optuna.load_study(study_name=report["study_name"], storage=S.with_driver(postgres_url))
    done = [t for t in study.trials if t.state in S.FINISHED]
    assert len(done) == 4
    numbers = [t.number for t in study.trials]
    assert len(numbers) == len(set(numbers))
    workers = {t.user_attrs["worker"] for t in done}
    assert {w.rsplit(":", 1)[1] for w in workers} == {"w0", "w1"}, workers
    client = MlflowClient(mlflow_store)
    (parent,) = tune_parents(client, "perceptron")
    assert PASSWORD not in json.dumps(parent.data.params)
    assert sorted(int(r.data.tags["trial"]) for r in children(client, parent.info.run_id)) == [t.number for t in done]

    # another machine: its own project copy (same params, its own data preparation and MLflow store) joins the
    # study by name with `dlpipe tune-worker` and runs only what a raised budget adds
    other = copy_project(tmp_path / "other-machine")
    other_uri = install_mlflow_store(other, mlflow_template_db)
    monkeypatch.setenv("DLPIPE_ROOT", str(other))
    monkeypatch.setenv("MLFLOW_TRACKING_URI", other_uri)  # mlflow.set_tracking_uri exported this process's first store
    monkeypatch.chdir(other)
    prepared(other, {**settings, "n_trials": 5})
    assert cli.main(["tune-worker", "--arch", "perceptron", "--worker-index", "7"]) == 0
    study = optuna.load_study(study_name=report["study_name"], storage=S.with_driver(postgres_url))
    done = [t for t in study.trials if t.state in S.FINISHED]
    assert len(done) == 5 and done[-1].user_attrs["worker"].endswith(":w7")
    (own_parent,) = tune_parents(MlflowClient(other_uri), "perceptron")  # its own store: a parent of its own
    assert own_parent.data.tags["study_name"] == report["study_name"] and own_parent.info.status == "FINISHED"
    (run,) = children(MlflowClient(other_uri), own_parent.info.run_id)
    assert run.data.tags["trial"] == str(done[-1].number) and run.data.tags["state"] == "COMPLETE"
