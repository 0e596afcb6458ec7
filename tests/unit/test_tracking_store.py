"""tracking.store (where MLflow records, also from a `dvc exp run --temp` copy) and tracking.runs (runs that end
honestly, flattened params, finding parents and finished children), checked through MlflowClient."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import mlflow
import pytest
from helpers.mlflow_store import install_mlflow_store
from mlflow.tracking import MlflowClient
from pydantic import BaseModel

from dlpipe.tracking import runs, store
from dlpipe.tracking.runs import finished_child_runs, is_global_zero, latest_run, log_params, standard_tags, tracked_run

TEMP = Path(".dvc") / "tmp" / "exps" / "tmpabc123"


# --------------------------------------------------------------------------------------------------- store


def test_project_root_of_a_plain_project_is_itself(tmp_path: Path) -> None:
    assert store.project_root(tmp_path / "proj") == (tmp_path / "proj").resolve()
    assert store.project_root(tmp_path / "proj" / ".dvc") == (tmp_path / "proj" / ".dvc").resolve()


def test_project_root_of_a_dvc_temp_copy_is_the_original_project(tmp_path: Path) -> None:
    proj = tmp_path / "proj"
    assert store.project_root(proj / TEMP) == proj.resolve()
    assert store.project_root(proj / TEMP / "pipelines") == proj.resolve()  # anywhere inside the copy


@pytest.mark.parametrize("inner", [".dvc/tmp/other/tmpabc", "dvc/tmp/exps/tmpabc", ".dvc/exps/tmpabc", "tmp/exps/x"])
def test_project_root_ignores_lookalike_paths(tmp_path: Path, inner: str) -> None:
    path = tmp_path / "proj" / inner
    assert store.project_root(path) == path.resolve()


def test_project_root_resolves_relative_paths(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    copy = tmp_path / "proj" / TEMP
    copy.mkdir(parents=True)
    monkeypatch.chdir(copy)
    assert store.project_root(Path(".")) == (tmp_path / "proj").resolve()


def test_store_and_artifacts_of_a_temp_copy_live_in_the_original_project(tmp_path: Path) -> None:
    proj = (tmp_path / "proj").resolve()
    assert store.local_store_uri(proj / TEMP) == f"sqlite:///{proj}/mlruns/mlflow.db"
    assert store.local_store_uri(proj) == store.local_store_uri(proj / TEMP)
    location = store.artifact_location(proj / TEMP, "dlpipe/digits")
    assert location == (proj / "mlruns" / "artifacts" / "dlpipe_digits").as_uri()


def test_resolve_tracking_uri_precedence_env_then_params_then_local(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    proj = tmp_path / "proj"
    local = f"sqlite:///{proj.resolve()}/mlruns/mlflow.db"
    monkeypatch.setenv("MLFLOW_TRACKING_URI", "http://127.0.0.1:5999")
    assert store.resolve_tracking_uri("http://127.0.0.1:5000", proj) == "http://127.0.0.1:5999"
    assert store.resolve_tracking_uri(None, proj) == "http://127.0.0.1:5999"
    monkeypatch.setenv("MLFLOW_TRACKING_URI", "")  # empty counts as unset
    assert store.resolve_tracking_uri("http://127.0.0.1:5000", proj) == "http://127.0.0.1:5000"
    monkeypatch.delenv("MLFLOW_TRACKING_URI")
    assert store.resolve_tracking_uri("http://127.0.0.1:5000", proj) == "http://127.0.0.1:5000"
    assert store.resolve_tracking_uri(None, proj) == local
    assert store.resolve_tracking_uri(None, proj / TEMP) == local


@pytest.fixture
def local_store(tmp_path: Path, mlflow_template_db: Path, monkeypatch: pytest.MonkeyPatch):
    """A project with its own (template) store; MLflow configured on it. Returns (root, client, experiment_id)."""
    monkeypatch.delenv("MLFLOW_TRACKING_URI", raising=False)
    root = tmp_path / "proj"
    uri = install_mlflow_store(root, mlflow_template_db)
    exp_id = store.configure(None, root, "unit/tracking")
    yield root, MlflowClient(tracking_uri=uri), exp_id
    while mlflow.active_run():  # never leak an active run into the next test
        mlflow.end_run("FAILED")


def test_configure_from_a_temp_copy_uses_the_original_store(
    tmp_path: Path, mlflow_template_db: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.delenv("MLFLOW_TRACKING_URI", raising=False)
    proj = (tmp_path / "proj").resolve()
    uri = install_mlflow_store(proj, mlflow_template_db)
    copy = proj / TEMP
    copy.mkdir(parents=True)
    exp_id = store.configure(None, copy, "dlpipe/digits")
    assert mlflow.get_tracking_uri() == uri
    exp = MlflowClient(tracking_uri=uri).get_experiment(exp_id)
    assert exp.name == "dlpipe/digits"
    assert exp.artifact_location == (proj / "mlruns" / "artifacts" / "dlpipe_digits").as_uri()
    assert not (copy / "mlruns").exists()
    assert store.configure(None, proj, "dlpipe/digits") == exp_id  # the same experiment from the project itself


def test_configure_declares_a_model_training_experiment(local_store) -> None:
    """mlflow.experimentKind = custom_model_development: on a new experiment, and on one made before the tag."""
    root, client, exp_id = local_store
    assert client.get_experiment(exp_id).tags["mlflow.experimentKind"] == "custom_model_development"
    old = client.create_experiment("unit/untagged")
    assert "mlflow.experimentKind" not in client.get_experiment(old).tags
    assert store.configure(None, root, "unit/untagged") == old
    assert client.get_experiment(old).tags["mlflow.experimentKind"] == "custom_model_development"


def test_configure_follows_the_environment(tmp_path: Path, mlflow_template_db: Path, monkeypatch) -> None:
    other = install_mlflow_store(tmp_path / "elsewhere", mlflow_template_db)
    install_mlflow_store(tmp_path / "proj", mlflow_template_db)
    monkeypatch.setenv("MLFLOW_TRACKING_URI", other)
    ignored = tmp_path / "ignored.db"
    exp_id = store.configure(f"sqlite:///{ignored}", tmp_path / "proj", "env/exp")
    assert mlflow.get_tracking_uri() == other
    assert MlflowClient(tracking_uri=other).get_experiment(exp_id).name == "env/exp"
    own = MlflowClient(tracking_uri=f"sqlite:///{tmp_path / 'proj' / 'mlruns' / 'mlflow.db'}")
    assert own.get_experiment_by_name("env/exp") is None
    assert not ignored.exists()


# --------------------------------------------------------------------------------------------------- runs ending


def status(client: MlflowClient, run_id: str) -> str:
    return client.get_run(run_id).info.status


def test_tracked_run_ends_finished(local_store) -> None:
    _, client, exp_id = local_store
    with tracked_run(run_name="ok") as run:
        rid = run.info.run_id
        assert status(client, rid) == "RUNNING"
    assert status(client, rid) == "FINISHED"
    assert client.get_run(rid).info.experiment_id == exp_id
    assert mlflow.active_run() is None


def test_tracked_run_ends_failed_on_an_exception(local_store) -> None:
    _, client, _ = local_store
    with pytest.raises(RuntimeError, match="boom"), tracked_run(run_name="bad") as run:
        rid = run.info.run_id
        raise RuntimeError("boom")
    assert status(client, rid) == "FAILED"
    assert mlflow.active_run() is None


def test_tracked_run_ends_killed_on_keyboard_interrupt_nested(local_store) -> None:
    _, client, _ = local_store
    with (
        pytest.raises(KeyboardInterrupt),
        tracked_run(run_name="parent") as parent,
        tracked_run(run_name="child", nested=True) as child,
    ):
        raise KeyboardInterrupt
    assert status(client, parent.info.run_id) == "KILLED"
    assert status(client, child.info.run_id) == "KILLED"
    assert client.get_run(child.info.run_id).data.tags["mlflow.parentRunId"] == parent.info.run_id
    assert mlflow.active_run() is None


def lightning_style_interrupt() -> None:
    """What lightning.pytorch.trainer.call._call_and_handle_interrupt does with a Ctrl-C inside fit."""
    try:
        raise KeyboardInterrupt
    except KeyboardInterrupt:
        sys.exit(1)


def test_interrupt_that_lightning_turned_into_system_exit_still_ends_killed(local_store) -> None:
    _, client, _ = local_store
    with (
        pytest.raises(KeyboardInterrupt),
        tracked_run(run_name="parent") as parent,
        tracked_run(run_name="child", nested=True) as child,
    ):
        lightning_style_interrupt()
    assert status(client, child.info.run_id) == "KILLED"
    assert status(client, parent.info.run_id) == "KILLED"


def test_plain_system_exit_is_a_failure_and_stays_a_system_exit(local_store) -> None:
    _, client, _ = local_store
    with pytest.raises(SystemExit), tracked_run(run_name="exit") as run:
        sys.exit(3)
    assert status(client, run.info.run_id) == "FAILED"


def test_real_lightning_interrupt_in_fit_ends_the_run_killed(local_store, keep_signal_handlers) -> None:
    import lightning as L
    import torch
    from lightning.pytorch.callbacks import Callback

    class Tiny(L.LightningModule):
        def __init__(self) -> None:
            super().__init__()
            self.layer = torch.nn.Linear(2, 1)

        def training_step(self, batch, _):
            return self.layer(batch[0]).pow(2).mean()

        def configure_optimizers(self):
            return torch.optim.SGD(self.parameters(), lr=0.1)

    class CtrlC(Callback):
        def on_train_batch_end(self, *args) -> None:
            raise KeyboardInterrupt

    data = torch.utils.data.DataLoader(torch.utils.data.TensorDataset(torch.zeros(4, 2)), batch_size=2)
    trainer = L.Trainer(
        max_epochs=1,
        callbacks=[CtrlC()],
        logger=False,
        enable_checkpointing=False,
        enable_progress_bar=False,
        enable_model_summary=False,
        accelerator="cpu",
    )
    _, client, _ = local_store
    with pytest.raises(KeyboardInterrupt), tracked_run(run_name="fit") as run:
        trainer.fit(Tiny(), data)
    assert status(client, run.info.run_id) == "KILLED"


# --------------------------------------------------------------------------------------------------- params, tags


class Inner(BaseModel):
    lr: float = 0.01
    hidden: list[int] = [32, 16]
    extra: dict = {"x": None}


def test_log_params_flattens_nested_models_and_dicts(local_store) -> None:
    _, client, _ = local_store
    with tracked_run(run_name="params") as run:
        log_params(run.info.run_id, {"arch": "mlp", "train": Inner(), "data": {"folds": 3, "csv": {"path": None}}})
    params = client.get_run(run.info.run_id).data.params
    assert params == {
        "arch": "mlp",
        "train.lr": "0.01",
        "train.hidden": "[32, 16]",
        "train.extra.x": "null",
        "data.folds": "3",
        "data.csv.path": "null",
    }


def test_log_params_in_batches_over_mlflows_limit(local_store) -> None:
    _, client, _ = local_store
    flat = {f"p{i:03d}": i for i in range(250)}
    with tracked_run(run_name="many") as run:
        log_params(run.info.run_id, flat)
    assert client.get_run(run.info.run_id).data.params == {k: str(v) for k, v in flat.items()}


def test_standard_tags_and_rank_zero(monkeypatch: pytest.MonkeyPatch) -> None:
    tags = standard_tags("cv", "mlp", "abc", "digits", "d1g", "c0ffee")
    assert tags["stage"] == "cv" and tags["architecture"] == "mlp" and tags["params_hash"] == "abc"
    assert tags["dataset"] == "digits" and tags["dataset_hash"] == "d1g" and tags["git_commit"] == "c0ffee"
    assert "architecture" not in standard_tags("select", None, "abc", "digits", "d1g", "c0ffee")
    for var in ("RANK", "LOCAL_RANK", "NODE_RANK"):
        monkeypatch.delenv(var, raising=False)
    assert is_global_zero()
    monkeypatch.setenv("RANK", "1")
    assert not is_global_zero()
    monkeypatch.setenv("RANK", "0")
    monkeypatch.setenv("NODE_RANK", "1")
    assert not is_global_zero()


# --------------------------------------------------------------------------------------------------- finding runs


def make_run(client: MlflowClient, exp_id: str, start: int, status: str = "FINISHED", **tags: str) -> str:
    run = client.create_run(exp_id, start_time=start, tags=tags)
    client.set_terminated(run.info.run_id, status)
    return run.info.run_id


def test_latest_run_is_the_newest_top_level_run_even_behind_many_children(local_store, monkeypatch) -> None:
    _, client, exp_id = local_store
    tags = {"stage": "cv", "architecture": "mlp", "params_hash": "h1"}
    make_run(client, exp_id, 1000, **tags)  # an older parent
    parent = make_run(client, exp_id, 2000, "FAILED", **tags)
    for i in range(5):  # children carry the parent's tags and started later
        make_run(client, exp_id, 2001 + i, **tags, fold=str(i), **{"mlflow.parentRunId": parent})
    make_run(client, exp_id, 9000, stage="cv", architecture="mlp", params_hash="other")
    monkeypatch.setattr(runs, "SEARCH_PAGE", 2)  # the parent is on the third page
    found = latest_run(exp_id, **tags)
    assert found is not None and found.info.run_id == parent
    assert latest_run(exp_id, stage="cv", architecture="cnn") is None


def test_finished_child_runs_only_finished_children_with_the_tags(local_store) -> None:
    _, client, exp_id = local_store
    parent = make_run(client, exp_id, 1000, stage="cv")
    child = {"mlflow.parentRunId": parent, "stage": "cv", "params_hash": "h1"}
    good = {make_run(client, exp_id, 1001, **child, fold="0"), make_run(client, exp_id, 1002, **child, fold="1")}
    make_run(client, exp_id, 1003, "FAILED", **child, fold="2")
    make_run(client, exp_id, 1004, "KILLED", **child, fold="2")
    make_run(client, exp_id, 1005, **{**child, "params_hash": "h2"}, fold="2")
    other_parent = make_run(client, exp_id, 1006, stage="cv")
    make_run(client, exp_id, 1007, **{**child, "mlflow.parentRunId": other_parent}, fold="2")
    found = finished_child_runs(exp_id, parent, stage="cv", params_hash="h1")
    assert {r.info.run_id for r in found} == good


def test_configure_twice_in_one_process_follows_each_project(tmp_path, monkeypatch):
    """mlflow.set_tracking_uri exports MLFLOW_TRACKING_URI; that must not pin the second project to the first."""
    monkeypatch.delenv("MLFLOW_TRACKING_URI", raising=False)
    first, second = tmp_path / "first", tmp_path / "second"
    for root in (first, second):
        root.mkdir()
        store.configure(None, root, "exp")
        assert mlflow.get_tracking_uri() == store.local_store_uri(root)
    assert (second / "mlruns" / "mlflow.db").is_file()


def test_a_child_process_takes_the_inherited_tracking_uri_as_set_for_it(tmp_path, monkeypatch):
    """In the process that configured, MLflow's export is dlpipe's own; a child inherits it as its setting."""
    monkeypatch.delenv("MLFLOW_TRACKING_URI", raising=False)
    monkeypatch.delenv(store.CONFIGURED_ENV, raising=False)
    first, second = tmp_path / "first", tmp_path / "second"
    first.mkdir()
    store.configure(None, first, "exp")
    assert os.environ["MLFLOW_TRACKING_URI"] == store.local_store_uri(first)  # exported by mlflow.set_tracking_uri
    assert store.resolve_tracking_uri(None, second) == store.local_store_uri(second)  # here: ours, not pinned
    code = "import sys; from pathlib import Path; from dlpipe.tracking import store; "
    code += "print(store.resolve_tracking_uri(None, Path(sys.argv[1])))"
    out = subprocess.run([sys.executable, "-c", code, str(second)], capture_output=True, text=True, check=True)
    assert out.stdout.strip() == store.local_store_uri(first)


def test_user_set_tracking_uri_wins_on_every_call(tmp_path, monkeypatch):
    uri = f"sqlite:///{tmp_path / 'user.db'}"
    monkeypatch.setenv("MLFLOW_TRACKING_URI", uri)
    for root in (tmp_path / "a", tmp_path / "b"):
        root.mkdir()
        store.configure(None, root, "exp")
        assert mlflow.get_tracking_uri() == uri
    assert not (tmp_path / "a" / "mlruns" / "mlflow.db").exists()


# --------------------------------------------------------------------------------------------------- connect


def test_connect_refuses_a_missing_local_store_and_creates_nothing(tmp_path, monkeypatch):
    monkeypatch.delenv("MLFLOW_TRACKING_URI", raising=False)
    root = tmp_path / "proj"
    root.mkdir()
    with pytest.raises(store.NoStoreError) as info:
        store.connect(None, root, "dlpipe promote")
    assert info.value.exit_code == 2
    assert str(info.value).startswith(f"no MLflow store at {root.resolve()}/mlruns/mlflow.db: dlpipe promote reads")
    assert list(root.iterdir()) == []
    configured = tmp_path / "elsewhere.db"  # params' mlflow.tracking_uri, also checked
    with pytest.raises(store.NoStoreError, match=r"elsewhere\.db"):
        store.connect(f"sqlite:///{configured}", root)
    assert not configured.exists()


def test_connect_uses_an_existing_store_without_adding_to_it(tmp_path, mlflow_template_db, monkeypatch):
    monkeypatch.delenv("MLFLOW_TRACKING_URI", raising=False)
    root = tmp_path / "proj"
    uri = install_mlflow_store(root, mlflow_template_db)
    assert store.connect(None, root) == uri
    assert mlflow.get_tracking_uri() == uri and mlflow.get_registry_uri() == uri
    assert [e.name for e in MlflowClient(tracking_uri=uri).search_experiments()] == ["Default"]
    server = "http://127.0.0.1:5999"  # a server is not probed: its own errors say what is wrong
    assert store.connect(server, root) == server


def test_local_db_of_store_uris():
    assert store.local_db("sqlite:////abs/mlruns/mlflow.db") == Path("/abs/mlruns/mlflow.db")
    assert store.local_db("sqlite:///rel.db") == Path("rel.db")
    assert store.local_db("sqlite:///:memory:") is None
    assert store.local_db("http://127.0.0.1:5000") is None
    assert store.local_db("postgresql://u@h/db") is None


# --------------------------------------------------------------------------------------------------- relocation


def tree_hashes(folder: Path) -> dict[str, str]:
    """Every file under `folder` (relative path -> sha256): a byte-for-byte picture of it."""
    from dlpipe.io import sha256_file

    return {str(p.relative_to(folder)): sha256_file(p) for p in sorted(folder.rglob("*")) if p.is_file()}


def stored_locations(db: Path) -> dict[str, list[str]]:
    """The values of every storage column of `db` (STORE_COLUMNS), per `table.column`."""
    import sqlite3

    out = {}
    with sqlite3.connect(db) as con:
        for table, column, keys in store.STORAGE_COLUMNS:
            where = f" WHERE key IN ({', '.join(repr(k) for k in keys)})" if keys else ""
            out[f"{table}.{column}"] = sorted(str(r[0]) for r in con.execute(f"SELECT {column} FROM {table}{where}"))
    return out


@pytest.fixture
def recorded_project(tmp_path: Path, mlflow_template_db: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    """A project whose store holds an experiment, a run with an artifact, a logged model, a registered version and
    two trace tags (one naming an artifact location), all under the project's own mlruns/."""
    import sqlite3

    monkeypatch.delenv("MLFLOW_TRACKING_URI", raising=False)
    root = (tmp_path / "orig").resolve()
    uri = install_mlflow_store(root, mlflow_template_db)
    exp_id = store.configure(None, root, "dlpipe/digits")
    client = MlflowClient(tracking_uri=uri)
    run = client.create_run(exp_id, tags={"mlflow.source.name": str(root / "pipelines" / "cv.py")})
    client.log_text(run.info.run_id, "fold scores", "cv_summary.txt")
    client.set_terminated(run.info.run_id)
    model = client.create_logged_model(exp_id, name="perceptron", source_run_id=run.info.run_id)
    client.log_model_artifact(model.model_id, str(root / "mlruns" / "mlflow.db"))  # any file will do
    client.create_registered_model("dlpipe-digits")
    client.create_model_version("dlpipe-digits", f"models:/{model.model_id}", run.info.run_id, model_id=model.model_id)
    with sqlite3.connect(root / "mlruns" / "mlflow.db") as con:  # traces: only their tags hold a location
        trace_location = f"{client.get_experiment(exp_id).artifact_location}/traces/tr-1/artifacts"
        con.execute(
            "INSERT INTO trace_tags (key, value, request_id) VALUES ('mlflow.artifactLocation', ?, 'tr-1')",
            (trace_location,),
        )
        con.execute("INSERT INTO trace_tags (key, value, request_id) VALUES ('note', ?, 'tr-1')", (trace_location,))
    return root


