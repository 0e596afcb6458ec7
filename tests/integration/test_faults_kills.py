"""The study stage under real kills (issues #11.4, #11.9, #12): `python pipelines/study.py` with two worker
processes on digits, killed with SIGKILL in the middle of a fold, a trial or the final fit's write, then run again.

What must hold: no MLflow run is left RUNNING; the runs of the killed processes end KILLED with the reason
(`dlpipe.killed_reason`); a killed worker fails only its unit (exit 1 naming the fold and the signal, never a hang);
the rerun trains only what is missing (finished folds and trials keep their runs: exactly one FINISHED run per fold
and per finished trial); atomic writes leave no temporary file behind after the rerun.
"""

from __future__ import annotations

import os
import re
import signal
import subprocess
import sys
import time
from collections.abc import Callable
from pathlib import Path

import optuna
import psutil
import pytest
import yaml
from helpers.mlflow_store import install_mlflow_store, project_client
from helpers.processes import subprocess_env
from helpers.project import REPO_ROOT, copy_project, write_params
from mlflow.entities import Run
from mlflow.tracking import MlflowClient
from optuna.storages.journal import JournalFileBackend, JournalStorage

from dlpipe.config import load_params
from dlpipe.io import read_json
from dlpipe.paths import ProjectPaths
from dlpipe.stages import fetch, prepare
from dlpipe.tracking.runs import METRICS_EVERY_ENV, RECORDED_TAG, holds_fold_report

pytestmark = pytest.mark.slow

ARCHS = ("perceptron", "mlp")
FOLDS = 3
TRIALS = 2
EXPERIMENT = "dlpipe/digits"
STAGE_TIMEOUT = 300  # seconds: a stage that runs longer hangs
LR = {"type": "float", "low": 1e-3, "high": 0.1, "log": True}
STUDY = {  # every fit trains 20 epochs (no early stopping, no pruning): long enough to be caught mid-training
    "data": {"limit": 300, "folds": FOLDS},
    "architectures": list(ARCHS),
    "models": {"mlp": {"hidden": [16]}},
    "train": {"max_epochs": 20, "early_stopping": {"enabled": False}},
    "trainer": {"accelerator": "cpu", "progress_bar": False, "workers": 2},
    "tune": {"n_trials": TRIALS, "max_epochs": 20, "cv_folds": 0, "pruner": "none", "space": {"train.lr": LR}},
    "baselines": {"models": []},
}
TEMP = re.compile(r"^\.(?P<target>.+)\.(?P<pid>\d+)\.[^.]+(\.old)?\.tmp$")  # dlpipe.io's temporary names


def study_base() -> dict:
    """The repository's params.yaml with empty per-architecture spaces (the shared space is STUDY's lr)."""
    base = yaml.safe_load((REPO_ROOT / "params.yaml").read_text())
    base["tune"]["space"] = {}
    base["tune"]["spaces"] = {arch: {} for arch in base["tune"]["spaces"]}
    return base


@pytest.fixture
def study_project(tmp_path: Path, mlflow_template_db: Path) -> Path:
    """A project with STUDY params, fetched and prepared data and its own MLflow store."""
    project = copy_project(tmp_path / "project")
    write_params(project, STUDY, base=study_base())
    params, paths = load_params(project / "params.yaml"), ProjectPaths(project)
    fetch.run(params, paths)
    prepare.run(params, paths)
    install_mlflow_store(project, mlflow_template_db)
    return project


# --- processes ------------------------------------------------------------------------------------------------------


