"""Shared helpers for the training-core tests: in-memory datasets and splits (no DVC stages), CPU trainer params,
and a train-then-test shortcut.
"""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from functools import cache
from typing import Any

import torch
from lightning.pytorch.callbacks import Callback

from dlpipe.config import TrainerParams, TrainParams
from dlpipe.data.base import Dataset
from dlpipe.data.prepared import Part, PreparedData, TrainValSplit
from dlpipe.data.sklearn_sets import load_breast_cancer, load_digits
from dlpipe.data.splits import make_splits
from dlpipe.models import get_architecture
from dlpipe.training.fit import FitResult, ModelSpec, evaluate, fit

SEED = 0
CPU = TrainerParams(accelerator="cpu", progress_bar=False)
NO_EARLY_STOP = {"early_stopping": {"enabled": False}}

_LOADERS = {"digits": load_digits, "breast_cancer": load_breast_cancer}


@cache
def dataset(name: str) -> Dataset:
    """`digits` (N x 1 x 8 x 8, 10 classes) or `breast_cancer` (N x 30, 2 classes), loaded once per session."""
    return _LOADERS[name](None, None)


@dataclass
class Problem:
    """A dataset with a train/val split for fitting and the held-out test part normalised like the training data."""

    ds: Dataset
    split: TrainValSplit
    test: Part

    @property
    def class_names(self) -> list[str]:
        return self.ds.class_names


def subsample(ds: Dataset, per_class: int, seed: int = SEED) -> Dataset:
    """The first `per_class` samples of each class in a seeded shuffle (a smaller, still balanced dataset)."""
    gen = torch.Generator().manual_seed(seed)
    order = torch.randperm(len(ds), generator=gen)
    keep = torch.cat([order[ds.y[order] == c][:per_class] for c in range(ds.num_classes)]).sort().values
    return Dataset(ds.name, ds.X[keep], ds.y[keep], ds.kind, ds.class_names)


def problem(
    ds: Dataset | str, seed: int = SEED, test_size: float = 0.2, val_size: float = 0.1, labeled_fraction: float = 1.0
) -> Problem:
    """Stratified holdout test set, a stratified validation slice of the rest; normalisation from train only;
    with `labeled_fraction` < 1 only that stratified fraction of the training samples keeps its labels."""
    ds = dataset(ds) if isinstance(ds, str) else ds
    prepared = PreparedData(ds, make_splits(ds.y.numpy(), test_size, 5, seed), labeled_fraction=labeled_fraction)
    split = prepared.holdout(val_size, seed)
    test_idx = torch.from_numpy(prepared.splits.test_idx)
    test = Part(split.normalizer(ds.X[test_idx]), ds.y[test_idx])
    return Problem(ds, split, test)


def train_params(**overrides: Any) -> TrainParams:
    return TrainParams.model_validate(overrides)


def model_params(arch: str, **overrides: Any):
    return get_architecture(arch).params.model_validate(overrides)


def spec(arch: str, model: dict | None = None, **train: Any) -> ModelSpec:
    return ModelSpec(arch, model_params(arch, **(model or {})), train_params(**train))


def train(
    arch: str,
    prob: Problem,
    model: dict | None = None,
    *,
    seed: int = SEED,
    max_epochs: int | None = None,
    callbacks: list[Callback] | None = None,
    trainer: TrainerParams = CPU,
    **train_overrides: Any,
) -> FitResult:
    """`fit` one architecture on `prob.split` on the CPU."""
    return fit(
        spec(arch, model, **train_overrides),
        prob.split,
        prob.class_names,
        trainer,
        seed,
        max_epochs=max_epochs,
        callbacks=callbacks,
    )


def held_out_accuracy(result: FitResult, prob: Problem) -> float:
    """The held-out test accuracy of a fitted model, through `evaluate`."""
    return evaluate(result.module, prob.test, CPU)["accuracy"]


def weights(module: torch.nn.Module) -> dict[str, torch.Tensor]:
    """A detached copy of every parameter."""
    return {name: p.detach().clone() for name, p in module.named_parameters()}


def weight_matrices(module: torch.nn.Module) -> list[torch.Tensor]:
    """The parameters L1/L2 act on (dim > 1), detached."""
    return [p.detach() for p in module.parameters() if p.dim() > 1]


@contextmanager
def torch_threads(n: int) -> Iterator[None]:
    """Run with `n` intra-op threads, then restore. The test models are tiny: on a small, busy CPU (2 cores shared
    with other jobs) extra threads only add synchronisation waits, which made steps 10-40x slower in practice."""
    before = torch.get_num_threads()
    torch.set_num_threads(n)
    try:
        yield
    finally:
        torch.set_num_threads(before)
