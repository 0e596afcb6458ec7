"""One LightningModule for classification, shared by every architecture."""

from __future__ import annotations

import inspect
from typing import Any

import lightning as L
import torch
import torch.nn.functional as F
from torch import nn
from torchmetrics.classification import MulticlassAccuracy

from dlpipe.config import TrainParams
from dlpipe.data.splits import Normalizer
from dlpipe.training.augmentation import build_augmentation
from dlpipe.training.metrics import BatchMean, detailed_metrics, report, scalar_metrics


def penalised_weights(model: nn.Module) -> list[nn.Parameter]:
    """The parameters L1/L2 penalise: weight matrices and kernels (not biases or norm scales)."""
    return [p for p in model.parameters() if p.requires_grad and p.dim() > 1]


class Classifier(L.LightningModule):
    """Cross-entropy classification with L1/L2 penalties, torchmetrics metrics and configurable optimisation.

    Logged per epoch (DDP-synced): `train_loss` and `train_accuracy` (over the epoch's training batches), `val_loss`
    and `val_<m>` for every m in SCALAR_METRICS. `trainer.test` leaves the evaluation report in `test_report`.

    Batches of 8-bit pixels (a uint8 training part, see `data.prepared`) are normalised once on the module's device
    (`on_after_batch_transfer`) with the split's normaliser (`normalize_batches`), the same transform as the float
    parts get: every step reads float32 inputs; what is exported and served takes floats in [0, 1] as before.
    """

    def __init__(
        self,
        model: nn.Module,
        train: TrainParams,
        num_classes: int,
        class_names: list[str] | None = None,
        input_shape: tuple[int, ...] | None = None,
    ):
        super().__init__()
        self.model = model
        self.train_params = train
        self.num_classes = num_classes
        self.class_names = class_names or [str(i) for i in range(num_classes)]
        self.augment = build_augmentation(train.augmentation, input_shape) if input_shape else None
        # training: accuracy and loss only (nothing reads other train_* metrics), from the epoch's predictions
        self.train_accuracy = MulticlassAccuracy(num_classes, average="micro")
        self.val_metrics = scalar_metrics(num_classes).clone(prefix="val_")
        self.test_metrics = scalar_metrics(num_classes)
        self.test_detailed = detailed_metrics(num_classes)
        # evaluation shares differ in size across DDP ranks: these losses sync exactly (see BatchMean)
        self.train_loss = BatchMean()
        self.val_loss = BatchMean()
        self.test_report: dict[str, Any] | None = None
        self._batch_normalizer: Normalizer | None = None
        self._train_outputs: list[tuple[torch.Tensor, torch.Tensor, torch.Tensor]] = []

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.model(x)

    # Lightning's per-step overhead: three hooks that cost a small MLP ~10% of a step (benchmarks/training_overhead.py)

    def __setattr__(self, name: str, value: Any) -> None:
        if name == "_current_fx_name":
            # Lightning sets this plain string around every hook call, ~40 times a training step: skip nn.Module's
            # checks for parameters, buffers and submodules (as Lightning's own _ResultMetric does)
            self.__dict__[name] = value
        else:
            super().__setattr__(name, value)

    def transfer_batch_to_device(self, batch: Any, device: torch.device, dataloader_idx: int) -> Any:
        if isinstance(batch, (tuple, list)) and all(isinstance(t, torch.Tensor) and t.device == device for t in batch):
            return batch  # already there (CPU, or loaders moved onto the GPU once): no walk through the collection
        return super().transfer_batch_to_device(batch, device, dataloader_idx)

    def normalize_batches(self, normalizer: Normalizer) -> None:
        """Normalise 8-bit pixel batches (uint8) with `normalizer` on arrival; other batches pass as they are."""
        self._batch_normalizer = normalizer

    def on_after_batch_transfer(self, batch: Any, dataloader_idx: int) -> Any:
        if not (isinstance(batch, (tuple, list)) and batch and getattr(batch[0], "dtype", None) == torch.uint8):
            return batch
        if self._batch_normalizer is None:
            raise RuntimeError("a batch of 8-bit pixels but no normaliser: call normalize_batches first")
        x = batch[0]
        self._batch_normalizer = norm = self._batch_normalizer.to(x.device)  # statistics moved once
        return (norm(x), *batch[1:])

    def configure_gradient_clipping(
        self,
        optimizer: torch.optim.Optimizer,
        gradient_clip_val: float | None = None,
        gradient_clip_algorithm: str | None = None,
    ) -> None:
        if gradient_clip_val:  # Lightning calls this every step, also when clipping is off
            super().configure_gradient_clipping(optimizer, gradient_clip_val, gradient_clip_algorithm)

    def penalty(self) -> torch.Tensor:
        p = self.train_params
        total = torch.zeros((), device=self.device)
        if p.l1 or p.l2:
            for w in penalised_weights(self.model):
                if p.l1:
                    total = total + p.l1 * w.abs().sum()
                if p.l2:
                    total = total + p.l2 * w.pow(2).sum()
        return total

    def training_step(self, batch: tuple[torch.Tensor, torch.Tensor], batch_idx: int) -> torch.Tensor:
        x, y = batch
        if self.augment is not None:
            x = self.augment(x)
        logits = self.model(x)
        data_loss = F.cross_entropy(logits, y, label_smoothing=self.train_params.label_smoothing)
        p = self.train_params
        loss = data_loss + self.penalty() if (p.l1 or p.l2) else data_loss
        trainer = self._trainer
        if trainer is not None:
            # Per step only device-side work (no host sync, no torchmetrics call): the epoch's predictions, targets
            # and losses are handed to torchmetrics once, on the last batch. Updating seven metrics every step took
            # ~165 us, ~15% of a small MLP's CPU step. (Micro accuracy counts matches, O(N); the macro metrics'
            # confusion counts take an N x C^2 tensor in deterministic mode, too big for a whole epoch at once.)
            self._train_outputs.append((logits.argmax(dim=1), y, data_loss.detach()))
            if trainer.is_last_batch:
                self._log_train_epoch()
        return loss

    def on_train_epoch_start(self) -> None:
        self._train_outputs = []

    def _log_train_epoch(self) -> None:
        preds, targets, losses = zip(*self._train_outputs, strict=True)
        self._train_outputs = []
        self.train_accuracy.update(torch.cat(preds), torch.cat(targets))
        self.train_loss.update(torch.stack(losses), torch.tensor([len(t) for t in targets]))
        # Lightning computes the logged metric objects (DDP-synced) at epoch end and resets them
        self.log("train_accuracy", self.train_accuracy, on_step=False, on_epoch=True)
        self.log("train_loss", self.train_loss, on_step=False, on_epoch=True)

    def validation_step(self, batch: tuple[torch.Tensor, torch.Tensor], batch_idx: int) -> None:
        x, y = batch
        logits = self.model(x)
        self.val_metrics.update(logits, y)
        self.val_loss.update(F.cross_entropy(logits, y), len(y))

    def on_validation_epoch_end(self) -> None:
        # logged once per validation, not per batch: Lightning computes the objects (DDP-synced) and resets them
        self.log_dict(self.val_metrics)
        self.log("val_loss", self.val_loss)

    def test_step(self, batch: tuple[torch.Tensor, torch.Tensor], batch_idx: int) -> None:
        x, y = batch
        logits = self.model(x)
        self.test_metrics.update(logits, y)
        self.test_detailed.update(logits, y)

    def on_test_epoch_end(self) -> None:
        # computed DDP-synced: every rank holds the report of the whole part
        self.test_report = report(self.test_metrics.compute(), self.test_detailed.compute(), self.class_names)
        self.test_metrics.reset()
        self.test_detailed.reset()

    def configure_optimizers(self) -> Any:
        p = self.train_params
        optimizer = make_optimizer(p, parameter_groups(self, p.lr))
        if p.scheduler == "none":
            return optimizer
        if p.scheduler == "step":
            sched = torch.optim.lr_scheduler.StepLR(optimizer, step_size=p.step_size, gamma=p.gamma)
        elif p.scheduler == "cosine":
            sched = torch.optim.lr_scheduler.CosineAnnealingLR(optimizer, T_max=max(1, self.trainer.max_epochs or 1))
        elif p.scheduler == "plateau":
            sched = torch.optim.lr_scheduler.ReduceLROnPlateau(optimizer, factor=p.gamma, patience=2)
            return {"optimizer": optimizer, "lr_scheduler": {"scheduler": sched, "monitor": "val_loss"}}
        else:  # onecycle: stepped every batch
            total = max(1, int(self.trainer.estimated_stepping_batches))
            max_lr = [group["lr"] for group in optimizer.param_groups]  # each group peaks at its own rate
            sched = torch.optim.lr_scheduler.OneCycleLR(optimizer, max_lr=max_lr, total_steps=total)
            return {"optimizer": optimizer, "lr_scheduler": {"scheduler": sched, "interval": "step"}}
        return {"optimizer": optimizer, "lr_scheduler": {"scheduler": sched, "interval": "epoch"}}


