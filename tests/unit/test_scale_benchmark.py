"""benchmarks/scale.py writes its images in MNIST's real IDX format: dlpipe's mnist loader reads them back."""

from __future__ import annotations

import sys
from pathlib import Path

import numpy as np
from helpers.project import REPO_ROOT

from dlpipe.data.torchvision_sets import load_mnist


def test_the_scale_benchmark_writes_idx_files_mnist_reads(tmp_path: Path, monkeypatch) -> None:
    monkeypatch.syspath_prepend(str(REPO_ROOT / "benchmarks"))
    sys.modules.pop("scale", None)
    import scale

    scale.write_mnist(tmp_path / "MNIST" / "raw", 140)
    ds = load_mnist(tmp_path, None)
    assert tuple(ds.X.shape) == (140, 1, 28, 28)
    assert int(ds.official_test.sum()) == 20  # 1/7 as the t10k files
    assert sorted(set(ds.y.tolist())) == list(range(10))
    images, labels = scale.digit_images(140)
    assert np.array_equal(ds.X[:120, 0].numpy(), images[:120]) and (ds.y[:120].numpy() == labels[:120]).all()
