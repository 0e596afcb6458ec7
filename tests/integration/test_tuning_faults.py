"""Tuning under real faults, with `dlpipe tune-worker` processes on digits: a journal torn by a crash, a worker
killed (SIGKILL) or interrupted (SIGINT) in the middle of a trial. Each resumption must finish the budget without
waiting for a heartbeat to age, and end with the trials an uninterrupted study has."""

from __future__ import annotations

import os
import signal
import subprocess
import time
from pathlib import Path

import optuna
import pytest
import yaml
from helpers.mlflow_store import install_mlflow_store
from helpers.processes import subprocess_env
from helpers.project import REPO_ROOT, SMALL_STUDY, copy_project, deep_merge, write_params
from optuna.storages.journal import JournalFileBackend, JournalStorage
from optuna.trial import TrialState

from dlpipe.config import load_params
from dlpipe.data.prepared import PreparedData
from dlpipe.data.store import dataset_digest
from dlpipe.paths import ProjectPaths
from dlpipe.stages import fetch, prepare
from dlpipe.tuning import study as S
from dlpipe.tuning import workers as W
from dlpipe.tuning.objective import Objective
from dlpipe.tuning.space import SearchSpace

LR_LOG = {"type": "float", "low": 1e-3, "high": 0.1, "log": True}
WORKER_TIMEOUT = 120  # far below the 300 s heartbeat timeout: a resumption that waits for it fails the test


def clean_base() -> dict:
    """The repository's params.yaml with empty search spaces, so each test states its whole space."""
    base = yaml.safe_load((REPO_ROOT / "params.yaml").read_text())
    base["tune"]["space"] = {}
    base["tune"]["spaces"] = {arch: {} for arch in base["tune"]["spaces"]}
    return base


def setup(project: Path, overrides: dict) -> tuple:
    """params.yaml (SMALL_STUDY + `overrides`), fetched and prepared data; returns (params, paths)."""
    write_params(project, deep_merge(SMALL_STUDY, overrides), base=clean_base())
    params, paths = load_params(project / "params.yaml"), ProjectPaths(project)
    fetch.run(params, paths)
    prepare.run(params, paths)
    return params, paths


def name_of(params, paths: ProjectPaths, arch: str) -> str:
    return S.study_name(params, arch, SearchSpace.for_arch(params, arch), dataset_digest(paths.raw))


def journal_path(paths: ProjectPaths) -> Path:
    return paths.optuna / "journal.log"


def load(paths: ProjectPaths, name: str) -> optuna.Study:
    """The study as Optuna alone reads the journal (no dlpipe repair)."""
    return optuna.load_study(study_name=name, storage=JournalStorage(JournalFileBackend(str(journal_path(paths)))))


def start_worker(project: Path, arch: str, log: Path) -> subprocess.Popen:
    with open(log, "ab") as out:
        return subprocess.Popen(
            ["dlpipe", "tune-worker", "--arch", arch],
            cwd=project,
            env=subprocess_env(project),
            stdout=out,
            stderr=subprocess.STDOUT,
        )


def run_worker(project: Path, arch: str, log: Path) -> int:
    proc = start_worker(project, arch, log)
    try:
        return proc.wait(timeout=WORKER_TIMEOUT)
    except subprocess.TimeoutExpired:
        proc.kill()
        proc.wait()
        pytest.fail(f"tune-worker still ran after {WORKER_TIMEOUT}s:\n{log.read_text()[-3000:]}")


def wait_until_training(paths: ProjectPaths, name: str, number: int, proc: subprocess.Popen, log: Path) -> None:
    """Poll the journal until trial `number` is RUNNING and has reported an epoch."""
    deadline = time.monotonic() + WORKER_TIMEOUT
    storage = None
    while time.monotonic() < deadline:
        assert proc.poll() is None, f"the worker ended before trial {number} ran:\n{log.read_text()[-3000:]}"
        if storage is None and journal_path(paths).exists():
            storage = JournalStorage(JournalFileBackend(str(journal_path(paths))))
        if storage is not None:
            try:
                trials = optuna.load_study(study_name=name, storage=storage).get_trials(deepcopy=False)
            except KeyError:  # the study is not created yet
                trials = []
            if any(t.number == number and t.state == TrialState.RUNNING and t.intermediate_values for t in trials):
                return
        time.sleep(0.02)
    proc.kill()
    pytest.fail(f"trial {number} never ran:\n{log.read_text()[-3000:]}")


def finished(study: optuna.Study) -> list[tuple]:
    return [(t.state, t.params, t.value, t.intermediate_values) for t in study.trials if t.state in S.FINISHED]


# --- a torn journal -----------------------------------------------------------------------------------------------


