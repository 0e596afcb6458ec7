"""A unit killed after it recorded its work keeps that work (issue #11: nothing recorded is ever lost).

Real processes run a `tracked_run` (and a tracked Optuna trial) and are SIGKILLed at a chosen point: inside the
block, or in the last moment of the run, where MLflow would write its FINISHED status (the process kills itself in
place of `mlflow.end_run`). The sweep every stage runs first (`close_orphaned_runs`, in another process, as a
stage would) must end the first kind KILLED and the second FINISHED, each with its reason; so must it a run killed
inside its block after it logged its fold report (the artifact that marks a cv fold done), but not one whose report
is torn. A trial's result must reach the study before its run can end, and a SIGTERM or Ctrl-C that arrives while
the study records that result (deferred by the journal lock until its record is written) must not end the run of
the trial the study now holds as COMPLETE as KILLED (chaos seed 7: a finished trial without its FINISHED run); a trial
SIGKILLed in that moment has its run, which the sweep ended KILLED, ended FINISHED by the next tune stage.
"""

from __future__ import annotations

import json
import signal
import subprocess
import sys
import textwrap
from pathlib import Path

import optuna
import pytest
from helpers.processes import subprocess_env
from optuna.storages.journal import JournalFileBackend, JournalStorage
from optuna.trial import TrialState

from dlpipe.tracking.runs import RECORDED_TAG

KILL_AT_END = "mlflow.end_run = lambda *a, **k: os.kill(os.getpid(), signal.SIGKILL)  # dies where the status goes"

UNIT = """
import os, signal, sys, mlflow
from dlpipe.tracking.runs import tracked_run
mlflow.set_tracking_uri(sys.argv[1])
mlflow.set_experiment("faults")
where = sys.argv[2]
if where == "end":
    {kill_at_end}
with tracked_run(run_name="unit", tags={{"unit": where, "fold": "0"}}):
    mlflow.log_metric("accuracy", 0.9)
    if where == "torn":  # its report half written
        mlflow.log_text('{{"accuracy": 0.', "fold_report.json")
    elif where != "block":
        mlflow.log_dict({{"accuracy": 0.9}}, "fold_report.json")
    if where in ("block", "torn", "reported"):
        os.kill(os.getpid(), signal.SIGKILL)
"""

# What each trial script below ends with: a one-parameter objective and one trial of it run by the study's runner.
ONE_TRIAL = """
class Space:
    def decode(self, params):
        return dict(params)

class Objective:
    arch, metric, epochs, space = "mlp", "f1_macro", 1, Space()
    def __call__(self, trial, on_epoch=None):
        return trial.suggest_float("train.lr", 1e-3, 1e-1, log=True)

TrialRunner(study, Objective(), {trials}, "w0", TrialTracker("mlp", None, dict(stage="tune"), "f1_macro")).run_next()
"""

TRIAL = """
import os, signal, sys, mlflow, optuna
from optuna.storages.journal import JournalFileBackend, JournalStorage
from dlpipe.tuning.tracking import TrialTracker
from dlpipe.tuning.workers import TrialRunner
mlflow.set_tracking_uri(sys.argv[1])
mlflow.set_experiment("faults")
storage = JournalStorage(JournalFileBackend(sys.argv[2]))
study = optuna.create_study(storage=storage, study_name="s", direction="maximize")

{kill_at_end}
""" + ONE_TRIAL.format(trials=1)

# The signal arrives while the journal appends the trial's COMPLETE record (under its lock, which defers it to the
# moment the record is written), from outside as chaos sends it: a helper process signals this one, which waits.
SIGNALLED_TRIAL = (
    """
import os, signal, subprocess, sys, time, mlflow, optuna
import dlpipe.tuning.journal as J
from optuna.trial import TrialState
from dlpipe.tuning.owned import OwnedJournalStorage
from dlpipe.tuning.tracking import TrialTracker
from dlpipe.tuning.workers import TrialRunner

def as_interrupt(signum, frame):
    raise KeyboardInterrupt

signal.signal(signal.SIGTERM, as_interrupt)
mlflow.set_tracking_uri(sys.argv[1])
mlflow.set_experiment("faults")
storage = J.JournalFile(sys.argv[2]).storage(OwnedJournalStorage)
study = optuna.create_study(storage=storage, study_name="s", direction="maximize")
signum, armed, real_cut, real_set = getattr(signal, sys.argv[3]), [], J.cut_torn_tail, storage.set_trial_state_values

def set_state(trial_id, state, values=None):
    armed.append(state == TrialState.COMPLETE)
    return real_set(trial_id, state, values)

def cut(path):  # runs under the journal lock, just before the record is appended
    if armed and armed.pop():
        subprocess.run(["kill", f"-{{signum.name.removeprefix('SIG')}}", str(os.getpid())], check=True)
        time.sleep(0.2)  # delivered here: deferred until the lock is let go
    return real_cut(path)

storage.set_trial_state_values, J.cut_torn_tail = set_state, cut
"""
    + ONE_TRIAL.format(trials=1)
    + 'print("not interrupted")\n'
)

