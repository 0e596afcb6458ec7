"""What the modules that also learn from unlabelled inputs (autoencoder, GAN) share.

`fit` hands such a module (`learns_from_unlabeled`) every training input: the labelled ones and, under
`data.labeled_fraction` < 1, those whose labels are hidden (label `HIDDEN`, -1), mixed in the same shuffled batches,
and tells it the training normaliser (`set_normalizer`: the raw input scale, for targets and pictures in [0, 1]). The
supervised loss counts labelled rows only: hidden rows are excluded by `ignore_index`, so no hidden label can reach
it (it never had one: the data carries -1 there). `train_loss` and `train_accuracy` are over the labelled rows.

Pictures and extra numbers for MLflow come from two pure hooks that the tracking callback calls (no MLflow here):
`epoch_images(epoch)` after each training epoch, and `fit_artifacts(X, y)` once the kept weights are loaded, on
the validation inputs.
"""

from __future__ import annotations

import inspect
import re
from dataclasses import dataclass, field

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn
from torchmetrics.classification import MulticlassAccuracy
from torchvision.utils import make_grid

from dlpipe.config import TrainParams
from dlpipe.data.prepared import HIDDEN
from dlpipe.data.splits import Normalizer
from dlpipe.training.metrics import BatchMean
from dlpipe.training.module import Classifier

TILE = 32  # pixels per image side in the logged grids (digits are 8x8: upscaled to be seen)


@dataclass
class Artifacts:
    """What a module offers MLflow after fitting: images (artifact file -> H x W x C floats in [0, 1]), metrics,
    and JSON tables (artifact file -> data)."""

    images: dict[str, np.ndarray] = field(default_factory=dict)
    metrics: dict[str, float] = field(default_factory=dict)
    tables: dict[str, dict] = field(default_factory=dict)


def image_grid(images: torch.Tensor, nrow: int) -> np.ndarray:
    """N x C x H x W images in [0, 1] as one H x W x 3 picture, each upscaled to about `TILE` pixels a side."""
    images = images.detach().float().cpu().clamp(0, 1)
    scale = max(1, TILE // max(images.shape[-2:]))
    if scale > 1:
        images = images.repeat_interleave(scale, dim=-2).repeat_interleave(scale, dim=-1)
    grid = make_grid(images, nrow=nrow, padding=2, pad_value=1.0)
    return grid.permute(1, 2, 0).numpy()


def metric_safe(name: str) -> str:
    return re.sub(r"[^A-Za-z0-9_.\-]", "_", str(name))


class SemiSupervised(Classifier):
    """A Classifier whose training batches may hold unlabelled rows; subclasses add their own losses."""

    learns_from_unlabeled = True
    extra_losses: tuple[str, ...] = ()  # logged per epoch as train_<name> (batch-size weighted means)

    def __init__(
        self,
        model: nn.Module,
        train: TrainParams,
        num_classes: int,
        class_names: list[str] | None = None,
        input_shape: tuple[int, ...] | None = None,
    ):
        super().__init__(model, train, num_classes, class_names, input_shape)
        self.train_accuracy = MulticlassAccuracy(num_classes, average="micro", ignore_index=HIDDEN)
        shape = tuple(input_shape) if input_shape else tuple(getattr(model, "input_shape", ()))
        stat_shape = (shape[0], 1, 1) if len(shape) == 3 else shape
        # the training normaliser (identity until `set_normalizer`): raw = x * std + mean
        self.register_buffer("input_mean", torch.zeros(stat_shape), persistent=False)
        self.register_buffer("input_std", torch.ones(stat_shape), persistent=False)
        self.train_extra = nn.ModuleDict({name: BatchMean() for name in self.extra_losses})
        self._train_extra: list[dict[str, torch.Tensor]] = []

    def set_normalizer(self, normalizer: Normalizer) -> None:
        with torch.no_grad():
            self.input_mean.copy_(normalizer.mean.reshape(self.input_mean.shape))
            self.input_std.copy_(normalizer.std.reshape(self.input_std.shape))

    def to_raw(self, x: torch.Tensor) -> torch.Tensor:
        return x * self.input_std + self.input_mean

    def from_raw(self, raw: torch.Tensor) -> torch.Tensor:
        return (raw - self.input_mean) / self.input_std

    def supervised_loss(self, logits: torch.Tensor, y: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """(cross-entropy mean over the labelled rows, their count); 0 for a batch without labels (the graph still
        reaches every head parameter: DDP needs them all)."""
        count = (y != HIDDEN).sum()
        total = F.cross_entropy(
            logits, y, ignore_index=HIDDEN, reduction="sum", label_smoothing=self.train_params.label_smoothing
        )
        return total / count.clamp_min(1), count

    def record_step(
        self, logits: torch.Tensor, y: torch.Tensor, sup: torch.Tensor, count: torch.Tensor, **extra: torch.Tensor
    ) -> None:
        """Keep one step's outputs on the device; the epoch's are logged at its last batch (no sync per step)."""
        trainer = self._trainer
        if trainer is None:
            return
        self._train_outputs.append((logits.argmax(dim=1), y, sup.detach(), count))
        self._train_extra.append({k: v.detach() for k, v in extra.items()})
        if trainer.is_last_batch:
            self._log_train_epoch()

    def on_train_epoch_start(self) -> None:
        super().on_train_epoch_start()
        self._train_extra = []

    def _log_train_epoch(self) -> None:
        preds, targets, losses, counts = zip(*self._train_outputs, strict=True)
        extra, self._train_extra = self._train_extra, []
        self._train_outputs = []
        self.train_accuracy.update(torch.cat(preds), torch.cat(targets))  # hidden rows ignored
        self.train_loss.update(torch.stack(losses), torch.stack(counts))
        self.log("train_accuracy", self.train_accuracy, on_step=False, on_epoch=True)
        self.log("train_loss", self.train_loss, on_step=False, on_epoch=True)
        sizes = torch.tensor([len(t) for t in targets])
        for name, metric in self.train_extra.items():
            metric.update(torch.stack([step[name] for step in extra]), sizes)
            self.log(f"train_{name}", metric, on_step=False, on_epoch=True)

    # hooks for the tracking callback (pure: they return pictures and numbers, MLflow stays out of the module)

    def epoch_images(self, epoch: int) -> dict[str, np.ndarray]:
        return {}

    def fit_artifacts(self, X: torch.Tensor, y: torch.Tensor) -> Artifacts:
        return Artifacts()


def keep_step_signature(cls: type[Classifier]) -> type[Classifier]:
    """Lightning inspects training_step's signature every step: a stored __signature__ answers at once (as for
    Classifier)."""
    cls.training_step.__signature__ = inspect.signature(cls.training_step)  # type: ignore[attr-defined]
    return cls
