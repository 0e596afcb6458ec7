"""Lightning callbacks that record training in MLflow."""

from __future__ import annotations

import lightning as L
import mlflow
from lightning.pytorch.callbacks import Callback

from dlpipe.tracking.runs import MetricBuffer, log_batch, log_metrics, metrics_every
from dlpipe.training.metrics import metric_values


class EpochMetricsLogger(Callback):
    """Records every epoch's train_*/val_* metrics on `run_id` (rank 0 only): kept in memory and written in one
    batch when fitting ends (or fails), and every `every` epochs of a long fit (default `metrics_every()`), instead
    of one store write per epoch. Also what a module offers beyond them: `epoch_images(epoch)` after each epoch
    (e.g. a GAN's samples) and, once fitting ends with the kept weights loaded, `fit_artifacts(X, y)` on the
    validation inputs (e.g. an autoencoder's reconstructions and per-class errors)."""

    def __init__(self, run_id: str, every: int | None = None):
        self.run_id = run_id
        self.every = every or metrics_every()
        self.buffer = MetricBuffer()

    def flush(self) -> None:
        items = self.buffer.take()
        if items:
            log_batch(self.run_id, items)

    def on_train_epoch_end(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        if not trainer.is_global_zero:
            return
        metrics = metric_values(trainer.callback_metrics, ("train_", "val_"))  # float64, rates in [0, 1]
        self.buffer.add(metrics, trainer.current_epoch)
        if (trainer.current_epoch + 1) % self.every == 0:
            self.flush()
        hook = getattr(pl_module, "epoch_images", None)
        if hook is not None:
            client = mlflow.MlflowClient()
            for path, image in hook(trainer.current_epoch).items():
                client.log_image(self.run_id, image, artifact_file=path)

    def on_exception(self, trainer: L.Trainer, pl_module: L.LightningModule, exception: BaseException) -> None:
        self.flush()  # the epochs a failed or interrupted fit trained stay recorded

    def on_fit_end(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        self.flush()
        hook = getattr(pl_module, "fit_artifacts", None)
        loader = trainer.val_dataloaders
        if hook is None or not trainer.is_global_zero or loader is None or not hasattr(loader, "X"):
            return
        artifacts = hook(loader.X, loader.y)
        client = mlflow.MlflowClient()
        for path, image in artifacts.images.items():
            client.log_image(self.run_id, image, artifact_file=path)
        for path, table in artifacts.tables.items():
            client.log_dict(self.run_id, table, path)
        if artifacts.metrics:
            log_metrics(self.run_id, artifacts.metrics)
