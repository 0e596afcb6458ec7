"""The series baselines (MiniRocket, 1-NN DTW): learned accuracy on the official test set, folds from the official
training part, unequal lengths as they are, and a config error for data that are not series."""

from __future__ import annotations

import pytest

from dlpipe.config import DataParams, parse_params
from dlpipe.data import load_dataset
from dlpipe.data.prepared import PreparedData
from dlpipe.data.splits import make_splits
from dlpipe.errors import ConfigError
from dlpipe.evaluation import baselines
from dlpipe.evaluation.baselines import BASELINES, _inputs, run_baseline


def official(name: str, folds: int = 3) -> PreparedData:
    ds = load_dataset(name, ".", DataParams(name=name))
    return PreparedData(ds, make_splits(ds.y.numpy(), 0.2, folds, 0, ds.official_test.numpy()))


def test_rocket_and_dtw_learn_gunpoint(monkeypatch):
    monkeypatch.setattr(baselines, "ROCKET_KERNELS", 168)  # two of MiniRocket's 84-kernel blocks: quick
    data = official("gunpoint")
    rocket = run_baseline("rocket", data, seed=0)
    dtw = run_baseline("dtw", data, seed=0)
    assert sum(map(sum, rocket.test["confusion_matrix"])) == 150  # the official test set
    assert sum(map(sum, dtw.test["confusion_matrix"])) == 150
    assert rocket.test["accuracy"] >= 0.9  # MiniRocket: 0.99+ with 10,000 kernels
    assert dtw.test["accuracy"] >= 0.88  # 1-NN DTW (full window): 0.907 in the archive's tables
    assert len(rocket.per_fold) == len(dtw.per_fold) == 3
    assert rocket.mean["accuracy"] >= 0.8 and dtw.mean["accuracy"] >= 0.8


def test_rocket_is_seeded(monkeypatch):
    monkeypatch.setattr(baselines, "ROCKET_KERNELS", 84)
    data = official("italy_power_demand", folds=2)
    first, second = run_baseline("rocket", data, seed=1), run_baseline("rocket", data, seed=1)
    assert first.per_fold == second.per_fold and first.test["accuracy"] == second.test["accuracy"]


def test_unequal_series_reach_dtw_at_their_lengths_and_rocket_padded(monkeypatch):
    monkeypatch.setattr(baselines, "ROCKET_KERNELS", 84)
    data = official("japanese_vowels", folds=2)
    series = _inputs(BASELINES["dtw"], data.dataset.X)
    assert [s.shape[1] for s in series] == data.dataset.lengths.tolist()  # each cut at its own length
    padded = _inputs(BASELINES["rocket"], data.dataset.X)
    assert padded.shape == tuple(data.dataset.X.shape) and not (padded != padded).any()  # no NaN left
    assert run_baseline("dtw", data, seed=0).test["accuracy"] >= 0.9
    assert run_baseline("rocket", data, seed=0).test["accuracy"] >= 0.85


@pytest.mark.parametrize("name", ["rocket", "dtw"])
def test_series_baselines_refuse_other_data(name):
    with pytest.raises(
        ConfigError,
        match=rf"baselines.models.1: '{name}' takes sequence input but dataset 'digits' is "
        r"image; allowed for image: logreg, svc, random_forest, knn, hist_gradient_boosting$",
    ):
        parse_params({"data": {"name": "digits"}, "baselines": {"models": ["logreg", name]}})
    assert parse_params({"data": {"name": "gunpoint"}, "architectures": ["cnn1d"], "baselines": {"models": [name]}})


def test_rocket_takes_series_shorter_than_its_kernels(monkeypatch):
    import numpy as np
    import torch

    from dlpipe.data.base import Dataset

    monkeypatch.setattr(baselines, "ROCKET_KERNELS", 84)
    rng = np.random.default_rng(0)
    y = np.repeat([0, 1], 30)
    X = rng.normal(size=(60, 1, 5)) + 3 * y[:, None, None]  # 5 steps: fewer than MiniRocket's 9
    ds = Dataset("short", torch.tensor(X, dtype=torch.float32), torch.tensor(y), "sequence", ["a", "b"])
    result = run_baseline("rocket", PreparedData(ds, make_splits(y, 0.25, 2, seed=0)), seed=0)
    assert result.test["accuracy"] >= 0.9
