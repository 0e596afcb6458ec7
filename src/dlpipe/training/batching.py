"""Batches from tensors already in memory: slicing, one shuffled permutation per epoch, no per-sample collate.

Under DDP every rank draws the same permutation (same seed and epoch) and takes its own strided share; training
shares are padded to equal length (every rank must step the same number of times), evaluation shares are not
(torchmetrics sums the per-rank states, so every sample counts exactly once).

With `pin_memory` (training on a GPU from host memory) each batch is gathered into page-locked memory, so the copy
to the GPU is asynchronous; a fresh buffer per batch (torch's pinned-memory cache reuses one only once its copy is
done), never one overwritten while a copy may still read it.
"""

from __future__ import annotations

import math
from collections.abc import Iterator

import torch
import torch.distributed as dist


def _rank_and_world() -> tuple[int, int]:
    if dist.is_available() and dist.is_initialized():
        return dist.get_rank(), dist.get_world_size()
    return 0, 1


def _gather(t: torch.Tensor, idx: torch.Tensor, pin: bool) -> torch.Tensor:
    if not pin:
        return t.index_select(0, idx)
    out = torch.empty((len(idx), *t.shape[1:]), dtype=t.dtype, pin_memory=True)
    return torch.index_select(t, 0, idx, out=out)


class TensorLoader:
    """An iterable of `(X[idx], y[idx])` batches over in-memory tensors (`pin_memory`: in page-locked memory)."""

    def __init__(
        self,
        X: torch.Tensor,
        y: torch.Tensor,
        batch_size: int,
        shuffle: bool = False,
        seed: int = 0,
        drop_last: bool = False,
        pin_memory: bool = False,
    ):
        if len(X) != len(y):
            raise ValueError(f"X has {len(X)} rows but y has {len(y)}")
        self.X, self.y = X, y
        self.batch_size = batch_size
        self.shuffle = shuffle
        self.seed = seed
        self.drop_last = drop_last
        self.pin_memory = pin_memory
        self.epoch = 0

    @property
    def nbytes(self) -> int:
        return self.X.nbytes + self.y.nbytes

    def to(self, device: torch.device | str) -> TensorLoader:
        """Move the data once (e.g. onto the GPU) so that batches need no host-to-device copy."""
        self.X, self.y = self.X.to(device), self.y.to(device)
        return self

    def _indices(self) -> torch.Tensor | None:
        rank, world = _rank_and_world()
        n = len(self.y)
        if not self.shuffle and world == 1:
            return None  # contiguous slices, no gather
        if self.shuffle:
            gen = torch.Generator().manual_seed(self.seed + self.epoch)
            order = torch.randperm(n, generator=gen)
        else:
            order = torch.arange(n)
        if world > 1:
            if self.shuffle:  # pad so every rank steps equally often
                per_rank = math.ceil(n / world)
                order = torch.cat([order, order[: per_rank * world - n]])
            order = order[rank::world]
        return order.to(self.X.device)

    def __iter__(self) -> Iterator[tuple[torch.Tensor, torch.Tensor]]:
        order = self._indices()
        self.epoch += 1
        n = len(self.y) if order is None else len(order)
        stop = n - n % self.batch_size if self.drop_last else n
        pin = self.pin_memory and self.X.device.type == "cpu"
        for start in range(0, stop, self.batch_size):
            if order is None:
                batch = self.X[start : start + self.batch_size], self.y[start : start + self.batch_size]
                yield tuple(t.pin_memory() for t in batch) if pin else batch
            else:  # index_select: a third of `X[idx]`'s time for 64 MNIST rows on the CPU
                idx = order[start : start + self.batch_size]
                yield _gather(self.X, idx, pin), _gather(self.y, idx, pin)

    def __len__(self) -> int:
        rank, world = _rank_and_world()
        n = len(self.y)
        if world > 1:  # this rank's share: padded to equal length when training, strided and unpadded otherwise
            n = math.ceil(n / world) if self.shuffle else len(range(rank, n, world))
        return n // self.batch_size if self.drop_last else math.ceil(n / self.batch_size)