# SIGKILL right after the study took the trial's result.
KILLED_TRIAL = """
import os, signal, sys, mlflow, optuna
from optuna.trial import TrialState
from dlpipe.tuning.tracking import TrialTracker
from dlpipe.tuning.workers import TrialRunner
mlflow.set_tracking_uri(sys.argv[1])
mlflow.set_experiment("faults")
storage = optuna.storages.JournalStorage(optuna.storages.journal.JournalFileBackend(sys.argv[2]))
study = optuna.create_study(storage=storage, study_name="s", direction="maximize", load_if_exists=True)
real_set = storage.set_trial_state_values

def set_state(trial_id, state, values=None):
    done = real_set(trial_id, state, values)
    if state == TrialState.COMPLETE:
        os.kill(os.getpid(), signal.SIGKILL)
    return done

storage.set_trial_state_values = set_state
""" + ONE_TRIAL.format(trials=2)

TUNE_SWEEPS = """
import json, sys, mlflow, optuna
from dlpipe.tracking.runs import close_orphaned_runs
from dlpipe.tuning.tracking import close_told_runs
mlflow.set_tracking_uri(sys.argv[1])
experiment = mlflow.set_experiment("faults")
storage = optuna.storages.JournalStorage(optuna.storages.journal.JournalFileBackend(sys.argv[2]))
swept = close_orphaned_runs(experiment.experiment_id, "the test's sweep")
told = close_told_runs(experiment.experiment_id, optuna.load_study(study_name="s", storage=storage))
print(json.dumps([swept, told]))
"""

SWEEP = """
import json, sys, mlflow
from dlpipe.tracking.runs import close_orphaned_runs
mlflow.set_tracking_uri(sys.argv[1])
experiment = mlflow.set_experiment("faults")
print(json.dumps(close_orphaned_runs(experiment.experiment_id, "the test's sweep")))
"""


def python(tmp_path: Path, code: str, *args: str) -> subprocess.CompletedProcess:
    env = subprocess_env(tmp_path)
    env.pop("MLFLOW_TRACKING_URI", None)
    return subprocess.run(
        [sys.executable, "-c", textwrap.dedent(code), *args], cwd=tmp_path, env=env, capture_output=True, text=True
    )


def killed(tmp_path: Path, code: str, *args: str) -> None:
    proc = python(tmp_path, code.format(kill_at_end=KILL_AT_END), *args)
    assert proc.returncode == -signal.SIGKILL, proc.stderr[-3000:]


def sweep(tmp_path: Path, uri: str) -> dict[str, str]:
    proc = python(tmp_path, SWEEP, uri)
    assert proc.returncode == 0, proc.stderr[-3000:]
    return json.loads(proc.stdout.strip().splitlines()[-1])


@pytest.fixture
def store(tmp_path: Path, mlflow_template_db: Path) -> str:
    db = tmp_path / "mlflow.db"
    db.write_bytes(mlflow_template_db.read_bytes())
    return f"sqlite:///{db}"


def client_of(uri: str):
    from mlflow.tracking import MlflowClient

    return MlflowClient(tracking_uri=uri, registry_uri=uri)


def test_a_unit_killed_after_recording_its_work_ends_finished_and_one_killed_inside_its_work_ends_killed(
    tmp_path, store
):
    killed(tmp_path, UNIT, store, "end")
    killed(tmp_path, UNIT, store, "block")
    client = client_of(store)
    runs = {r.data.tags["unit"]: r for r in client.search_runs([client.get_experiment_by_name("faults").experiment_id])}
    assert {w: r.info.status for w, r in runs.items()} == {"end": "RUNNING", "block": "RUNNING"}
    assert runs["end"].data.tags.get(RECORDED_TAG) == "true" and RECORDED_TAG not in runs["block"].data.tags

    closed = sweep(tmp_path, store)
    assert closed == {runs["end"].info.run_id: "FINISHED", runs["block"].info.run_id: "KILLED"}
    end, block = (client.get_run(runs[w].info.run_id) for w in ("end", "block"))
    assert "ended after recording this run's work" in end.data.tags["dlpipe.closed_reason"]
    assert "dlpipe.killed_reason" not in end.data.tags
    assert "ended without closing this run" in block.data.tags["dlpipe.killed_reason"]
    assert sweep(tmp_path, store) == {}  # nothing is left to close


