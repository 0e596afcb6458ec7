"""The baselines stage killed (SIGKILL, a real process) after some baselines had finished: the rerun reuses their
finished MLflow runs (as the cv stage reuses finished folds) and fits only the rest."""

from __future__ import annotations

import contextlib
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
from helpers.mlflow_store import project_client
from helpers.processes import subprocess_env
from helpers.project import prepare_project

from dlpipe.io import read_json
from dlpipe.paths import ProjectPaths

pytestmark = pytest.mark.slow

MODELS = ["logreg", "knn", "random_forest", "svc"]
EXPERIMENT = "dlpipe/digits"
TIMEOUT = 300


def start(project: Path, log: Path) -> subprocess.Popen:
    env = subprocess_env(project)
    with open(log, "ab") as out:
        return subprocess.Popen(
            [sys.executable, "pipelines/baselines.py"], cwd=project, env=env, stdout=out, stderr=subprocess.STDOUT
        )


def baseline_runs(client, status: str | None = None) -> list:
    exp = client.get_experiment_by_name(EXPERIMENT)
    if exp is None:
        return []
    runs = client.search_runs([exp.experiment_id], "tags.stage = 'baselines'", max_results=1000)
    return [r for r in runs if "baseline" in r.data.tags and (status is None or r.info.status == status)]


def test_a_killed_baselines_stage_reruns_only_the_baselines_that_had_not_finished(project, mlflow_store, tmp_path):
    prepare_project(project, {"data": {"limit": 900}, "baselines": {"models": MODELS}})
    client = project_client(project)
    log = tmp_path / "baselines.log"
    proc = start(project, log)
    deadline = time.monotonic() + TIMEOUT
    finished: dict[str, str] = {}
    while not finished and time.monotonic() < deadline:
        assert proc.poll() is None, f"the stage ended before the kill:\n{log.read_text()[-3000:]}"
        with contextlib.suppress(Exception):  # the store is being set up by the stage
            finished = {r.data.tags["baseline"]: r.info.run_id for r in baseline_runs(client, "FINISHED")}
        time.sleep(0.05)
    os.kill(proc.pid, signal.SIGKILL)
    assert proc.wait(timeout=60) == -signal.SIGKILL
    finished = {r.data.tags["baseline"]: r.info.run_id for r in baseline_runs(client, "FINISHED")}
    assert finished and set(finished) < set(MODELS), finished  # killed between two baselines
    assert not ProjectPaths(project).baselines_report.exists()

    rerun = start(project, log)
    assert rerun.wait(timeout=TIMEOUT) == 0, log.read_text()[-3000:]
    report = read_json(ProjectPaths(project).baselines_report)
    assert list(report) == MODELS
    after: dict[str, list[str]] = {}
    for r in baseline_runs(client, "FINISHED"):
        after.setdefault(r.data.tags["baseline"], []).append(r.info.run_id)
    assert {name: after[name] for name in finished} == {name: [run] for name, run in finished.items()}  # reused
    assert all(len(after[name]) == 1 for name in MODELS), after  # each baseline fitted once
    for name in finished:
        assert f"baseline {name}: reusing its finished run {finished[name]}" in log.read_text()
    assert not [r.info.run_id for r in baseline_runs(client) if r.info.status == "RUNNING"]
