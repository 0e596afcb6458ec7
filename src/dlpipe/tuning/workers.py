"""The trial loop every worker runs.

Any number of workers (the study stage's worker processes, `dlpipe tune-worker` on other machines) share one
study through its
storage. Each runs trials until the study has `tune.n_trials` finished (COMPLETE + PRUNED) trials, and never
more: a worker starts a trial only while finished + running trials are below the budget, and a trial created in
a race for the last slot (a running trial with a lower number took it) is closed at once as FAIL with the
`dlpipe:surplus` attribute, before any parameter is sampled. A worker that finds the budget taken by running
trials waits for them; if one of them fails, the freed slot is run again.

A trial is created with its owner (`dlpipe:owner`: host, pid and the process's start time; in the same record, see
dlpipe.tuning.owned). Whenever a
worker looks at the trials (before each trial and while it waits), a RUNNING trial of this host whose process is
gone (killed, or its pid now belongs to a process started at another time) is failed at once (`dlpipe:orphaned`).
Trials of other hosts (and trials without an owner, from older versions) write a heartbeat (`dlpipe:heartbeat`);
one whose heartbeat is older than `STALE_SECONDS` is failed by a waiting worker (`dlpipe:stale`), so it cannot
block the study forever. FAIL trials are retried until `max_failures(budget)` of them (interrupted, surplus,
stale and orphaned trials do not count); then the worker stops.

Parallel workers are processes (dlpipe.parallel), not Optuna's `n_jobs` threads; on a GPU machine each sees one
GPU, one trial per device.
"""

from __future__ import annotations

import functools
import logging
import math
import os
import socket
import threading
import time
from collections.abc import Callable
from typing import Any

import optuna
from optuna.exceptions import UpdateFinishedTrialError
from optuna.storages import BaseStorage
from optuna.trial import FrozenTrial, TrialState

from dlpipe.errors import DlpipeError
from dlpipe.processes import Owner
from dlpipe.tracking import store
from dlpipe.tuning.objective import NonFiniteLoss, Objective
from dlpipe.tuning.study import (
    ATTR_ERROR,
    ATTR_HEARTBEAT,
    ATTR_INTERRUPTED,
    ATTR_ORPHANED,
    ATTR_OWNER,
    ATTR_STALE,
    ATTR_SURPLUS,
    counted_failures,
    epochs_committed,
    epochs_spent,
    finished_count,
)
from dlpipe.tuning.tracking import Outcome, TrialTracker

log = logging.getLogger(__name__)

HEARTBEAT_SECONDS = 15.0  # how often a running trial records that it is alive
STALE_SECONDS = 300.0  # a RUNNING trial silent this long belongs to a dead process
POLL_SECONDS = 1.0  # how often a worker waiting for running trials looks again, at most
FIRST_POLL_SECONDS = 0.05  # its first look: a study's last trials often end within moments of each other
TERMINATE_GRACE_SECONDS = 30.0  # workers get this long to end their runs after SIGTERM
RENDEZVOUS_SECONDS = 300.0  # how long workers started together wait for each other before the first trial
RENDEZVOUS_ATTR = "dlpipe:rendezvous"


def max_failures(budget: int) -> int:
    """FAIL trials tolerated in a study before its workers give up."""
    return max(3, budget)


def worker_id(index: int) -> str:
    return f"{socket.gethostname()}:{os.getpid()}:w{index}"


# System attributes, and the trials of other processes, can only be written through the storage, by trial id:
# Optuna's two private attributes below are read here and nowhere else in dlpipe.
def storage_of(study: optuna.Study) -> BaseStorage:
    return study._storage  # Optuna 5's Study has no public storage accessor (create/load_study take one, none give it)


def trial_id(trial: optuna.Trial | FrozenTrial) -> int:
    return trial._trial_id  # Optuna 5 exposes only `number`; the storage's id lookup needs the private Study._study_id


# --- owners and dead trials ---------------------------------------------------------------------------------------


