"""8-bit images stay uint8 in memory: stored as they are, normaliser statistics without a float copy, training parts
of 8-bit pixels normalised per batch to the same inputs (and the same fit) as the float images they stand for."""

from __future__ import annotations

import logging
from pathlib import Path
from types import SimpleNamespace

import numpy as np
import pytest
import torch
from helpers.training import CPU, NO_EARLY_STOP, dataset, problem, spec, subsample

from dlpipe.data.base import Dataset
from dlpipe.data.prepared import PreparedData
from dlpipe.data.splits import Normalizer, make_splits
from dlpipe.data.store import load_saved_dataset, save_dataset
from dlpipe.evaluation.baselines import run_baseline
from dlpipe.training.batching import TensorLoader
from dlpipe.training.fit import DEVICE_DATA_SHARE, DataPlacement, data_fits_on_device, fit


def digit_pixels(per_class: int = 20) -> tuple[Dataset, Dataset]:
    """Digits as 8-bit images (uint8) and the same images as float32 X / 255."""
    ds = subsample(dataset("digits"), per_class)
    pixels = (ds.X * 255).round().to(torch.uint8)
    return (
        Dataset("pixels", pixels, ds.y, "image", ds.class_names),
        Dataset("pixels", pixels.float() / 255, ds.y, "image", ds.class_names),
    )


def test_uint8_images_round_trip_through_the_store_and_read_as_floats(tmp_path: Path) -> None:
    pixels, floats = digit_pixels(3)
    save_dataset(pixels, tmp_path / "u8")
    back = load_saved_dataset(tmp_path / "u8", verify=True)
    assert back.X.dtype == torch.uint8 and torch.equal(back.X, pixels.X)
    assert torch.equal(back.inputs(), floats.X) and torch.equal(back.inputs(np.array([4, 1])), floats.X[[4, 1]])
    save_dataset(floats, tmp_path / "f32")  # float images (data fetched before) load as they were
    assert torch.equal(load_saved_dataset(tmp_path / "f32").X, floats.X)
    with pytest.raises(TypeError, match="float32 \\(or uint8 images\\)"):
        Dataset("tab", torch.zeros(2, 3, dtype=torch.uint8), torch.zeros(2, dtype=torch.int64), "tabular", ["a"])


def test_uint8_normaliser_statistics_equal_the_float_ones() -> None:
    gen = torch.Generator().manual_seed(0)
    for shape in [(3000, 1, 28, 28), (700, 3, 32, 32)]:
        X = torch.randint(0, 256, shape, dtype=torch.uint8, generator=gen)
        X[:, :, :4] //= 3  # uneven channels
        pixels, floats = Normalizer.fit(X), Normalizer.fit(X.float() / 255)
        assert pixels.mean.shape == floats.mean.shape == (shape[1], 1, 1)
        assert torch.allclose(pixels.mean, floats.mean, rtol=0, atol=1e-6)
        assert torch.allclose(pixels.std, floats.std, rtol=0, atol=1e-6)
        assert torch.allclose(pixels(X[:5]), floats(X[:5].float() / 255), atol=1e-5)
    flat = Normalizer.fit(torch.full((4, 1, 2, 2), 7, dtype=torch.uint8))  # constant: std 1, as the float path
    assert flat.std.item() == 1.0 and flat.mean.item() == pytest.approx(7 / 255)


def test_a_uint8_split_trains_on_8_bit_rows_and_evaluates_on_normalised_floats() -> None:
    pixels, floats = digit_pixels()
    splits = make_splits(pixels.y.numpy(), 0.2, 3, 0)
    u8 = PreparedData(pixels, splits, labeled_fraction=0.5).holdout(0.1, 0)
    f32 = PreparedData(floats, splits, labeled_fraction=0.5).holdout(0.1, 0)
    for part in ("train", "unlabeled"):
        a, b = getattr(u8, part), getattr(f32, part)
        assert a.X.dtype == torch.uint8 and b.X.dtype == torch.float32 and np.array_equal(a.idx, b.idx)
        assert a.X.nbytes * 4 == b.X.nbytes  # a quarter of the memory
        assert torch.equal(a.y, b.y)
        assert torch.allclose(u8.normalizer(a.X), b.X, atol=1e-5)  # what a batch of it becomes
    assert u8.val.X.dtype == torch.float32 and torch.allclose(u8.val.X, f32.val.X, atol=1e-5)


