"""MLflow for a study: every trial a child run of the study's parent run; the parent gets the study's plots.

A trial run carries the standard tags (stage=tune), `trial`, `worker`, `study_name` and `state` (COMPLETE, PRUNED,
FAIL), its params (the real values), every epoch's train_*/val_* metrics with step = fold x epochs + epoch (the
monitored one is the intermediate value Optuna saw), and the final value as the selection metric. Runs end
FINISHED (COMPLETE, PRUNED), FAILED (FAIL) or KILLED (interrupted). Each process logs the trials it runs. An
interrupt after the study took the result waits until the run has ended FINISHED; a trial run that a SIGKILL in
that moment left to the orphan sweep (KILLED) is ended FINISHED by the next tune stage (`close_told_runs`).
"""

from __future__ import annotations

import contextlib
import logging
import warnings
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

import mlflow
import numpy as np
import optuna
from optuna.trial import TrialState

from dlpipe.evaluation import plots
from dlpipe.interrupts import deferred_interrupts
from dlpipe.tracking.runs import (
    CLOSED_REASON,
    KILLED_REASON,
    MetricBuffer,
    log_batch,
    metrics_every,
    set_tags,
    tracked_run,
)
from dlpipe.tuning.objective import EpochHook
from dlpipe.tuning.study import FINISHED

log = logging.getLogger(__name__)


@dataclass
class Outcome:
    """How one trial ended."""

    state: TrialState
    value: float | None = None
    error: str | None = None
    params: dict[str, Any] = field(default_factory=dict)
    epochs: int = 0


class _TrialFailed(Exception):
    """Ends a FAIL trial's run as FAILED through `tracked_run`."""


class TrialTracker:
    """Logs trials as child runs of `parent_run_id` (a top-level run when None)."""

    def __init__(
        self,
        arch: str,
        parent_run_id: str | None,
        tags: dict[str, str],
        metric: str,
        log_dataset: Callable[[str], None] | None = None,
    ):
        self.arch = arch
        self.parent_run_id = parent_run_id
        self.tags = tags
        self.metric = metric
        self.log_dataset = log_dataset  # records the training data as the trial run's input

    def track(
        self,
        trial: optuna.Trial,
        worker_id: str,
        body: Callable[[EpochHook], Outcome],
        finish: Callable[[Outcome], None],
    ) -> Outcome:
        """Run `body(on_epoch)` inside the trial's run, record its outcome there, then `finish(outcome)` (tell
        Optuna) before the run ends: a run never ends FINISHED for a trial the study did not get."""
        outcome: Outcome | None = None
        told = contextlib.ExitStack()  # holds Ctrl-C/SIGTERM from the tell until the run has ended
        try:
            nested = mlflow.active_run() is not None  # the stage's own process runs trials inside its parent run
            name = f"tune-{self.arch}-trial{trial.number}"
            tags = {
                **self.tags,
                "trial": str(trial.number),
                "worker": worker_id,
                "study_name": trial.study.study_name,
                "state": "RUNNING",
            }
            with tracked_run(run_name=name, parent_run_id=self.parent_run_id, nested=nested, tags=tags) as run:
                run_id = run.info.run_id
                if self.log_dataset is not None:
                    self.log_dataset(run_id)

                epochs = MetricBuffer()  # written with the outcome (and every `metrics_every()` epochs), not per epoch
                every = metrics_every()

                def on_epoch(step: int, metrics: dict[str, float]) -> None:
                    epochs.add({k: v for k, v in metrics.items() if np.isfinite(v)}, step)
                    if (step + 1) % every == 0:
                        log_batch(run_id, epochs.take())

                try:
                    outcome = body(on_epoch)
                except BaseException:  # interrupted: the run ends KILLED (Ctrl-C) or FAILED
                    log_batch(run_id, epochs.take(), tags={"state": TrialState.FAIL.name, "interrupted": "true"})
                    raise
                self._record(run_id, outcome, epochs)
                # An interrupt once the study holds the result (the journal delivers one that arrived while it
                # wrote the record right after) would end this run KILLED for a finished trial: raise it after.
                told.enter_context(deferred_interrupts())
                try:
                    finish(outcome)
                except Exception:  # the study did not take the result (e.g. another worker failed it as stale)
                    set_tags(run_id, {"state": TrialState.FAIL.name, "dropped": "true"})
                    raise
                if outcome.state == TrialState.FAIL:
                    raise _TrialFailed
        except _TrialFailed:
            pass
        finally:
            told.close()
        assert outcome is not None
        return outcome

    def _record(self, run_id: str, outcome: Outcome, epochs: MetricBuffer) -> None:
        """The trial's params, epoch curves, result and state in one batch."""
        metrics: dict[str, float] = {"epochs": float(outcome.epochs)}
        if outcome.value is not None and np.isfinite(outcome.value):
            metrics[self.metric] = outcome.value
        epochs.add(metrics, step=0)
        tags = {"state": outcome.state.name}
        if outcome.error:
            tags["error"] = outcome.error[:4000]
        log_batch(run_id, epochs.take(), params=outcome.params, tags=tags)


