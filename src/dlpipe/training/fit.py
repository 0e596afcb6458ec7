"""`fit`: train one model on one train/validation split and return the best epoch's model and history.

Cross-validation, tuning and the final training all call this; they differ only in the split they pass and the
callbacks they add (MLflow logging, Optuna pruning). `evaluate` scores a model on a part (fold or test set) with
Lightning's test loop (exact under DDP); `predict_proba` runs in-process.
"""

from __future__ import annotations

import logging
import time
from dataclasses import dataclass, field

import lightning as L
import torch
from lightning.pytorch.accelerators import CPUAccelerator
from lightning.pytorch.callbacks import Callback
from pydantic import BaseModel

from dlpipe.config import TrainerParams, TrainParams
from dlpipe.data.base import Features
from dlpipe.data.prepared import Part, TrainValSplit
from dlpipe.interrupts import interrupts_kept
from dlpipe.models import build_model, get_architecture
from dlpipe.training.batching import TensorLoader
from dlpipe.training.module import Classifier
from dlpipe.training.trainer import BestWeights, History, find_callback, make_eval_trainer, make_trainer, no_nan_fill

log = logging.getLogger(__name__)

__all__ = ["EVAL_BATCH", "FitResult", "History", "ModelSpec", "evaluate", "fit", "interrupts_kept", "predict_proba"]

# Validation/test batch size (at least the training batch). Not larger: on the CPU, a 512-image batch of the default
# CNN allocates >32 MB activation tensors, which glibc maps fresh (page faults) for every one; that forward took 2.5x
# longer per image than at 256.
EVAL_BATCH = 256
# In-memory data goes onto the GPU when it takes at most this share of the GPU's free memory at fit start; the rest
# is left for the model, its activations and optimiser state, and the other processes that share the GPU.
DEVICE_DATA_SHARE = 0.5


@dataclass
class ModelSpec:
    """What to train: an architecture with its params, and how to train it."""

    arch: str
    model: BaseModel
    train: TrainParams

    def build(
        self,
        input_shape: tuple[int, ...],
        num_classes: int,
        class_names: list[str],
        features: Features | None = None,
        vocabulary: int | None = None,
    ) -> Classifier:
        """The network and the LightningModule its family trains it with (the shared Classifier by default);
        `features`: the tabular columns (categorical vocabularies), for the families that read them; `vocabulary`:
        the token ids of text inputs (the split's tokenizer)."""
        net = build_model(self.arch, self.model, input_shape, num_classes, features, vocabulary)
        module = get_architecture(self.arch).module_class()
        return module(net, self.train, num_classes, class_names, input_shape)


def data_fits_on_device(nbytes: int, free_bytes: int, share: float = DEVICE_DATA_SHARE) -> bool:
    """Whether `nbytes` of in-memory data go onto a GPU with `free_bytes` free (`trainer.data_on_device`)."""
    return nbytes <= share * free_bytes


_said: set[str] = set()


def _say_once(message: str) -> None:
    if message not in _said:
        _said.add(message)
        log.info(message)


