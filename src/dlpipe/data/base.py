"""The common in-memory form of every dataset."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Literal

import torch

InputKind = Literal["image", "tabular"]


@dataclass
class Dataset:
    """`X` float32 (N, *input_shape), `y` int64 (N,) class indices into `class_names`.

    `feature_names`: the column names of a tabular dataset's features, in X's column order (a CSV header,
    scikit-learn's feature names); None for images and for data saved before names were recorded.
    """

    name: str
    X: torch.Tensor
    y: torch.Tensor
    kind: InputKind
    class_names: list[str]
    feature_names: list[str] | None = None

    def __post_init__(self) -> None:
        if self.X.dtype != torch.float32 or self.y.dtype != torch.int64:
            raise TypeError(f"dataset {self.name}: X must be float32 and y int64, got {self.X.dtype}, {self.y.dtype}")
        if len(self.X) != len(self.y):
            raise ValueError(f"dataset {self.name}: {len(self.X)} samples but {len(self.y)} labels")
        if self.kind == "image" and self.X.dim() != 4:
            raise ValueError(f"dataset {self.name}: image data must be N x C x H x W, got {tuple(self.X.shape)}")
        if self.feature_names is not None:
            names = [str(n) for n in self.feature_names]
            if self.X.dim() != 2 or len(names) != self.X.shape[1] or len(set(names)) != len(names):
                raise ValueError(
                    f"dataset {self.name}: feature_names must name each of X's {tuple(self.X.shape[1:])} columns "
                    f"once, got {len(names)} ({len(set(names))} distinct)"
                )
            self.feature_names = names

    @property
    def input_shape(self) -> tuple[int, ...]:
        return tuple(self.X.shape[1:])

    @property
    def num_classes(self) -> int:
        return len(self.class_names)

    def __len__(self) -> int:
        return len(self.y)
