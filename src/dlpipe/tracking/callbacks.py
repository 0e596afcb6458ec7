"""Lightning callbacks that record training in MLflow."""

from __future__ import annotations

import lightning as L
from lightning.pytorch.callbacks import Callback

from dlpipe.tracking.runs import log_metrics
from dlpipe.training.metrics import metric_values


class EpochMetricsLogger(Callback):
    """Logs every epoch's train_*/val_* metrics to `run_id` as one asynchronous batch (rank 0 only)."""

    def __init__(self, run_id: str):
        self.run_id = run_id

    def on_train_epoch_end(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        if not trainer.is_global_zero:
            return
        metrics = metric_values(trainer.callback_metrics, ("train_", "val_"))  # float64, rates in [0, 1]
        log_metrics(self.run_id, metrics, step=trainer.current_epoch, synchronous=False)
