"""scikit-learn's bundled datasets: offline, small, the default study's data."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np
import torch

from dlpipe.data.base import Dataset
from dlpipe.data.registry import register_dataset


@register_dataset(
    "digits",
    "image",
    "scikit-learn's 8x8 handwritten digits (1797 images, 10 classes), offline",
    class_counts=(178, 182, 177, 183, 181, 182, 181, 179, 174, 180),
)
def load_digits(root: Path, data_params: Any) -> Dataset:
    from sklearn.datasets import load_digits as sk_digits

    bunch = sk_digits()
    images = torch.from_numpy(bunch.images.astype(np.float32) / 16.0).unsqueeze(1)  # N x 1 x 8 x 8 in [0, 1]
    y = torch.from_numpy(bunch.target.astype(np.int64))
    return Dataset("digits", images, y, "image", [str(c) for c in bunch.target_names])


@register_dataset(
    "breast_cancer",
    "tabular",
    "scikit-learn's Wisconsin breast cancer (569 x 30, binary), offline",
    class_counts=(212, 357),
)
def load_breast_cancer(root: Path, data_params: Any) -> Dataset:
    from sklearn.datasets import load_breast_cancer as sk_bc

    bunch = sk_bc()
    X = torch.from_numpy(bunch.data.astype(np.float32))
    y = torch.from_numpy(bunch.target.astype(np.int64))
    names = [str(n) for n in bunch.feature_names]
    return Dataset("breast_cancer", X, y, "tabular", [str(c) for c in bunch.target_names], feature_names=names)