def test_a_copied_store_is_rewritten_to_the_copy_and_the_original_is_untouched(
    recorded_project: Path, tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    import shutil

    original = recorded_project
    before = tree_hashes(original)
    copy = (tmp_path / "a copy (moved)").resolve()  # a space and brackets: percent-encoded in file URIs
    shutil.copytree(original, copy)
    with caplog.at_level("WARNING", logger="dlpipe.tracking.store"):
        exp_id = store.configure(None, copy, "dlpipe/digits")
    assert [r.getMessage() for r in caplog.records] == [
        f"MLflow store {copy}/mlruns/mlflow.db: the project was moved or copied; artifact paths under "
        f"{original}/mlruns now point to {copy}/mlruns (5 rows rewritten)"
    ]
    stored = stored_locations(copy / "mlruns" / "mlflow.db")
    own = (copy / "mlruns").as_uri()
    for column in (
        "experiments.artifact_location",
        "runs.artifact_uri",
        "logged_models.artifact_location",
        "model_versions.storage_location",
        "trace_tags.value",
    ):
        values = [v for v in stored[column] if "/mlruns/artifacts/" in v]  # not the template's Default experiment
        assert len(values) == 1 and values[0].startswith(own + "/"), (column, values)
        assert not any(v.startswith((str(original), original.as_uri())) for v in stored[column]), (column, values)
    assert stored["model_versions.source"] == [f"models:/{stored['logged_models.artifact_location'][0].split('/')[-2]}"]
    import sqlite3

    with sqlite3.connect(copy / "mlruns" / "mlflow.db") as con:
        kept = dict(con.execute("SELECT key, value FROM trace_tags"))["note"]  # not a storage tag: left as it was
        source = con.execute("SELECT value FROM tags WHERE key = 'mlflow.source.name'").fetchone()[0]  # provenance
    assert kept.startswith(original.as_uri()) and source == str(original / "pipelines" / "cv.py")

    # reads and writes go to the copy: the run's artifact, the registered model's files, a new artifact
    client = MlflowClient(tracking_uri=store.local_store_uri(copy))
    run = client.search_runs([exp_id])[0]
    assert client.download_artifacts(run.info.run_id, "cv_summary.txt", str(tmp_path)).endswith("cv_summary.txt")
    assert client.get_model_version_download_uri("dlpipe-digits", "1").startswith(own)
    client.log_text(run.info.run_id, "new", "after_the_copy.txt")
    assert len(list((copy / "mlruns" / "artifacts").rglob("after_the_copy.txt"))) == 1
    assert tree_hashes(original) == before
    assert store.relocate(copy) == []  # in place now: nothing to do, nothing logged


def test_a_moved_project_is_relocated_from_its_dvc_temp_copies_and_connect(
    recorded_project: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """`dvc exp run --temp` in a moved project: the temp copy records into the project (relocated), never itself."""
    moved = (tmp_path / "moved").resolve()
    recorded_project.rename(moved)
    temp = moved / TEMP
    temp.mkdir(parents=True)
    store.connect(None, temp, "dlpipe runs")  # connect (read-only commands) relocates as well
    db = moved / "mlruns" / "mlflow.db"
    stored = stored_locations(db)
    assert stored["experiments.artifact_location"][-1] == (moved / "mlruns" / "artifacts" / "dlpipe_digits").as_uri()
    assert not (temp / "mlruns").exists()
    before = tree_hashes(moved / "mlruns")
    assert store.configure(None, temp, "dlpipe/digits")  # the same store from a temp copy: left as it is
    assert tree_hashes(moved / "mlruns") == before
    assert not recorded_project.exists()  # nothing recreated the old location


def test_a_store_in_place_is_not_rewritten_from_a_dvc_temp_copy(recorded_project: Path) -> None:
    before = tree_hashes(recorded_project / "mlruns")
    assert store.relocate(recorded_project / TEMP) == []
    assert store.relocate(recorded_project) == []
    assert tree_hashes(recorded_project / "mlruns") == before


def test_a_hard_linked_copy_is_refused_and_neither_store_changes(recorded_project: Path, tmp_path: Path) -> None:
    import os
    import shutil

    copy = tmp_path / "linked"
    shutil.copytree(recorded_project, copy, copy_function=os.link)  # `cp -al`: both names, one file
    before = tree_hashes(recorded_project)
    with pytest.raises(store.StoreRelocationError) as info:
        store.configure(None, copy, "dlpipe/digits")
    assert info.value.exit_code == 2 and len(str(info.value).splitlines()) == 1
    assert "hard-linked to another file" in str(info.value) and f"cp {copy.resolve()}/mlruns/mlflow.db" in str(
        info.value
    )
    assert tree_hashes(recorded_project) == before


def test_a_shared_mlruns_behind_a_symlink_is_left_alone(recorded_project: Path, tmp_path: Path) -> None:
    other = tmp_path / "other"
    other.mkdir()
    (other / "mlruns").symlink_to(recorded_project / "mlruns")  # two checkouts sharing one store on purpose
    before = tree_hashes(recorded_project / "mlruns")
    assert store.relocate(other) == []
    assert tree_hashes(recorded_project / "mlruns") == before


def test_a_store_named_in_params_is_never_rewritten(recorded_project: Path, tmp_path: Path) -> None:
    import shutil

    elsewhere = tmp_path / "elsewhere"
    shutil.copytree(recorded_project / "mlruns", elsewhere / "mlruns")
    before = tree_hashes(elsewhere)
    project = tmp_path / "proj"
    project.mkdir()
    store.configure(f"sqlite:///{elsewhere / 'mlruns' / 'mlflow.db'}", project, "dlpipe/digits")
    assert tree_hashes(elsewhere) == before  # a shared store keeps the artifact locations it was given


def test_relocate_command(recorded_project: Path, tmp_path: Path, capsys, monkeypatch: pytest.MonkeyPatch) -> None:
    import shutil

    from dlpipe import cli

    copy = (tmp_path / "copy").resolve()
    shutil.copytree(recorded_project, copy)
    monkeypatch.setenv("DLPIPE_ROOT", str(copy))
    assert cli.main(["relocate"]) == 0
    out, _ = capsys.readouterr()
    assert out == (
        f"{copy}/mlruns/mlflow.db: 5 stored artifact paths moved from {recorded_project}/mlruns to {copy}/mlruns\n"
    )
    assert cli.main(["relocate"]) == 0
    assert capsys.readouterr().out == f"{copy}/mlruns/mlflow.db: already records its artifacts under {copy}/mlruns\n"
    monkeypatch.setenv("DLPIPE_ROOT", str(tmp_path / "none"))
    assert cli.main(["relocate"]) == 2
    assert "no MLflow store at" in capsys.readouterr().err


def test_git_dirty_ignores_the_pipelines_own_outputs(tmp_path: Path) -> None:
    """The reports a stage rewrites (committed so that `dvc exp show` has a baseline) and dvc.lock do not make a
    run's commit dirty; an edited source file or params.yaml does."""
    root = tmp_path / "proj"
    (root / "reports" / "plots").mkdir(parents=True)
    (root / "src").mkdir()
    dvc_yaml = (
        "stages:\n  select:\n    cmd: python select.py\n    outs:\n      - reports/leaderboard.csv:\n"
        "          cache: false\n      - reports/plots\n    metrics:\n      - reports/metrics.json:\n"
        "          cache: false\n"
    )
    files = {
        "dvc.yaml": dvc_yaml,
        "dvc.lock": "schema: '2.0'\n",
        "params.yaml": "seed: 1\n",
        "src/code.py": "x = 1\n",
        "reports/leaderboard.csv": "a\n",
        "reports/metrics.json": "{}\n",
        "reports/plots/comparison.csv": "a\n",
    }
    for name, text in files.items():
        (root / name).write_text(text)
    for cmd in (["init", "-q"], ["add", "-A"], ["-c", "user.name=t", "-c", "user.email=t@e", "commit", "-qm", "c"]):
        subprocess.run(["git", *cmd], cwd=root, check=True, capture_output=True)
    head = runs.git_commit(root)
    assert len(head) == 40
    for name in ("dvc.lock", "reports/leaderboard.csv", "reports/metrics.json", "reports/plots/comparison.csv"):
        (root / name).write_text("rewritten by a stage\n")
    assert runs.git_commit(root) == head
    (root / "params.yaml").write_text("seed: 2\n")
    assert runs.git_commit(root) == head + "+dirty"
    (root / "params.yaml").write_text("seed: 1\n")
    (root / "src" / "code.py").write_text("x = 2\n")
    assert runs.git_commit(root) == head + "+dirty"


def test_a_copied_store_names_the_copys_optuna_journal(recorded_project: Path, tmp_path: Path) -> None:
    """The runs' `optuna.storage` tag follows the project (a database URL and a journal elsewhere stay)."""
    import shutil

    original = recorded_project
    client = MlflowClient(tracking_uri=store.local_store_uri(original))
    exp_id = client.get_experiment_by_name("dlpipe/digits").experiment_id
    elsewhere = str(tmp_path / "shared" / "journal.log")
    values = {
        "own": str(original / "optuna" / "journal.log"),
        "url": "postgresql://dlpipe:***@db:5432/optuna",
        "elsewhere": elsewhere,
    }
    for name, value in values.items():
        client.create_run(exp_id, run_name=name, tags={"optuna.storage": value})
    client.set_model_version_tag("dlpipe-digits", "1", "optuna.storage", values["own"])
    copy = (tmp_path / "copy").resolve()
    shutil.copytree(original, copy)

    store.configure(None, copy, "dlpipe/digits")

    client = MlflowClient(tracking_uri=store.local_store_uri(copy))
    tags = {r.info.run_name: r.data.tags.get("optuna.storage") for r in client.search_runs([exp_id])}
    assert tags["own"] == str(copy / "optuna" / "journal.log")
    assert (tags["url"], tags["elsewhere"]) == (values["url"], elsewhere)
    assert client.get_model_version("dlpipe-digits", "1").tags["optuna.storage"] == str(copy / "optuna" / "journal.log")
    original_client = MlflowClient(tracking_uri=store.local_store_uri(original))
    kept = {r.info.run_name: r.data.tags.get("optuna.storage") for r in original_client.search_runs([exp_id])}
    assert kept["own"] == values["own"]
