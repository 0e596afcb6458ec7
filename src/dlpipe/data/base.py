"""The common in-memory form of every dataset."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Literal

import torch

InputKind = Literal["image", "tabular"]


@dataclass
class Dataset:
    """`X` float32 (N, *input_shape), `y` int64 (N,) class indices into `class_names`."""

    name: str
    X: torch.Tensor
    y: torch.Tensor
    kind: InputKind
    class_names: list[str]

    def __post_init__(self) -> None:
        if self.X.dtype != torch.float32 or self.y.dtype != torch.int64:
            raise TypeError(f"dataset {self.name}: X must be float32 and y int64, got {self.X.dtype}, {self.y.dtype}")
        if len(self.X) != len(self.y):
            raise ValueError(f"dataset {self.name}: {len(self.X)} samples but {len(self.y)} labels")
        if self.kind == "image" and self.X.dim() != 4:
            raise ValueError(f"dataset {self.name}: image data must be N x C x H x W, got {tuple(self.X.shape)}")

    @property
    def input_shape(self) -> tuple[int, ...]:
        return tuple(self.X.shape[1:])

    @property
    def num_classes(self) -> int:
        return len(self.class_names)

    def __len__(self) -> int:
        return len(self.y)