def test_a_journal_torn_by_a_crash_is_repaired_and_every_study_in_it_goes_on(project, mlflow_store, tmp_path):
    plain = {"sampler": "random", "pruner": "none", "max_epochs": 2, "n_trials": 2}
    spaces = {"perceptron": {"train.lr": LR_LOG}, "mlp": {"train.lr": LR_LOG}}
    params, paths = setup(project, {"tune": {**plain, "spaces": spaces}})
    mlp = S.open_study(params, paths, "mlp", SearchSpace.for_arch(params, "mlp"), dataset_digest(paths.raw))
    data = PreparedData.load(paths.raw, paths.prepared, params.data.normalize)
    objective = Objective(params, "mlp", SearchSpace.for_arch(params, "mlp"), data)
    assert W.run_trials(W.TrialRunner(mlp.study, objective, 2, "w0")) == "budget"
    mlp_trials = finished(load(paths, mlp.name))
    log = tmp_path / "worker.log"
    assert run_worker(project, "perceptron", log) == 0, log.read_text()[-3000:]

    journal = journal_path(paths)
    whole = journal.read_bytes()
    os.truncate(journal, len(whole) - 80)  # what a crash or a full disk leaves: a torn last record
    cut = len(whole) - 80
    torn = whole[whole.rfind(b"\n", 0, cut) + 1 : cut]
    write_params(project, {"tune": {"n_trials": 3}}, base=yaml.safe_load((project / "params.yaml").read_text()))
    assert run_worker(project, "perceptron", log) == 0, log.read_text()[-3000:]

    (side,) = journal.parent.glob("journal.log.torn-*")
    assert side.read_bytes() == torn and torn and b"\n" not in torn
    assert journal.read_bytes().startswith(whole[: cut - len(torn)])
    perceptron = load(paths, name_of(params, paths, "perceptron"))  # Optuna alone reads the whole file again
    assert S.state_counts(perceptron)["COMPLETE"] == 3
    assert finished(load(paths, mlp.name)) == mlp_trials  # the other architecture's study is intact
    assert "moved its" in log.read_text() and str(side) in log.read_text()


# --- killed and interrupted workers -------------------------------------------------------------------------------

STUDY = {  # a tiny mlp, TPE and median pruning, long enough trials (12 epochs) to be caught mid-training
    "models": {"mlp": {"hidden": [16]}},
    "train": {"max_epochs": 12, "early_stopping": {"enabled": False}},
    "tune": {
        "n_trials": 4,
        "sampler": "tpe",
        "pruner": "median",
        "max_epochs": 12,
        "spaces": {"mlp": {"train.lr": LR_LOG, "train.batch_size": {"type": "categorical", "choices": [16, 64]}}},
    },
}


@pytest.fixture(scope="module")
def uninterrupted(tmp_path_factory: pytest.TempPathFactory, mlflow_template_db: Path) -> list[tuple]:
    """The finished trials of STUDY run by one `dlpipe tune-worker` without any fault."""
    project = copy_project(tmp_path_factory.mktemp("uninterrupted") / "project")
    with pytest.MonkeyPatch.context() as mp:
        mp.setenv("DLPIPE_ROOT", str(project))
        mp.delenv("MLFLOW_TRACKING_URI", raising=False)
        params, paths = setup(project, STUDY)
        install_mlflow_store(project, mlflow_template_db)
        log = project / "worker.log"
        assert run_worker(project, "mlp", log) == 0, log.read_text()[-3000:]
        study = load(paths, name_of(params, paths, "mlp"))
    assert len(study.trials) == 4
    return finished(study)


@pytest.mark.slow
@pytest.mark.parametrize(("sig", "at"), [(signal.SIGKILL, 2), (signal.SIGINT, 1)], ids=["SIGKILL", "SIGINT"])
def test_a_killed_or_interrupted_worker_resumes_at_once_to_the_trials_of_an_uninterrupted_study(
    sig, at, uninterrupted, project, mlflow_store, tmp_path, keep_signal_handlers
):
    signal.signal(signal.SIGINT, signal.default_int_handler)  # the worker inherits it: SIGINT must interrupt
    params, paths = setup(project, STUDY)
    name = name_of(params, paths, "mlp")
    log = tmp_path / "worker.log"
    proc = start_worker(project, "mlp", log)
    wait_until_training(paths, name, at, proc, log)
    proc.send_signal(sig)
    code = proc.wait(timeout=WORKER_TIMEOUT)
    assert code == (-signal.SIGKILL if sig == signal.SIGKILL else 130), log.read_text()[-3000:]
    left = load(paths, name).trials[at]
    assert left.state == (TrialState.RUNNING if sig == signal.SIGKILL else TrialState.FAIL)

    assert W.STALE_SECONDS == 300.0  # the resumed worker runs with the default heartbeat timeout
    assert run_worker(project, "mlp", log) == 0, log.read_text()[-3000:]
    study = load(paths, name)
    dropped = study.trials[at]
    assert dropped.state == TrialState.FAIL and S.ATTR_STALE not in dropped.system_attrs
    mark = S.ATTR_ORPHANED if sig == signal.SIGKILL else S.ATTR_INTERRUPTED
    assert dropped.system_attrs[mark] is True
    assert [t.state in S.FINISHED for t in study.trials] == [True] * at + [False] + [True] * (4 - at)
    assert study.trials[at + 1].params == dropped.params  # the re-run of the dropped slot samples its params
    assert finished(study) == uninterrupted
