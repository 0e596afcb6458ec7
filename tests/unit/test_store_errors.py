"""dlpipe.tracking.store.explain: a locked or corrupt MLflow store and a full disk, wherever they sit in an
exception's chain (MLflow wraps SQLAlchemy, which wraps sqlite3), become one line; and a trial that meets one is
discarded as interrupted (its worker ends), not failed as if its params could not train."""

from __future__ import annotations

import errno
import sqlite3
from pathlib import Path

import optuna
import pytest
from mlflow.exceptions import MlflowException
from optuna.trial import TrialState

from dlpipe.config import parse_params
from dlpipe.errors import OutputNotWritable
from dlpipe.tracking import store
from dlpipe.tuning import study as S
from dlpipe.tuning import workers as W
from dlpipe.tuning.space import SearchSpace


def wrapped(message: str) -> MlflowException:
    """An error as MLflow's SQLAlchemy store raises it."""
    try:
        try:
            raise sqlite3.OperationalError(message)
        except sqlite3.Error as inner:
            raise MlflowException(f"(sqlite3.OperationalError) {message}\n[SQL: INSERT ...]") from inner
    except MlflowException as exc:
        return exc


def test_explain_names_the_store_or_the_folder_in_one_line(tmp_path: Path):
    db = tmp_path / "mlruns" / "mlflow.db"
    locked = store.explain(wrapped("database is locked"), db)
    assert isinstance(locked, store.StoreLockedError) and str(locked).startswith(f"MLflow store {db} is locked")
    full = store.explain(wrapped("database or disk is full"), db)
    assert isinstance(full, OutputNotWritable) and f"no space left on the device of {db.parent}" in str(full)
    corrupt = store.explain(wrapped("file is not a database"), db)
    assert isinstance(corrupt, store.StoreCorruptError)
    nospace = OSError(errno.ENOSPC, "No space left on device", str(tmp_path / "reports" / "x.json"))
    assert f"no space left on the device of {tmp_path / 'reports'}" in str(store.explain(nospace, db))
    for exc in (locked, full, corrupt):
        assert "\n" not in str(exc)
    assert store.explain(ValueError("bad lr"), db) is None
    assert store.explain(wrapped("UNIQUE constraint failed"), db) is None


class Objective:
    arch, metric, epochs = "mlp", "f1_macro", 0

    def __init__(self, space: SearchSpace, error: Exception):
        self.space, self.error = space, error

    def __call__(self, trial, on_epoch=None):
        self.space.suggest(trial)
        raise self.error


def test_a_trial_that_meets_a_locked_store_is_discarded_and_its_worker_ends(tmp_path: Path):
    lr = {"type": "float", "low": 1e-4, "high": 0.1}
    space = SearchSpace.for_arch(parse_params({"tune": {"spaces": {"mlp": {"train.lr": lr}}}}), "mlp")
    study = optuna.create_study(storage=S.open_storage(str(tmp_path / "j.log")), study_name="s", direction="maximize")
    runner = W.TrialRunner(study, Objective(space, wrapped("database is locked")), 2, "w0")
    with pytest.raises(MlflowException):
        runner.run_next()
    (trial,) = study.trials
    assert trial.state == TrialState.FAIL and trial.system_attrs[S.ATTR_INTERRUPTED] is True
    assert S.counted_failures(study.trials) == 0  # not a failure of its params