def owner_record(pid: int | None = None) -> dict[str, Any]:
    """The `dlpipe:owner` of a trial run by process `pid` (this one by default)."""
    return Owner.current(pid).record()


def close_dead(study: optuna.Study, trial: FrozenTrial, attr: str) -> bool:
    """FAIL a RUNNING trial of another process with `attr`; False when it finished meanwhile."""
    storage = storage_of(study)
    try:
        storage.set_trial_system_attr(trial_id(trial), attr, True)
        storage.set_trial_state_values(trial_id(trial), TrialState.FAIL)
    except Exception as exc:  # finished meanwhile
        log.debug("trial %d (%s): %s", trial.number, attr, exc)
        return False
    return True


def fail_orphaned_trials(study: optuna.Study, trials: list[FrozenTrial] | None = None) -> list[int]:
    """FAIL every RUNNING trial of this host whose process has ended; returns their numbers."""
    failed = []
    for t in trials if trials is not None else study.get_trials(deepcopy=False):
        owner = Owner.from_record(t.system_attrs.get(ATTR_OWNER))
        if t.state != TrialState.RUNNING or owner is None or not owner.is_dead():
            continue
        if close_dead(study, t, ATTR_ORPHANED):
            log.warning(
                "tune: trial %d was left RUNNING by process %s, which has ended: marked FAIL", t.number, owner.pid
            )
            failed.append(t.number)
    return failed


class Heartbeat:
    """While the block runs, a thread stamps the trial's `dlpipe:heartbeat` system attribute."""

    def __init__(self, study: optuna.Study, trial_id: int, interval: float | None = None):
        self.storage = storage_of(study)
        self.trial_id = trial_id
        self.interval = HEARTBEAT_SECONDS if interval is None else interval
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._beat, name=f"heartbeat-{trial_id}", daemon=True)

    def _beat(self) -> None:
        while True:
            try:
                self.storage.set_trial_system_attr(self.trial_id, ATTR_HEARTBEAT, time.time())
            except Exception as exc:  # storage hiccup or the trial already ended: never kill the trial for it
                log.debug("heartbeat of trial %s: %s", self.trial_id, exc)
            if self._stop.wait(self.interval):
                return

    def __enter__(self) -> Heartbeat:
        self._thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._stop.set()
        self._thread.join()


def last_alive(trial: FrozenTrial) -> float:
    beat = trial.system_attrs.get(ATTR_HEARTBEAT)
    if beat is not None:
        return float(beat)
    return trial.datetime_start.timestamp() if trial.datetime_start else time.time()


def fail_stale_trials(study: optuna.Study, trials: list[FrozenTrial] | None = None) -> list[int]:
    """FAIL every RUNNING trial of another host (or without an owner) without a heartbeat for `STALE_SECONDS`;
    returns their numbers. This host's trials are judged by their process (`fail_orphaned_trials`)."""
    now = time.time()
    failed = []
    for t in trials if trials is not None else study.get_trials(deepcopy=False):
        owner = Owner.from_record(t.system_attrs.get(ATTR_OWNER))
        if t.state != TrialState.RUNNING or (owner is not None and owner.is_local):
            continue
        if now - last_alive(t) > STALE_SECONDS and close_dead(study, t, ATTR_STALE):
            log.warning(
                "tune: trial %d has been silent for %.0fs (its process died?): marked FAIL",
                t.number,
                now - last_alive(t),
            )
            failed.append(t.number)
    return failed


def rendezvous(study: optuna.Study, spec: str, index: int, timeout: float | None = None) -> bool:
    """Workers started together (`spec` = "TOKEN:N") wait until all N have joined the study, so the first trials
    spread over them however long each took to start. Returns False when it gave up after `timeout` seconds."""
    token, _, count = spec.rpartition(":")
    if not token or not count.isdigit():
        raise ValueError(f"rendezvous must be TOKEN:N (got {spec!r})")
    prefix = f"{RENDEZVOUS_ATTR}:{token}:"
    study.set_user_attr(f"{prefix}{index}", time.time())
    deadline = time.monotonic() + (RENDEZVOUS_SECONDS if timeout is None else timeout)
    while sum(k.startswith(prefix) for k in study.user_attrs) < int(count):
        if time.monotonic() > deadline:
            log.warning("tune: not all %s workers joined within the rendezvous time; starting anyway", count)
            return False
        time.sleep(FIRST_POLL_SECONDS)
    return True