def close_told_runs(experiment_id: str, study: optuna.Study) -> list[str]:
    """End FINISHED the KILLED trial runs of `study` whose trial the study holds with the outcome the run recorded
    (its process was killed between the tell and the run's end: the sweep, which cannot see the study, ended them
    KILLED); returns their run ids. A trial with a FINISHED run already is left alone."""
    held = {t.number: t.state.name for t in study.get_trials(deepcopy=False, states=FINISHED)}
    if not held:
        return []
    client = mlflow.MlflowClient()
    clause = f"tags.study_name = '{study.study_name}' and attributes.status != 'RUNNING'"
    runs = [r for r in client.search_runs([experiment_id], clause, max_results=5000) if "trial" in r.data.tags]
    done = {r.data.tags["trial"] for r in runs if r.info.status == "FINISHED"}
    closed = []
    for run in runs:
        tags, number = run.data.tags, run.data.tags["trial"]
        if run.info.status != "KILLED" or number in done or not number.isdigit():
            continue
        if held.get(int(number)) != tags.get("state"):  # killed before the study got its result (or another one)
            continue
        reason = tags.get(KILLED_REASON, "interrupted after the study took its result")
        client.set_tag(run.info.run_id, CLOSED_REASON, f"{reason}; the study holds trial {number} {tags['state']}")
        if KILLED_REASON in tags:
            client.delete_tag(run.info.run_id, KILLED_REASON)
        client.set_terminated(run.info.run_id, "FINISHED")
        done.add(number)
        closed.append(run.info.run_id)
    return closed


# --- the study's plots --------------------------------------------------------------------------------------------


def _figure(axes: Any):
    return np.ravel(axes)[0].figure if isinstance(axes, np.ndarray) else axes.figure


def importances_possible(study: optuna.Study) -> bool:
    """Parameter importances need two completed trials and a parameter that took two values among them."""
    complete = study.get_trials(deepcopy=False, states=(TrialState.COMPLETE,))
    if len(complete) < 2:
        return False
    names = {name for t in complete for name in t.params}
    return any(len({repr(t.params.get(n)) for t in complete}) > 1 for n in names)


def log_study_plots(study: optuna.Study, run_id: str) -> list[str]:
    """Optimisation history, intermediate values, parallel coordinates and (when possible) parameter importances
    as PNG artifacts of `run_id`; returns the artifact paths logged."""
    from optuna.visualization import matplotlib as ovm

    wanted: list[tuple[str, Callable[[], Any]]] = [
        ("plots/optimization_history.png", lambda: ovm.plot_optimization_history(study)),
        ("plots/intermediate_values.png", lambda: ovm.plot_intermediate_values(study)),
    ]
    if study.get_trials(deepcopy=False, states=(TrialState.COMPLETE,)):
        wanted.append(("plots/parallel_coordinate.png", lambda: ovm.plot_parallel_coordinate(study)))
    if importances_possible(study):
        wanted.append(("plots/param_importances.png", lambda: ovm.plot_param_importances(study)))
    logged = []
    for path, make in wanted:
        try:
            with warnings.catch_warnings():
                warnings.simplefilter("ignore")
                fig = _figure(make())
        except Exception as exc:  # a plot Optuna cannot draw for this study must not fail the stage
            log.warning("tune: could not draw %s: %s", path, exc)
            continue
        fig.set_size_inches(9, 6)
        fig.tight_layout()
        mlflow.MlflowClient().log_figure(run_id, fig, path)
        plots.close(fig)
        logged.append(path)
    return logged