def test_a_trial_killed_as_its_run_ends_has_told_the_study_and_its_run_ends_finished(tmp_path, store):
    journal = tmp_path / "journal.log"
    killed(tmp_path, TRIAL, store, str(journal))
    study = optuna.load_study(study_name="s", storage=JournalStorage(JournalFileBackend(str(journal))))
    (trial,) = study.trials
    assert trial.state == TrialState.COMPLETE  # told before the run could end
    assert sweep(tmp_path, store) == {
        r.info.run_id: "FINISHED" for r in client_of(store).search_runs([study_experiment(store)])
    }
    (run,) = client_of(store).search_runs([study_experiment(store)])
    assert run.info.status == "FINISHED" and run.data.tags["state"] == "COMPLETE"
    assert run.data.tags["trial"] == str(trial.number)


def study_experiment(uri: str) -> str:
    return client_of(uri).get_experiment_by_name("faults").experiment_id


def test_a_fold_killed_after_logging_its_report_ends_finished_and_a_torn_report_ends_killed(tmp_path, store):
    killed(tmp_path, UNIT, store, "reported")  # chaos seed 7: SIGKILL between the report and the recorded tag
    killed(tmp_path, UNIT, store, "torn")
    client = client_of(store)
    runs = {r.data.tags["unit"]: r for r in client.search_runs([study_experiment(store)])}
    assert RECORDED_TAG not in runs["reported"].data.tags

    closed = sweep(tmp_path, store)
    assert closed == {runs["reported"].info.run_id: "FINISHED", runs["torn"].info.run_id: "KILLED"}
    reported = client.get_run(runs["reported"].info.run_id)
    assert "ended after recording this run's work" in reported.data.tags["dlpipe.closed_reason"]


def test_a_trial_interrupted_while_the_study_records_its_result_ends_its_run_finished(tmp_path, store):
    journal = tmp_path / "journal.log"  # SIGTERM as chaos seed 7 sent it (Ctrl-C takes the same path)
    proc = python(tmp_path, SIGNALLED_TRIAL.format(), store, str(journal), "SIGTERM")
    assert proc.returncode != 0 and "not interrupted" not in proc.stdout, proc.stderr[-3000:]
    assert "KeyboardInterrupt" in proc.stderr, proc.stderr[-3000:]  # the interrupt was delivered, not lost
    study = optuna.load_study(study_name="s", storage=JournalStorage(JournalFileBackend(str(journal))))
    (trial,) = study.trials
    assert trial.state == TrialState.COMPLETE  # the record was written before the interrupt was raised
    (run,) = client_of(store).search_runs([study_experiment(store)])
    assert (run.info.status, run.data.tags["state"]) == ("FINISHED", "COMPLETE")  # the study holds its result
    assert run.data.tags["trial"] == str(trial.number) and "interrupted" not in run.data.tags
    assert sweep(tmp_path, store) == {}


def test_a_trial_killed_after_the_study_took_its_result_gets_its_run_finished_by_the_next_tune(tmp_path, store):
    journal = tmp_path / "journal.log"
    proc = python(tmp_path, KILLED_TRIAL, store, str(journal))
    assert proc.returncode == -signal.SIGKILL, proc.stderr[-3000:]
    study = optuna.load_study(study_name="s", storage=JournalStorage(JournalFileBackend(str(journal))))
    study.ask()  # trial 1, whose process died inside its objective (its run KILLED, its trial without a result)
    client = client_of(store)
    inside = client.create_run(study_experiment(store), tags={"study_name": "s", "trial": "1", "state": "RUNNING"})
    client.set_terminated(inside.info.run_id, "KILLED")
    assert [t.state for t in study.trials] == [TrialState.COMPLETE, TrialState.RUNNING]
    runs = {r.data.tags["trial"]: r.info.run_id for r in client.search_runs([study_experiment(store)])}
    proc = python(tmp_path, TUNE_SWEEPS, store, str(journal))  # what the tune stage does first
    assert proc.returncode == 0, proc.stderr[-3000:]
    swept, told_closed = json.loads(proc.stdout.strip().splitlines()[-1])
    assert swept == {runs["0"]: "KILLED"}  # the sweep cannot see the study
    assert told_closed == [runs["0"]]
    told, killed_inside = (client_of(store).get_run(runs[n]) for n in ("0", "1"))
    assert (told.info.status, told.data.tags["state"]) == ("FINISHED", "COMPLETE")
    assert "the study holds trial 0 COMPLETE" in told.data.tags["dlpipe.closed_reason"]
    assert "dlpipe.killed_reason" not in told.data.tags
    assert killed_inside.info.status == "KILLED"  # its trial has no result: it is failed and run again