def claims_slot(study: optuna.Study, trial: optuna.Trial, budget: int) -> bool:
    """Whether `trial` is within the budget: finished trials plus running ones with lower numbers leave room."""
    trials = study.get_trials(deepcopy=False)
    ahead = sum(t.state == TrialState.RUNNING and t.number < trial.number for t in trials)
    return finished_count(trials) + ahead < budget


class _Dropped(Exception):
    """The trial was failed by another worker (stale) while it ran: its result cannot be told."""


class TrialRunner:
    """Runs one trial at a time of `study` with `objective`, logged by `tracker` (None: no MLflow)."""

    def __init__(
        self, study: optuna.Study, objective: Objective, budget: int, worker: str, tracker: TrialTracker | None = None
    ):
        self.study = study
        self.objective = objective
        self.budget = budget
        self.worker = worker
        self.tracker = tracker

    def run_next(self) -> Outcome | None:
        """Ask for a trial, run it and tell the outcome; None when the trial lost the race for the last slot (or
        was failed as stale by another worker while it ran)."""
        trial = self.study.ask()  # dlpipe's storages create it with its owner (dlpipe.tuning.owned)
        storage = storage_of(self.study)
        if ATTR_OWNER not in storage.get_trial_system_attrs(trial_id(trial)):  # another storage (in memory, say)
            storage.set_trial_system_attr(trial_id(trial), ATTR_OWNER, owner_record())
        trial.set_user_attr("worker", self.worker)
        if not claims_slot(self.study, trial, self.budget):
            storage.set_trial_system_attr(trial_id(trial), ATTR_SURPLUS, True)
            self.study.tell(trial, state=TrialState.FAIL)
            log.info("tune: trial %d closed: the budget of %d trials is taken", trial.number, self.budget)
            return None
        finish = functools.partial(self._tell, trial)
        try:
            with Heartbeat(self.study, trial_id(trial)):
                if self.tracker is not None:
                    outcome = self.tracker.track(trial, self.worker, lambda hook: self._evaluate(trial, hook), finish)
                else:
                    outcome = self._evaluate(trial, None)
                    finish(outcome)
        except _Dropped:
            log.warning("tune: trial %d was marked FAIL (stale) while it ran; its result is dropped", trial.number)
            return None
        except BaseException:  # Ctrl-C, SIGTERM, sys.exit: the trial is FAIL (and does not count as a failure)
            self._close_interrupted(trial)
            raise
        self._log(trial, outcome)
        return outcome

    def _tell(self, trial: optuna.Trial, outcome: Outcome) -> None:
        """Hand the outcome to the study (inside the trial's MLflow run, which ends only after this)."""
        try:
            trial.set_user_attr("epochs", outcome.epochs)
            if outcome.error:
                storage_of(self.study).set_trial_system_attr(trial_id(trial), ATTR_ERROR, outcome.error[:4000])
            if outcome.state == TrialState.COMPLETE:
                self.study.tell(trial, outcome.value)
            else:
                self.study.tell(trial, state=outcome.state)
        except UpdateFinishedTrialError as exc:  # another worker found it stale and failed it meanwhile
            raise _Dropped from exc

    def _evaluate(self, trial: optuna.Trial, on_epoch: Callable | None) -> Outcome:
        state, value, error = TrialState.COMPLETE, None, None
        try:
            value = self.objective(trial, on_epoch=on_epoch)
        except optuna.TrialPruned as exc:
            state, error = TrialState.PRUNED, None
            log.debug("trial %d pruned: %s", trial.number, exc)
        except (DlpipeError, NonFiniteLoss) as exc:
            state, error = TrialState.FAIL, f"{type(exc).__name__}: {exc}"
        except Exception as exc:  # a bug or a model that cannot train with these params: the study goes on
            if store.explain(exc) is not None:  # a locked store or a full disk, not these params: the worker ends
                raise  # (and the trial is discarded as interrupted, to run again with the same params)
            log.warning("tune: trial %d raised", trial.number, exc_info=True)
            state, error = TrialState.FAIL, f"{type(exc).__name__}: {exc}"
        if state == TrialState.COMPLETE and (value is None or not math.isfinite(value)):
            state, error = TrialState.FAIL, f"objective value is {value}"
        params = self.objective.space.decode(trial.params)
        return Outcome(state, value if state == TrialState.COMPLETE else None, error, params, self.objective.epochs)

    def _close_interrupted(self, trial: optuna.Trial) -> None:
        try:
            if storage_of(self.study).get_trial(trial_id(trial)).state.is_finished():  # told before the interrupt
                return
            storage_of(self.study).set_trial_system_attr(trial_id(trial), ATTR_INTERRUPTED, True)
            trial.set_user_attr("epochs", self.objective.epochs)
            self.study.tell(trial, state=TrialState.FAIL)
        except Exception as exc:  # storage gone: the trial stays RUNNING until a worker finds it orphaned or stale
            log.warning("tune: could not close interrupted trial %d: %s", trial.number, exc)

    def _log(self, trial: optuna.Trial, outcome: Outcome) -> None:
        done = finished_count(self.study.get_trials(deepcopy=False))
        value = f" {self.objective.metric} {outcome.value:.4f}" if outcome.value is not None else ""
        why = f" ({outcome.error})" if outcome.error else ""
        log.info(
            "tune %s: trial %d %s%s after %d epochs%s; %d/%d finished; params %s",
            self.objective.arch,
            trial.number,
            outcome.state.name,
            value,
            outcome.epochs,
            why,
            done,
            self.budget,
            outcome.params,
        )