class DataPlacement(Callback):
    """Where the in-memory loaders' batches come from on a GPU, decided once before the first batch: with
    `on_device` (trainer.data_on_device) the loaders move onto the GPU when they fit (`data_fits_on_device`);
    otherwise their batches are gathered into pinned host memory, so Lightning's copy to the GPU is asynchronous."""

    def __init__(self, loaders: list[TensorLoader], on_device: bool):
        self.loaders = loaders
        self.on_device = on_device

    def on_fit_start(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        device = pl_module.device
        if device.type == "cpu":
            return
        if self.on_device and device.type != "cuda":  # no free-memory query there: move, as before
            for loader in self.loaders:
                loader.to(device)
            return
        if self.on_device:
            nbytes = sum(loader.nbytes for loader in self.loaders)
            free = torch.cuda.mem_get_info(device)[0]
            if data_fits_on_device(nbytes, free):
                for loader in self.loaders:
                    loader.to(device)
                return
            _say_once(
                f"trainer.data_on_device: the data ({nbytes / 2**20:.0f} MiB) is more than {DEVICE_DATA_SHARE:.0%} "
                f"of the GPU's free memory ({free / 2**20:.0f} MiB); training from pinned-memory batches instead"
            )
        for loader in self.loaders:
            loader.pin_memory = True


@dataclass
class FitResult:
    module: Classifier
    history: list[dict[str, float]]
    val: dict[str, float]  # the kept (best) model's metrics on the validation part
    best_epoch: int | None
    epochs: int
    seconds: float
    extra: dict = field(default_factory=dict)


def loaders_for(
    split: TrainValSplit, train: TrainParams, seed: int, with_unlabeled: bool = False
) -> tuple[TensorLoader, TensorLoader]:
    """Training batches of the labelled samples; `with_unlabeled` adds the samples whose labels are hidden
    (`data.labeled_fraction`; their label is -1), for the modules that learn from them."""
    X, y = split.train.X, split.train.y
    if with_unlabeled and split.unlabeled is not None and len(split.unlabeled):
        X, y = torch.cat([X, split.unlabeled.X]), torch.cat([y, split.unlabeled.y])
    return (
        TensorLoader(X, y, train.batch_size, shuffle=True, seed=seed),
        TensorLoader(split.val.X, split.val.y, max(EVAL_BATCH, train.batch_size)),
    )


def fit(
    spec: ModelSpec,
    split: TrainValSplit,
    class_names: list[str],
    trainer_params: TrainerParams,
    seed: int,
    *,
    max_epochs: int | None = None,
    callbacks: list[Callback] | None = None,
) -> FitResult:
    """Train `spec` on `split.train`, early-stop on `split.val`; the returned module holds the best epoch's weights
    (on every DDP rank) and `val` that epoch's validation metrics."""
    L.seed_everything(seed, workers=True, verbose=False)
    input_shape = tuple(split.train.X.shape[1:])
    norm = split.normalizer
    module = spec.build(input_shape, len(class_names), class_names, norm.features, norm.vocabulary)
    # semi-supervised modules (autoencoder, GAN) also learn from unlabelled inputs, and see the input scale
    semi_supervised = getattr(module, "learns_from_unlabeled", False)
    if semi_supervised:
        module.set_normalizer(split.normalizer)
    module.normalize_batches(norm)  # 8-bit pixel batches (a uint8 training part) are normalised on arrival
    train_loader, val_loader = loaders_for(split, spec.train, seed, with_unlabeled=semi_supervised)
    start = time.perf_counter()
    trainer = make_trainer(trainer_params, spec.train, max_epochs=max_epochs, callbacks=callbacks)
    if not isinstance(trainer.accelerator, CPUAccelerator):  # not on the CPU: a no-op costs every step
        trainer.callbacks.append(DataPlacement([train_loader, val_loader], trainer_params.data_on_device))
    with interrupts_kept(), no_nan_fill():
        trainer.fit(module, train_loader, val_loader)
    best = find_callback(trainer, BestWeights)  # also the history
    assert isinstance(best, BestWeights)
    if best.epoch is None:  # ddp_spawn trains in child processes: their callbacks' records stay there
        raise RuntimeError(f"fit: no epoch recorded in this process (strategy {trainer_params.strategy!r}); use ddp")
    seconds = time.perf_counter() - start
    # the kept weights are the best epoch's: its validation metrics are theirs (no second validation pass)
    return FitResult(module, best.epochs, dict(best.metrics), best.epoch, len(best.epochs), seconds)


def evaluate(
    module: Classifier, part: Part, trainer_params: TrainerParams, *, callbacks: list[Callback] | None = None
) -> dict:
    """Evaluate on `part` (e.g. the held-out test set): scalar, per-class metrics and confusion matrix."""
    loader = TensorLoader(part.X, part.y, EVAL_BATCH)
    trainer = make_eval_trainer(trainer_params, callbacks=callbacks)
    with interrupts_kept(), no_nan_fill():
        trainer.test(module, loader, verbose=False)
    assert module.test_report is not None
    return module.test_report


@torch.no_grad()
def predict_proba(module: Classifier, X: torch.Tensor, batch_size: int = EVAL_BATCH) -> torch.Tensor:
    """Class probabilities for `X`, in-process (no Trainer): for serving and quick checks."""
    module.eval()
    device = module.device
    out = [torch.softmax(module(X[i : i + batch_size].to(device)), dim=1).cpu() for i in range(0, len(X), batch_size)]
    return torch.cat(out) if out else torch.empty(0, module.num_classes)