class Stage:
    """`python pipelines/study.py` in `project`, its output in files (read when it ended)."""

    def __init__(self, project: Path, name: str):
        self.out = project.parent / f"{name}.out"
        self.err = project.parent / f"{name}.err"
        env = subprocess_env(project)
        env.pop("MLFLOW_TRACKING_URI", None)  # the project's own store, whatever an earlier test configured
        env[METRICS_EVERY_ENV] = "1"  # every epoch reaches the store at once: a fit is seen in training
        with open(self.out, "wb") as out, open(self.err, "wb") as err:
            self.proc = subprocess.Popen(
                [sys.executable, "pipelines/study.py"], cwd=project, env=env, stdout=out, stderr=err
            )

    @property
    def pid(self) -> int:
        return self.proc.pid

    def tail(self) -> str:
        return f"{self.out.read_text()[-2000:]}\n{self.err.read_text()[-4000:]}"

    def wait(self, timeout: float = STAGE_TIMEOUT) -> int:
        try:
            return self.proc.wait(timeout=timeout)
        except subprocess.TimeoutExpired:
            self.proc.kill()
            self.proc.wait()
            pytest.fail(f"the study stage still ran after {timeout}s (hung?):\n{self.tail()}")

    def error_lines(self) -> list[str]:
        return [line for line in self.err.read_text().splitlines() if line.startswith("dlpipe study: error:")]

    def descendants(self) -> list[psutil.Process]:
        return psutil.Process(self.pid).children(recursive=True)


def run_stage(project: Path, name: str) -> Stage:
    stage = Stage(project, name)
    code = stage.wait()
    assert code == 0, f"{name} exited {code}:\n{stage.tail()}"
    return stage