def run_trials(
    runner: TrialRunner, *, timeout: float | None = None, epochs: int | None = None, poll: float | None = None
) -> str:
    """Run trials until the study has `runner.budget` finished trials; returns why it stopped: budget, failures,
    timeout (no new trial starts after `timeout` seconds) or epochs (the finished trials trained `epochs`). A
    worker waiting for other workers' trials looks again after FIRST_POLL_SECONDS, then twice as long each time, up
    to `poll` (POLL_SECONDS)."""
    study, budget = runner.study, runner.budget
    poll = POLL_SECONDS if poll is None else poll
    start = time.monotonic()
    waiting, delay = False, min(FIRST_POLL_SECONDS, poll)
    while True:
        trials = study.get_trials(deepcopy=False)
        if fail_orphaned_trials(study, trials):
            continue  # look again: their slots are free
        finished = finished_count(trials)
        if finished >= budget:
            return "budget"
        if epochs is not None and epochs_spent(trials) >= epochs:
            return "epochs"
        if counted_failures(trials) >= max_failures(budget):
            log.warning(
                "tune: %d trials failed; stopping (see the trials' error attribute and MLflow runs)",
                counted_failures(trials),
            )
            return "failures"
        if timeout is not None and time.monotonic() - start >= timeout:
            return "timeout"
        running = sum(t.state == TrialState.RUNNING for t in trials)
        if finished + running >= budget or (epochs is not None and epochs_committed(trials) >= epochs):
            if not waiting:
                log.info("tune: %d trials running elsewhere take the rest of the budget; waiting", running)
                waiting = True
            if not fail_stale_trials(study, trials):
                time.sleep(delay)
                delay = min(2 * delay, poll)
            continue
        waiting, delay = False, min(FIRST_POLL_SECONDS, poll)
        runner.run_next()
