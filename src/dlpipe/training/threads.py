"""torch's CPU threads for a process: import-light (torch only), so every entry point can set them first."""

from __future__ import annotations

import torch

from dlpipe.config import TrainerParams


def apply_cpu_threads(trainer: TrainerParams) -> None:
    """Set PyTorch's intra-op CPU threads for this whole process from `trainer.cpu_threads` (null: torch's default).

    Call it once per process, from the entry point (a stage, a tuning worker, a DDP rank re-running the entry
    script), before training. Oversubscribed OpenMP threads spin-wait: two threads beside another busy process ran
    10x slower than one.
    """
    if trainer.cpu_threads:
        torch.set_num_threads(trainer.cpu_threads)
