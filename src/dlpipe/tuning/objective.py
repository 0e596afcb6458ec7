"""The objective of a trial: train the sampled model and return the selection metric on data it did not train on.

Validation is one stratified slice of the training part (`data.val_size`), or the mean over the first k
cross-validation folds, each scored once by a model that early-stopped on an inner slice of the other folds (the
same clean protocol as the cv phase). `tune.cv_folds: auto` uses every fold when the validation slice is too small
to tell trials apart: when some class has fewer than `MIN_VAL_PER_CLASS` samples in it (one misclassified sample
would then move that class's recall by more than 0.1). The test set is never touched. With
`tune.max_train_samples`, a trial trains on a stratified subsample of its training rows (the same one every trial:
a cheaper fidelity for a large dataset); what it is scored on keeps every row.

Every epoch the monitored validation metric (`val_<selection metric>`, or `val_accuracy` for the *_positive
metrics) is reported to Optuna (step = fold x epochs + epoch) and the pruner may stop the trial there. The kept
model's validation loss is stored on the trial (`val_loss`): equal values are ranked by it. A non-finite loss (the
optimised one, with its L1/L2 penalties, in any batch; or the epoch's validation loss) ends the trial with
`NonFiniteLoss` (a FAIL).
"""

from __future__ import annotations

import math
from collections.abc import Callable
from typing import Any

import lightning as L
import numpy as np
import optuna
import torch
from lightning.pytorch.callbacks import Callback

from dlpipe.config import Params, TrainerParams, apply_overrides
from dlpipe.data.prepared import PreparedData, TrainValSplit
from dlpipe.data.splits import carve_validation
from dlpipe.evaluation.cv import run_fold
from dlpipe.metric_names import SCALAR_METRICS, monitor_for, per_class_name
from dlpipe.profile import timed
from dlpipe.training.fit import ModelSpec, evaluate, fit
from dlpipe.training.metrics import metric_values
from dlpipe.tuning.space import SearchSpace
from dlpipe.tuning.study import epochs_committed, epochs_per_fit

EpochHook = Callable[[int, dict[str, float]], None]  # (step, train_*/val_* metrics of the epoch)
MIN_VAL_PER_CLASS = 10  # tune.cv_folds: auto uses folds when some class has fewer validation samples


class NonFiniteLoss(RuntimeError):
    """The loss became NaN or infinite: the trial fails (the study goes on)."""


def selection_value(report: dict, metric: str, positive_class: str | None) -> float:
    """The selection metric from an evaluation report (`dlpipe.training.fit.evaluate`, its values already in [0, 1])."""
    if metric in SCALAR_METRICS:
        return float(report[metric])
    assert positive_class is not None
    return float(report["per_class"][positive_class][per_class_name(metric)])


def objective_folds(params: Params, data: PreparedData) -> int:
    """How many folds the objective averages over: `tune.cv_folds`, with `auto` resolved on the data."""
    if params.tune.cv_folds != "auto":
        return int(params.tune.cv_folds)
    y = data.y_numpy
    _, val = carve_validation(y, data.splits.train_idx, params.data.val_size, params.seed)
    smallest = int(np.bincount(y[val], minlength=len(data.dataset.class_names)).min())
    return data.splits.folds if smallest < MIN_VAL_PER_CLASS else 0


def tuning_trainer(trainer: TrainerParams) -> TrainerParams:
    """Trainer params for trials: one device per trial (parallel trials are worker processes, not DDP) and no
    progress bar unless asked for."""
    return trainer.model_copy(
        update={
            "devices": 1,
            "strategy": "auto",
            "num_nodes": 1,
            "progress_bar": bool(trainer.progress_bar),
        }
    )