def wait_for(find: Callable[[], object], stage: Stage, what: str, timeout: float = STAGE_TIMEOUT, every=0.1):
    """Poll `find()` until it returns something truthy; fail if the stage ends first or it takes too long."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        found = find()
        if found:
            return found
        if stage.proc.poll() is not None:
            pytest.fail(f"the stage ended (exit {stage.proc.returncode}) before {what}:\n{stage.tail()}")
        time.sleep(every)
    stage.proc.kill()
    pytest.fail(f"no {what} within {timeout}s:\n{stage.tail()}")


def wait_gone(procs: list[psutil.Process], timeout: float = 60) -> None:
    _, alive = psutil.wait_procs(procs, timeout=timeout)
    alive = [p for p in alive if p.is_running() and p.status() != psutil.STATUS_ZOMBIE]
    for p in alive:
        p.kill()
    assert not alive, f"processes of the killed stage still ran {timeout}s later: {[p.pid for p in alive]}"


# --- MLflow and Optuna, read back ------------------------------------------------------------------------------------


def client_of(project: Path) -> MlflowClient:
    return project_client(project)


def all_runs(client: MlflowClient) -> list[Run]:
    exp = client.get_experiment_by_name(EXPERIMENT)
    return [] if exp is None else client.search_runs([exp.experiment_id], max_results=5000)


def unit_runs(client: MlflowClient, unit: str, status: str | None = None) -> list[Run]:
    """Child runs of one kind: `fold` (cv) or `trial` (tune)."""
    return [r for r in all_runs(client) if unit in r.data.tags and (status is None or r.info.status == status)]


def unit_key(run: Run, unit: str) -> tuple[str, int]:
    return run.data.tags["architecture"], int(run.data.tags[unit])


def running_mid_training(client: MlflowClient, unit: str) -> Run | None:
    """A RUNNING `unit` run in its first epochs (1 to 5 logged, of 20 or more), once another run of that kind has
    FINISHED."""
    try:
        runs = unit_runs(client, unit)
        if not any(r.info.status == "FINISHED" for r in runs):
            return None
        for r in runs:
            early = r.info.status == "RUNNING" and "val_loss" in r.data.metrics
            if early and len(client.get_metric_history(r.info.run_id, "val_loss")) <= 5:
                return r
    except Exception:  # the store is being created by the stage
        return None
    return None


def finished_units(client: MlflowClient, unit: str) -> dict[tuple[str, int], list[str]]:
    found: dict[tuple[str, int], list[str]] = {}
    for r in unit_runs(client, unit, "FINISHED"):
        found.setdefault(unit_key(r, unit), []).append(r.info.run_id)
    return found


def load_study(project: Path, name: str) -> optuna.Study:
    storage = JournalStorage(JournalFileBackend(str(project / "optuna" / "journal.log")))
    return optuna.load_study(study_name=name, storage=storage)


def assert_nothing_running(client: MlflowClient) -> None:
    running = [(r.info.run_name, r.info.run_id) for r in all_runs(client) if r.info.status == "RUNNING"]
    assert not running, f"runs left RUNNING: {running}"


def final_parents(project: Path) -> set[str]:
    paths = ProjectPaths(project)
    return {
        read_json(report(arch))["mlflow_run_id"]
        for arch in ARCHS
        for report in (paths.tuning_report, paths.cv_report)
        if report(arch).is_file()
    }


def assert_killed_with_reason(client: MlflowClient, run_ids: set[str], resumed: set[str] = frozenset()) -> None:
    """Each run was ended by the sweep of dead owners: KILLED with the reason, or, when its process died after it
    had recorded its work (`dlpipe.recorded`: in the moment before its FINISHED status; or a fold's report), FINISHED
    with the reason it was closed; a parent run that the rerun resumed (`resumed`) ends FINISHED and keeps the reason
    as history."""
    for run_id in run_ids:
        run = client.get_run(run_id)
        tags = run.data.tags
        if run_id in resumed:
            assert run.info.status == "FINISHED", (run.info.run_name, run.info.status)
            assert "ended without closing this run" in tags.get("dlpipe.killed_reason", ""), tags
        elif tags.get(RECORDED_TAG) == "true" or holds_fold_report(run):
            assert run.info.status == "FINISHED", (run.info.run_name, run.info.status)
            assert "ended after recording this run's work" in tags.get("dlpipe.closed_reason", ""), tags
        else:
            assert run.info.status == "KILLED", (run.info.run_name, run.info.status)
            assert "ended without closing this run" in tags.get("dlpipe.killed_reason", ""), tags


def assert_one_finished_run_per_unit(client: MlflowClient, project: Path) -> None:
    """The final results: each fold of each final cv parent, each finished trial of each final study, has exactly
    one FINISHED run (and the experiment holds no other FINISHED fold or trial run: nothing was retrained)."""
    paths = ProjectPaths(project)
    folds, trials = finished_units(client, "fold"), finished_units(client, "trial")
    for arch in ARCHS:
        cv_parent = read_json(paths.cv_report(arch))["mlflow_run_id"]
        assert client.get_run(cv_parent).info.status == "FINISHED"
        for k in range(FOLDS):
            (run_id,) = folds[(arch, k)]
            assert client.get_run(run_id).data.tags["mlflow.parentRunId"] == cv_parent
        tuning = read_json(paths.tuning_report(arch))
        assert client.get_run(tuning["mlflow_run_id"]).info.status == "FINISHED"
        study = load_study(project, tuning["study_name"])
        numbers = [t.number for t in study.trials if t.state.is_finished() and t.state.name != "FAIL"]
        assert len(numbers) == TRIALS
        assert sorted(n for a, n in trials if a == arch) == numbers  # no FINISHED run of a trial Optuna dropped
        for n in numbers:
            (run_id,) = trials[(arch, n)]
            assert client.get_run(run_id).data.tags["mlflow.parentRunId"] == tuning["mlflow_run_id"]
        assert not [t.number for t in study.trials if t.state.name == "RUNNING"]
    assert len(folds) == len(ARCHS) * FOLDS and len(trials) == len(ARCHS) * TRIALS


# --- the stage killed -----------------------------------------------------------------------------------------------


@pytest.mark.parametrize("unit", ["fold", "trial"])
def test_a_study_stage_killed_mid_unit_leaves_no_run_running_and_its_rerun_retrains_nothing_finished(
    unit, study_project
):
    client = client_of(study_project)
    stage = Stage(study_project, "killed")
    victim = wait_for(lambda: running_mid_training(client, unit), stage, f"a {unit} in training")
    tree = stage.descendants()
    assert tree, "the stage runs its units in worker processes"
    os.kill(stage.pid, signal.SIGKILL)
    assert stage.wait() == -signal.SIGKILL
    wait_gone(tree)  # its workers, its forkserver: nothing of the killed stage runs on

    left = {r.info.run_id for r in all_runs(client) if r.info.status == "RUNNING"}
    assert victim.info.run_id in left, "the killed stage's unit ran on (and finished) without it"
    before = finished_units(client, unit)
    assert before, "some units had finished before the kill"

    run_stage(study_project, "rerun")
    assert_nothing_running(client)
    assert_killed_with_reason(client, left, resumed=final_parents(study_project))
    assert client.get_run(victim.info.run_id).info.status == "KILLED"
    assert_one_finished_run_per_unit(client, study_project)
    after = finished_units(client, unit)
    assert {key: after[key] for key in before} == before  # the units finished before the kill were reused
    if unit == "trial":  # the killed trial failed at once; the next trial sampled its params again
        arch, number = unit_key(victim, "trial")
        study = load_study(study_project, read_json(ProjectPaths(study_project).tuning_report(arch))["study_name"])
        dropped = study.trials[number]
        assert dropped.state.name == "FAIL" and dropped.system_attrs.get("dlpipe:orphaned") is True
        assert study.trials[number + 1].params == dropped.params


# --- a worker killed -----------------------------------------------------------------------------------------------


def test_a_worker_killed_mid_fold_fails_that_fold_with_the_signal_and_the_rerun_trains_only_the_missing_folds(
    study_project,
):
    client = client_of(study_project)
    stage = Stage(study_project, "worker-killed")
    victim = wait_for(lambda: running_mid_training(client, "fold"), stage, "a fold in training")
    arch, fold = unit_key(victim, "fold")
    worker = int(victim.data.tags["dlpipe.pid"])
    assert worker != stage.pid and worker in {p.pid for p in stage.descendants()}  # a worker runs the fold
    os.kill(worker, signal.SIGKILL)

    assert stage.wait() == 1, stage.tail()  # it ends (no hang), as a failure, not as bad input
    (line,) = stage.error_lines()
    assert f"{arch}: worker" in line and f"(pid {worker}) died with signal {signal.SIGKILL.value}" in line, line
    assert f"cv {arch} fold{fold}" in line, line
    assert_nothing_running(client)  # the stage closed what its dead worker left open
    assert_killed_with_reason(client, {victim.info.run_id})

    before = finished_units(client, "fold")
    missing = {(a, k) for a in ARCHS for k in range(FOLDS)} - set(before)
    assert (arch, fold) in missing
    run_stage(study_project, "rerun")
    assert_nothing_running(client)
    after = finished_units(client, "fold")
    assert {key for key in after if after[key] != before.get(key)} == missing  # only the missing folds ran
    assert_one_finished_run_per_unit(client, study_project)


# --- temporary files ------------------------------------------------------------------------------------------------


def temp_files(project: Path) -> list[Path]:
    """dlpipe.io's temporary files and folders under models/ and reports/."""
    return [p for folder in ("models", "reports") for p in (project / folder).rglob(".*.tmp")]


def model_temp(project: Path) -> Path | None:
    models = project / "models"
    if not models.is_dir():
        return None
    return next((models / e.name for e in os.scandir(models) if TEMP.match(e.name)), None)


def stop_a_writer_mid_write(project: Path, stage: Stage) -> tuple[Path, int]:
    """Freeze (SIGSTOP) a process while its temporary model file exists: the kill then surely lands mid-write.

    A write can finish between seeing its temporary file and signalling its writer; such a write is let go on
    (SIGCONT) and the next one is caught instead.
    """
    deadline = time.monotonic() + STAGE_TIMEOUT
    while time.monotonic() < deadline:
        temp = wait_for(lambda: model_temp(project), stage, "a model being written", every=0.005)
        writer = int(TEMP.match(temp.name)["pid"])
        try:
            os.kill(writer, signal.SIGSTOP)
        except ProcessLookupError:
            continue
        if temp.exists():
            return temp, writer
        os.kill(writer, signal.SIGCONT)
    stage.proc.kill()
    pytest.fail(f"no write caught in progress within {STAGE_TIMEOUT}s:\n{stage.tail()}")


def test_a_kill_while_the_final_fit_writes_its_model_leaves_no_temporary_files_after_the_rerun(study_project):
    stage = Stage(study_project, "train-killed")
    temp, writer = stop_a_writer_mid_write(study_project, stage)
    assert writer in {stage.pid} | {p.pid for p in stage.descendants()}
    os.kill(writer, signal.SIGKILL)
    assert stage.wait() != 0
    assert temp.exists(), "the kill came after the write: nothing was left to clean up"

    run_stage(study_project, "rerun")
    assert temp_files(study_project) == []
    for arch in ARCHS:
        assert (study_project / "models" / arch / "params.json").is_file()
        assert (study_project / "reports" / "test" / f"{arch}.json").is_file()
