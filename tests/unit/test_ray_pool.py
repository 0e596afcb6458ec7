"""RayPool without a cluster (issue #25). No shared disk: a unit sent to a Ray node runs in a scratch project there,
seeded with the reports it reads and the context the stage shipped (no data read from the project); what it writes
comes back and is written into the project by the stage (the same function the Ray task calls, run here). Outcomes:
a unit that raises comes back as its error, a unit lost with its node past Ray's retries as a crash with the reason,
like a dead local worker (Ray's answers stubbed; tests/integration/test_ray_cluster.py kills a real node)."""

from __future__ import annotations

import dataclasses
import os

import pytest
from helpers.mlflow_store import install_mlflow_store
from helpers.project import copy_project, prepare_project

from dlpipe.io import read_json, write_json
from dlpipe.paths import ProjectPaths
from dlpipe.stages.common import StageContext, model_spec, worker_context

ray_pool = pytest.importorskip("dlpipe.executors.ray_pool")


@dataclasses.dataclass
class Job:
    params: object
    paths: ProjectPaths
    arch: str


def unit(job: Job) -> dict:
    """What a unit does: its context, the tuned spec from the reports, a model and a report written."""
    ctx = worker_context(job.params, job.paths)
    spec = model_spec(job.params, job.paths, job.arch)
    (job.paths.model_dir(job.arch)).mkdir(parents=True)
    (job.paths.model_dir(job.arch) / "weights.bin").write_bytes(b"\x00\x01")
    write_json(job.paths.test_report(job.arch), {"lr": spec.train.lr})
    return {"root": str(job.paths.root), "samples": len(ctx.data.dataset.y), "pid": os.getpid()}


def test_a_unit_runs_in_a_scratch_project_and_its_outputs_come_back(tmp_path, monkeypatch, mlflow_template_db):
    params, paths = prepare_project(copy_project(tmp_path / "p"), {"architectures": ["mlp"]})
    uri = install_mlflow_store(paths.root, mlflow_template_db)
    ctx = StageContext.load(params, paths, tracking=False)
    write_json(paths.tuning_report("mlp"), {"best_params": {"train.lr": 0.0123}})
    (paths.model_dir("mlp")).mkdir(parents=True)
    (paths.model_dir("mlp") / "stale.bin").write_bytes(b"old")
    files = ray_pool.inputs(paths.root)
    assert "reports/tuning/mlp.json" in files

    shipped = ray_pool.Shipped(dataclasses.replace(ctx, experiment_id=None), uri, {})
    monkeypatch.setattr(StageContext, "load", lambda *a, **k: pytest.fail("a unit on a node must not load data"))
    returned = ray_pool.in_scratch(shipped, unit, (Job(params, paths, "mlp"),), files)

    assert returned.result["root"] != str(paths.root)  # it ran elsewhere, and that folder is gone
    assert not os.path.exists(returned.result["root"])
    assert returned.result["samples"] == len(ctx.data.dataset.y)
    assert sorted(returned.files) == ["models/mlp/weights.bin", "reports/test/mlp.json"]  # not the shipped reports
    assert not paths.test_report("mlp").exists()

    ray_pool.write_back(paths.root, returned.files)
    assert read_json(paths.test_report("mlp")) == {"lr": 0.0123}  # the tuned params reached the node
    assert sorted(p.name for p in paths.model_dir("mlp").iterdir()) == ["weights.bin"]  # replaced whole, as locally


class Lost(Exception):
    pass


def pool_answering(monkeypatch, answer: BaseException) -> tuple:
    """A RayPool with one running unit whose ray.get raises `answer`; returns (pool, task, lost-run closings)."""
    from dlpipe.parallel import Task

    pool = ray_pool.RayPool.__new__(ray_pool.RayPool)
    task = Task("cv mlp fold1", unit, ())
    ref = object()
    pool.size, pool._running, pool._ctx, pool._alive_nodes = 2, {ref: task}, None, frozenset({"a", "b"})
    closings = []
    monkeypatch.setattr(ray_pool.ray, "wait", lambda refs, num_returns: ([ref], []))
    monkeypatch.setattr(ray_pool.ray, "get", lambda r: (_ for _ in ()).throw(answer))
    monkeypatch.setattr(pool, "close_lost_runs", lambda: closings.append(True))
    return pool, task, closings


def test_a_unit_lost_with_its_node_comes_back_as_a_crash_with_the_reason(monkeypatch):
    import ray.exceptions

    pool, task, closings = pool_answering(monkeypatch, ray.exceptions.NodeDiedError("node 10.0.0.7 died"))
    done = pool.next_done()
    assert done.task is task and not done.ok and done.error is None
    assert done.crash.startswith("cv mlp fold1: lost on the Ray cluster after 2 retries (NodeDiedError: node 10.0.0.7")
    assert closings == [True]  # the runs the lost node left RUNNING are ended
    assert (pool.busy, pool.free) == (0, 2)  # its slot is free again


def test_a_unit_that_raises_comes_back_as_its_error(monkeypatch):
    import ray.exceptions

    cause = Lost("no such column")
    wrapped = ray.exceptions.RayTaskError("run_unit", "Traceback ...\nLost: no such column", cause)
    pool, _, closings = pool_answering(monkeypatch, wrapped)
    done = pool.next_done()
    assert done.error is cause and done.crash is None
    assert "no such column" in done.details
    assert closings == []


def test_runs_of_a_lost_host_end_killed_or_finished_when_they_had_recorded_their_work(
    tmp_path, monkeypatch, mlflow_template_db
):
    import mlflow
    from mlflow.tracking import MlflowClient

    from dlpipe.tracking.runs import RECORDED_TAG

    uri = install_mlflow_store(copy_project(tmp_path / "p"), mlflow_template_db)
    monkeypatch.setenv("MLFLOW_TRACKING_URI", uri)
    mlflow.set_tracking_uri(uri)
    client = MlflowClient(uri)
    exp = client.create_experiment("lost")
    owner = {"dlpipe.host": "gone", "dlpipe.pid": "4242"}
    midway = client.create_run(exp, tags=owner).info.run_id
    recorded = client.create_run(exp, tags={**owner, RECORDED_TAG: "true"}).info.run_id
    elsewhere = client.create_run(exp, tags={**owner, "dlpipe.host": "alive"}).info.run_id
    nodes = [{"NodeManagerHostname": "gone", "Alive": False}, {"NodeManagerHostname": "alive", "Alive": True}]
    monkeypatch.setattr(ray_pool.ray, "nodes", lambda: nodes)

    assert ray_pool.close_runs_of_lost_hosts(exp) == {midway: "KILLED", recorded: "FINISHED"}
    assert "Ray node on gone was lost" in client.get_run(midway).data.tags["dlpipe.killed_reason"]
    assert "after it recorded its work" in client.get_run(recorded).data.tags["dlpipe.closed_reason"]
    assert client.get_run(elsewhere).info.status == "RUNNING"  # its host still has a live node
