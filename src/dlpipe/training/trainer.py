"""The Lightning Trainer factory: devices, strategy, precision, gradient clipping, early stopping, checkpoints."""

from __future__ import annotations

import sys
from pathlib import Path

import lightning as L
import torch
from lightning.pytorch.callbacks import Callback, EarlyStopping, ModelCheckpoint

from dlpipe.config import TrainerParams, TrainParams


def progress_bar_enabled(trainer: TrainerParams) -> bool:
    return sys.stderr.isatty() if trainer.progress_bar is None else trainer.progress_bar


def make_trainer(
    trainer: TrainerParams,
    train: TrainParams,
    *,
    max_epochs: int | None = None,
    callbacks: list[Callback] | None = None,
    checkpoint_dir: Path | None = None,
    with_validation: bool = True,
) -> L.Trainer:
    """A Trainer from params. With `checkpoint_dir`, the best epoch (on the early-stopping monitor) is kept."""
    if trainer.cpu_threads:
        # Oversubscribed OpenMP threads spin-wait: two threads beside another busy process ran 10x slower.
        torch.set_num_threads(trainer.cpu_threads)
    cbs: list[Callback] = list(callbacks or [])
    es = train.early_stopping
    if with_validation and es.enabled:
        cbs.append(EarlyStopping(monitor=es.monitor, mode=es.mode, patience=es.patience, min_delta=es.min_delta))
    if checkpoint_dir is not None and with_validation:
        cbs.append(
            ModelCheckpoint(dirpath=checkpoint_dir, filename="best", monitor=es.monitor, mode=es.mode, save_top_k=1)
        )
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
        enable_checkpointing=checkpoint_dir is not None,
        enable_progress_bar=progress_bar_enabled(trainer),
        enable_model_summary=False,
        num_sanity_val_steps=0,
        limit_val_batches=1.0 if with_validation else 0,
        use_distributed_sampler=False,  # TensorLoader shards by rank itself
        default_root_dir=str(checkpoint_dir) if checkpoint_dir else None,
    )
