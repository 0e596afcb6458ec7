"""The Lightning Trainer factories (devices, strategy, precision, gradient clipping, early stopping, keeping the best
epoch's weights in memory), and `no_nan_fill`, a torch setting scoped to a Trainer call (the per-process thread count
is `dlpipe.training.threads.apply_cpu_threads`)."""

from __future__ import annotations

import contextlib
import math
import sys
from collections.abc import Iterator

import lightning as L
import torch
from lightning.pytorch.callbacks import Callback, EarlyStopping
from lightning.pytorch.profilers import PassThroughProfiler
from lightning.pytorch.trainer.states import TrainerFn

from dlpipe.config import TrainerParams, TrainParams
from dlpipe.training.cuda_check import drop_nvml_check_without_driver
from dlpipe.training.metrics import metric_value, metric_values

# Lightning's import set the NVML-based CUDA check; where no NVIDIA driver exists it only costs (see cuda_check).
# Every process that trains imports this module, after Lightning, which never sets the variable again.
drop_nvml_check_without_driver()


class NoProfiler(PassThroughProfiler):
    """Lightning's default (no profiling) without its cost: the Trainer opens a `profile(name)` context around every
    hook call, ~20 a training step, and the default builds a generator-based context manager for each."""

    _null = contextlib.nullcontext()

    def profile(self, action_name: str) -> contextlib.AbstractContextManager:
        return self._null


@contextlib.contextmanager
def no_nan_fill() -> Iterator[None]:
    """Inside the block, torch's deterministic mode (Lightning's `deterministic=True`) stops pre-filling every new
    tensor with NaN, its guard against ops that read uninitialised memory (none of dlpipe's do; the fill took ~4% of
    a small CNN's CPU step). The process's previous setting is restored on exit."""
    before = torch.utils.deterministic.fill_uninitialized_memory
    torch.utils.deterministic.fill_uninitialized_memory = False
    try:
        yield
    finally:
        torch.utils.deterministic.fill_uninitialized_memory = before


def progress_bar_enabled(trainer: TrainerParams) -> bool:
    return sys.stderr.isatty() if trainer.progress_bar is None else trainer.progress_bar


class History(Callback):
    """Collects every epoch's logged metrics (train_* and val_*) as Python floats (see `metric_value`)."""

    def __init__(self) -> None:
        self.epochs: list[dict[str, float]] = []

    def on_train_epoch_end(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        row = metric_values(trainer.callback_metrics, ("train_", "val_"))
        self.epochs.append({"epoch": trainer.current_epoch, **row})


class BestWeights(History):
    """A `History` that also keeps the weights of the best epoch on the monitor in memory and loads them into the
    module when training ends. (One callback for both: Lightning calls every callback ~7 times a training step.)

    "Best" is what `ModelCheckpoint(monitor, mode, save_top_k=1)` kept: the first epoch, then every epoch that strictly
    improves the monitor; a NaN counts as the worst value (it never improves, and any number improves on it). The
    monitor is read after each validation, where every DDP rank sees the same synced value; rank 0 copies its weights
    to the CPU, and when training ends every rank receives rank 0's copy through the strategy (no file: ranks on other
    nodes share no temporary directory). `epoch` and `metrics` (the validation metrics of that epoch, i.e. of the kept
    weights) are the same on every rank.
    """

    def __init__(self, monitor: str, mode: str):
        super().__init__()
        if mode not in ("min", "max"):
            raise ValueError(f"mode must be 'min' or 'max', not {mode!r}")
        self.monitor = monitor
        self.mode = mode
        self.epoch: int | None = None
        self.score: float | None = None
        self.metrics: dict[str, float] = {}
        self._state: dict[str, torch.Tensor] | None = None

    def _improves(self, value: float) -> bool:
        if self.score is None:
            return True
        if math.isnan(value):
            return False
        return value < self.score if self.mode == "min" else value > self.score

    def on_validation_end(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        if trainer.sanity_checking or trainer.state.fn != TrainerFn.FITTING:
            return
        metrics = trainer.callback_metrics
        if self.monitor not in metrics:
            raise KeyError(f"BestWeights: monitor {self.monitor!r} was not logged (logged: {sorted(metrics)})")
        value = metric_value(self.monitor, metrics[self.monitor])
        if not self._improves(value):
            return
        worst = math.inf if self.mode == "min" else -math.inf
        self.epoch, self.score = trainer.current_epoch, worst if math.isnan(value) else value
        self.metrics = {k: metric_value(k, v) for k, v in metrics.items() if k.startswith("val_")}
        if trainer.is_global_zero:
            self._state = {k: v.detach().to("cpu", copy=True) for k, v in pl_module.state_dict().items()}

    def on_train_end(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        if self.epoch is None:
            return
        kept = (self.epoch, self.score, self.metrics, self._state)
        self.epoch, self.score, self.metrics, state = trainer.strategy.broadcast(kept, src=0)
        pl_module.load_state_dict(state)
        self._state = None


def make_trainer(
    trainer: TrainerParams,
    train: TrainParams,
    *,
    max_epochs: int | None = None,
    callbacks: list[Callback] | None = None,
    with_validation: bool = True,
    keep_best: bool = True,
) -> L.Trainer:
    """A Trainer from params. With validation: early stopping (when enabled) and, with `keep_best`, a `BestWeights`
    callback on the early-stopping monitor, which also records the History. Sets no process-wide state (see
    `apply_cpu_threads`); Lightning's `deterministic=True` does switch on torch's deterministic algorithms."""
    cbs: list[Callback] = list(callbacks or [])
    es = train.early_stopping
    if with_validation and es.enabled:
        cbs.append(EarlyStopping(monitor=es.monitor, mode=es.mode, patience=es.patience, min_delta=es.min_delta))
    if with_validation and keep_best:
        cbs.append(BestWeights(es.monitor, es.mode))
    return L.Trainer(
        accelerator=trainer.accelerator,
        devices=trainer.devices,
        strategy=trainer.strategy,
        num_nodes=trainer.num_nodes,
        precision=trainer.precision,
        deterministic=trainer.deterministic,
        max_epochs=max_epochs or train.max_epochs,
        gradient_clip_val=train.gradient_clip_val or None,
        gradient_clip_algorithm=train.gradient_clip_algorithm if train.gradient_clip_val else None,
        callbacks=cbs,
        logger=False,
        enable_checkpointing=False,
        enable_progress_bar=progress_bar_enabled(trainer),
        enable_model_summary=False,
        num_sanity_val_steps=0,
        limit_val_batches=1.0 if with_validation else 0,
        use_distributed_sampler=False,  # TensorLoader shards by rank itself
        profiler=NoProfiler(),
    )


def make_eval_trainer(trainer: TrainerParams, *, callbacks: list[Callback] | None = None) -> L.Trainer:
    """A Trainer for `test`/`validate` only: devices, strategy and precision from params, nothing else."""
    return L.Trainer(
        accelerator=trainer.accelerator,
        devices=trainer.devices,
        strategy=trainer.strategy,
        num_nodes=trainer.num_nodes,
        precision=trainer.precision,
        logger=False,
        enable_checkpointing=False,
        enable_progress_bar=False,
        enable_model_summary=False,
        use_distributed_sampler=False,
        callbacks=callbacks,
        profiler=NoProfiler(),
    )


def find_callback(trainer: L.Trainer, kind: type[Callback]) -> Callback | None:
    """The trainer's first callback of type `kind`, if any."""
    return next((cb for cb in trainer.callbacks if isinstance(cb, kind)), None)
