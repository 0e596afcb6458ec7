"""`fit`: train one model on one train/validation split and return the best epoch's model and history.

Cross-validation, tuning and the final training all call this; they differ only in the split they pass and the
callbacks they add (MLflow logging, Optuna pruning).
"""

from __future__ import annotations

import contextlib
import tempfile
import time
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path

import lightning as L
import torch
from lightning.pytorch.callbacks import Callback
from pydantic import BaseModel

from dlpipe.config import TrainerParams, TrainParams
from dlpipe.data.prepared import Part, TrainValSplit
from dlpipe.models import build_model
from dlpipe.training.batching import TensorLoader
from dlpipe.training.module import Classifier
from dlpipe.training.trainer import make_trainer

EVAL_BATCH = 1024


@dataclass
class ModelSpec:
    """What to train: an architecture with its params, and how to train it."""

    arch: str
    model: BaseModel
    train: TrainParams

    def build(self, input_shape: tuple[int, ...], num_classes: int, class_names: list[str]) -> Classifier:
        net = build_model(self.arch, self.model, input_shape, num_classes)
        return Classifier(net, self.train, num_classes, class_names, input_shape)


class History(Callback):
    """Collects every epoch's logged metrics (train_* and val_*) as plain floats."""

    def __init__(self) -> None:
        self.epochs: list[dict[str, float]] = []

    def on_train_epoch_end(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        row = {k: float(v) for k, v in trainer.callback_metrics.items() if k.startswith(("train_", "val_"))}
        self.epochs.append({"epoch": trainer.current_epoch, **row})


class DataToDevice(Callback):
    """Moves in-memory loaders onto the module's device once, before the first batch."""

    def __init__(self, loaders: list[TensorLoader]):
        self.loaders = loaders

    def on_fit_start(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        if pl_module.device.type != "cpu":
            for loader in self.loaders:
                loader.to(pl_module.device)


@contextlib.contextmanager
def interrupts_kept() -> Iterator[None]:
    """Lightning turns Ctrl-C (and our SIGTERM) inside a Trainer call into sys.exit(1): make it an interrupt again."""
    try:
        yield
    except SystemExit as exc:
        if isinstance(exc.__context__, KeyboardInterrupt):
            raise KeyboardInterrupt from exc
        raise


@dataclass
class FitResult:
    module: Classifier
    history: list[dict[str, float]]
    val: dict[str, float]  # the kept (best) model's metrics on the validation part
    best_epoch: int | None
    epochs: int
    seconds: float
    extra: dict = field(default_factory=dict)


def loaders_for(split: TrainValSplit, train: TrainParams, seed: int) -> tuple[TensorLoader, TensorLoader]:
    return (
        TensorLoader(split.train.X, split.train.y, train.batch_size, shuffle=True, seed=seed),
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
    """Train `spec` on `split.train`, early-stop on `split.val`, keep and re-validate the best epoch."""
    L.seed_everything(seed, workers=True, verbose=False)
    input_shape = tuple(split.train.X.shape[1:])
    module = spec.build(input_shape, len(class_names), class_names)
    train_loader, val_loader = loaders_for(split, spec.train, seed)
    history = History()
    cbs: list[Callback] = [history, *(callbacks or [])]
    if trainer_params.data_on_device:
        cbs.append(DataToDevice([train_loader, val_loader]))
    start = time.perf_counter()
    with tempfile.TemporaryDirectory(prefix="dlpipe-ckpt-") as ckpt_dir:
        trainer = make_trainer(trainer_params, spec.train, max_epochs=max_epochs, callbacks=cbs,
                               checkpoint_dir=Path(ckpt_dir))  # fmt: skip
        with interrupts_kept():
            trainer.fit(module, train_loader, val_loader)
        best_epoch = _restore_best(trainer, module)
        seconds = time.perf_counter() - start
        val = trainer.validate(module, val_loader, verbose=False)[0]
    return FitResult(module, history.epochs, {k: float(v) for k, v in val.items()}, best_epoch,
                     len(history.epochs), seconds)  # fmt: skip


def _restore_best(trainer: L.Trainer, module: Classifier) -> int | None:
    """Load the best checkpoint's weights into `module`; returns the best epoch (None without checkpoint)."""
    ckpt = trainer.checkpoint_callback
    path = getattr(ckpt, "best_model_path", "")
    if not path or not Path(path).is_file():
        return None
    state = torch.load(path, map_location=module.device, weights_only=False)
    module.load_state_dict(state["state_dict"])
    return int(state["epoch"])


def evaluate(module: Classifier, part: Part, trainer_params: TrainerParams) -> dict:
    """Evaluate on `part` (e.g. the held-out test set): scalar, per-class metrics and confusion matrix."""
    loader = TensorLoader(part.X, part.y, EVAL_BATCH)
    trainer = L.Trainer(
        accelerator=trainer_params.accelerator,
        devices=trainer_params.devices,
        strategy=trainer_params.strategy,
        num_nodes=trainer_params.num_nodes,
        precision=trainer_params.precision,
        logger=False,
        enable_progress_bar=False,
        enable_model_summary=False,
        use_distributed_sampler=False,
    )
    with interrupts_kept():
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