class EpochReporter(Callback):
    """Reports the monitored validation metric to the trial every epoch and prunes; fails on a non-finite loss.
    With `budget_epochs` it stops the fit (keeping its best epoch) once the study's epochs reach that budget."""

    def __init__(
        self,
        trial: optuna.Trial,
        monitor: str,
        offset: int = 0,
        on_epoch: EpochHook | None = None,
        budget_epochs: int | None = None,
    ):
        self.trial = trial
        self.monitor = monitor
        self.offset = offset
        self.on_epoch = on_epoch
        self.budget_epochs = budget_epochs
        self.epochs = 0
        self._nonfinite: torch.Tensor | None = None  # any batch's optimised loss (with L1/L2) not finite

    def on_train_batch_end(
        self, trainer: L.Trainer, pl_module: L.LightningModule, outputs: Any, batch: Any, batch_idx: int
    ) -> None:
        loss = outputs.get("loss") if isinstance(outputs, dict) else outputs
        if isinstance(loss, torch.Tensor):  # flagged on the device; read once per epoch (no sync per batch)
            bad = ~torch.isfinite(loss.detach())
            self._nonfinite = bad if self._nonfinite is None else self._nonfinite | bad

    def on_train_epoch_end(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        metrics = metric_values(trainer.callback_metrics, ("train_", "val_"))
        step = self.offset + trainer.current_epoch
        self.epochs += 1
        if self.on_epoch is not None:
            self.on_epoch(step, metrics)
        if self._nonfinite is not None and bool(self._nonfinite):
            raise NonFiniteLoss(
                f"the training loss (with L1/L2 penalties) was not finite in epoch {trainer.current_epoch}"
            )
        for name in ("train_loss", "val_loss"):
            if name in metrics and not math.isfinite(metrics[name]):
                raise NonFiniteLoss(f"{name} is {metrics[name]} at epoch {trainer.current_epoch}")
        value = metrics.get(self.monitor)
        if value is None or not math.isfinite(value):
            return
        self.trial.report(value, step)
        if self.trial.should_prune():
            raise optuna.TrialPruned(f"{self.monitor} {value:.4f} at step {step}")
        if self.budget_epochs is not None:
            trials = self.trial.study.get_trials(deepcopy=False)
            if epochs_committed(trials, self.trial.number) >= self.budget_epochs:
                trainer.should_stop = True  # the study budget is spent: the trial ends like an early stop


class Objective:
    """`objective(trial, on_epoch=None) -> value` for one architecture; counts the epochs it trained."""

    def __init__(self, params: Params, arch: str, space: SearchSpace, data: PreparedData):
        self.params = params
        self.arch = arch
        self.space = space
        self.data = data
        self.metric = params.selection.metric
        self.positive_class = params.selection.positive_class
        self.monitor = monitor_for(self.metric)
        self.trainer = tuning_trainer(params.trainer)
        self.max_epochs = params.tune.max_epochs
        self._folds: int | None = None
        self.stride = epochs_per_fit(params, space)
        self.epochs = 0  # epochs trained by the last call (also when it was pruned or failed)
        self._holdout: TrainValSplit | None = None

    @property
    def folds(self) -> int:
        """Folds the objective averages over (0: the validation slice), resolved on the data once."""
        if self._folds is None:
            self._folds = objective_folds(self.params, self.data)
        return self._folds

    @property
    def holdout(self) -> TrainValSplit:
        if self._holdout is None:
            p = self.params
            self._holdout = self.data.holdout(p.data.val_size, p.seed, p.tune.max_train_samples)
        return self._holdout

    def spec(self, overrides: dict[str, Any]) -> ModelSpec:
        model, train = apply_overrides(self.params, self.arch, overrides)
        return ModelSpec(self.arch, model, train)

    def epochs_for(self, spec: ModelSpec) -> int:
        """A trial trains its own (possibly tuned) train.max_epochs, capped by tune.max_epochs."""
        return min(spec.train.max_epochs, self.max_epochs or spec.train.max_epochs)

    def __call__(self, trial: optuna.Trial, on_epoch: EpochHook | None = None) -> float:
        self.epochs = 0
        spec = self.spec(self.space.suggest(trial))
        reporters: list[EpochReporter] = []
        try:  # an interrupt inside Lightning arrives as KeyboardInterrupt (training.fit guards every Trainer call)
            if self.folds == 0:
                value, val_loss = self._holdout_value(trial, spec, reporters, on_epoch)
            else:
                value, val_loss = self._folds_value(trial, spec, reporters, on_epoch)
        finally:
            self.epochs = sum(r.epochs for r in reporters)
        trial.set_user_attr("val_loss", val_loss)
        return value

    def _holdout_value(
        self, trial: optuna.Trial, spec: ModelSpec, reporters: list[EpochReporter], on_epoch: EpochHook | None
    ) -> tuple[float, float]:
        # a trial on the folds runs them all (a mean over fewer folds would not compare); one on the slice stops
        # where the study budget ends
        reporter = EpochReporter(trial, self.monitor, 0, on_epoch, self.params.study.budget.epochs)
        reporters.append(reporter)
        split = self.holdout
        p = self.params
        with timed("fit"):
            result = fit(
                spec,
                split,
                self.data.dataset.class_names,
                self.trainer,
                p.seed,
                max_epochs=self.epochs_for(spec),
                callbacks=[reporter],
            )
        loss = float(result.val.get("val_loss", math.nan))
        if f"val_{self.metric}" in result.val:  # the kept epoch's validation already scored it: no second pass
            return float(result.val[f"val_{self.metric}"]), loss
        with timed("evaluate"):  # a per-class metric: the validation report
            report = evaluate(result.module, split.val, self.trainer)
        return selection_value(report, self.metric, self.positive_class), loss

    def _folds_value(
        self, trial: optuna.Trial, spec: ModelSpec, reporters: list[EpochReporter], on_epoch: EpochHook | None
    ) -> tuple[float, float]:
        values, losses = [], []
        for k in range(self.folds):
            reporter = EpochReporter(trial, self.monitor, k * self.stride, on_epoch)
            reporters.append(reporter)
            result = run_fold(
                spec,
                self.data,
                k,
                self.trainer,
                self.params.seed,
                val_size=self.params.data.val_size,
                max_epochs=self.epochs_for(spec),
                callbacks=[reporter],
                max_train=self.params.tune.max_train_samples,
            )
            values.append(selection_value(result.report, self.metric, self.positive_class))
            losses.append(float(result.val.get("val_loss", math.nan)))
            trial.set_user_attr(f"fold_{k}", values[-1])
        return sum(values) / len(values), sum(losses) / len(losses)
