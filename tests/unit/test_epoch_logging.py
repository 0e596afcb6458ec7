"""A fit's epoch metrics reach MLflow in one batch (every METRICS_EVERY epochs of a long fit), not one store write per
epoch, and every epoch is still recorded, also when the fit fails part-way."""

from __future__ import annotations

import mlflow
import pytest
from helpers.training import NO_EARLY_STOP, dataset, problem, subsample, train
from lightning.pytorch.callbacks import Callback
from mlflow.tracking import MlflowClient

from dlpipe.errors import ConfigError
from dlpipe.tracking.callbacks import EpochMetricsLogger
from dlpipe.tracking.runs import METRICS_EVERY, METRICS_EVERY_ENV, metrics_every


@pytest.fixture
def run_id(mlflow_store: str, monkeypatch: pytest.MonkeyPatch) -> tuple[str, list]:
    mlflow.set_tracking_uri(mlflow_store)
    calls: list = []
    real = MlflowClient.log_batch

    def counted(self, run_id, *args, **kwargs):
        calls.append(run_id)
        return real(self, run_id, *args, **kwargs)

    monkeypatch.setattr(MlflowClient, "log_batch", counted)
    run = MlflowClient().create_run("0")
    return run.info.run_id, calls


def steps(run_id: str, key: str) -> list[int]:
    return sorted(m.step for m in MlflowClient().get_metric_history(run_id, key))


def test_a_fit_writes_its_epochs_in_batches(run_id) -> None:
    rid, calls = run_id
    prob = problem(subsample(dataset("digits"), 10))
    epochs = METRICS_EVERY + 2
    train("perceptron", prob, max_epochs=epochs, callbacks=[EpochMetricsLogger(rid)], **NO_EARLY_STOP)
    assert steps(rid, "val_loss") == list(range(epochs))
    assert steps(rid, "train_loss") == list(range(epochs))
    assert len(calls) == 2  # after epoch METRICS_EVERY and at the end, not one per epoch


class _FailAt(Callback):
    def on_train_epoch_end(self, trainer, pl_module) -> None:
        if trainer.current_epoch == 2:
            raise RuntimeError("boom")


def test_a_failed_fit_keeps_the_epochs_it_trained(run_id) -> None:
    rid, calls = run_id
    prob = problem(subsample(dataset("digits"), 10))
    with pytest.raises(RuntimeError, match="boom"):
        train("perceptron", prob, max_epochs=6, callbacks=[EpochMetricsLogger(rid), _FailAt()], **NO_EARLY_STOP)
    assert steps(rid, "val_loss") == [0, 1, 2]
    assert len(calls) == 1


def test_the_write_cadence_comes_from_the_environment_and_a_bad_value_is_named(monkeypatch) -> None:
    assert metrics_every() == METRICS_EVERY
    monkeypatch.setenv(METRICS_EVERY_ENV, "1")
    assert metrics_every() == 1
    monkeypatch.setenv(METRICS_EVERY_ENV, "0")
    with pytest.raises(ConfigError, match=f"{METRICS_EVERY_ENV}='0': expected a whole number of epochs >= 1"):
        metrics_every()