# Lightning inspects training_step's signature every step (inspect.getfullargspec: is batch_idx passed?); a stored
# __signature__ answers without re-parsing the function
Classifier.training_step.__signature__ = inspect.signature(Classifier.training_step)  # type: ignore[attr-defined]


def parameter_groups(module: L.LightningModule, lr: float) -> list[nn.Parameter] | list[dict[str, Any]]:
    """The trainable parameters; grouped by learning rate when the network says how (`lr_groups()`: lists of
    parameters with a factor of `lr`, e.g. a pretrained backbone slower than its new head)."""
    trainable = [q for q in module.parameters() if q.requires_grad]
    lr_groups = getattr(module.model, "lr_groups", None)
    if lr_groups is None:
        return trainable
    groups = [{"params": list(params), "lr": lr * factor} for params, factor in lr_groups() if params]
    grouped = {id(q) for group in groups for q in group["params"]}
    rest = [q for q in trainable if id(q) not in grouped]
    return groups + ([{"params": rest, "lr": lr}] if rest else [])


def make_optimizer(p: TrainParams, params: list[nn.Parameter] | list[dict[str, Any]]) -> torch.optim.Optimizer:
    wd = p.weight_decay
    if p.optimizer == "sgd":
        return torch.optim.SGD(params, lr=p.lr, weight_decay=wd)
    if p.optimizer == "momentum":
        return torch.optim.SGD(params, lr=p.lr, momentum=p.momentum, nesterov=p.nesterov, weight_decay=wd)
    if p.optimizer == "adagrad":
        return torch.optim.Adagrad(params, lr=p.lr, weight_decay=wd)
    if p.optimizer == "rmsprop":
        return torch.optim.RMSprop(params, lr=p.lr, momentum=p.momentum, weight_decay=wd)
    if p.optimizer == "adam":
        return torch.optim.Adam(params, lr=p.lr, weight_decay=wd)
    return torch.optim.AdamW(params, lr=p.lr, weight_decay=wd)