@pytest.mark.parametrize(
    ("arch", "model", "labeled"),
    [
        ("cnn", {"channels": [4], "hidden": [16]}, 1.0),
        ("autoencoder", {"reconstruction": "bce"}, 0.5),  # also learns from the unlabelled 8-bit rows
        ("gan", {}, 0.5),
    ],
)
def test_fitting_on_8_bit_pixels_equals_fitting_on_their_floats(arch: str, model: dict, labeled: float) -> None:
    pixels, floats = digit_pixels()
    model_spec = spec(arch, model, max_epochs=2, batch_size=32, **NO_EARLY_STOP)
    u8, f32 = (problem(ds, labeled_fraction=labeled) for ds in (pixels, floats))
    assert u8.split.train.X.dtype == torch.uint8 and f32.split.train.X.dtype == torch.float32
    a, b = (fit(model_spec, p.split, pixels.class_names, CPU, seed=0) for p in (u8, f32))
    for (name, wa), wb in zip(a.module.state_dict().items(), b.module.state_dict().values(), strict=True):
        assert torch.allclose(wa.float(), wb.float(), atol=1e-4), name
    assert a.val == pytest.approx(b.val, abs=1e-4)


def test_a_baseline_scores_8_bit_pixels_as_their_floats() -> None:
    pixels, floats = digit_pixels(10)
    splits = make_splits(pixels.y.numpy(), 0.2, 3, 0)
    u8, f32 = (run_baseline("logreg", PreparedData(ds, splits), 0) for ds in (pixels, floats))
    assert u8.per_fold == f32.per_fold and u8.test == f32.test and u8.per_fold["fold_0"]["accuracy"] > 0.5


def test_data_goes_onto_the_gpu_only_when_it_fits() -> None:
    free = 8 * 2**30
    assert data_fits_on_device(int(DEVICE_DATA_SHARE * free), free)
    assert not data_fits_on_device(int(DEVICE_DATA_SHARE * free) + 1, free)
    assert not data_fits_on_device(1, 0)
    # 60,000 MNIST images: 47 MB as uint8 go onto a GPU with 1 GiB free; as float32 (188 MB) not onto 300 MiB
    assert data_fits_on_device(60000 * 784, 2**30) and not data_fits_on_device(60000 * 784 * 4, 300 * 2**20)


def test_data_too_big_for_the_gpu_comes_in_pinned_batches_said_once(monkeypatch, caplog) -> None:
    asked = []
    monkeypatch.setattr(torch.cuda, "mem_get_info", lambda device=None: asked.append(device) or (1000, 4000))
    gpu = SimpleNamespace(device=torch.device("cuda", 0))
    loaders = [TensorLoader(torch.zeros(100, 1, 2, 2, dtype=torch.uint8), torch.zeros(100, dtype=torch.int64), 10)]
    assert loaders[0].nbytes == 1200 and not loaders[0].pin_memory  # more than half of 1000 bytes free
    with caplog.at_level(logging.INFO, logger="dlpipe.training.fit"):
        for _ in range(2):
            DataPlacement(loaders, on_device=True).on_fit_start(None, gpu)
    assert loaders[0].pin_memory and loaders[0].X.device.type == "cpu" and asked == [gpu.device] * 2
    said = [r.getMessage() for r in caplog.records if "trainer.data_on_device" in r.getMessage()]
    assert said == [
        "trainer.data_on_device: the data (0 MiB) is more than 50% of the GPU's free memory (0 MiB); training from "
        "pinned-memory batches instead"
    ]
    off = [TensorLoader(torch.zeros(4, 1, 2, 2), torch.zeros(4, dtype=torch.int64), 2)]
    DataPlacement(off, on_device=False).on_fit_start(None, gpu)  # data_on_device: false, pinned without asking
    assert off[0].pin_memory and len(asked) == 2
    on_cpu = [TensorLoader(torch.zeros(4, 1), torch.zeros(4, dtype=torch.int64), 2)]
    DataPlacement(on_cpu, on_device=True).on_fit_start(None, SimpleNamespace(device=torch.device("cpu")))
    assert not on_cpu[0].pin_memory
