"""No shared disk (issue #25): a unit sent to a Ray node runs in a scratch project there, seeded with the reports it
reads and the context the stage shipped (no data read from the project); what it writes comes back and is written
into the project by the stage. Run here without a cluster: the same function the Ray task calls."""

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
