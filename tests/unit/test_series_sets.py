"""Time series: the UCR/UEA sets aeon bundles (what `dlpipe list` says of them, their official split), unequal
lengths kept whole (NaN padding), the readers of a user's series, and `data.split` / `data.znormalize`."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from aeon.datasets import load_basic_motions, load_gunpoint, load_japanese_vowels

from dlpipe.config import DataParams, parse_params
from dlpipe.data import DATASETS, load_dataset
from dlpipe.data.base import Dataset, series_lengths
from dlpipe.data.prepared import PreparedData
from dlpipe.data.series_sets import SERIES_SETS, pad_series, read_npz_series, read_ts, series_dataset
from dlpipe.data.splits import Normalizer, make_splits, znormalize_series
from dlpipe.data.store import load_saved_dataset, save_dataset
from dlpipe.errors import ConfigError, DataError
from dlpipe.paths import ProjectPaths

NAN = float("nan")


@pytest.mark.parametrize("spec", SERIES_SETS, ids=lambda s: s.name)
def test_each_bundled_set_is_what_dlpipe_list_says(spec, tmp_path):
    info = DATASETS[spec.name]
    assert info.kind == "sequence" and info.official_split and not info.needs_network
    ds = load_dataset(spec.name, tmp_path, DataParams(name=spec.name))
    lengths = ds.lengths
    assert (ds.X.shape[1], int(lengths.min()), int(lengths.max())) == (spec.channels, *spec.length)
    assert ds.X.shape[2] == spec.length[1]  # padded to the longest series, never cut to a shorter one
    assert ds.num_classes == spec.classes == len(np.unique(ds.y))
    assert (int((~ds.official_test).sum()), int(ds.official_test.sum())) == (spec.train, spec.test)
    low, high = spec.length
    assert f"length {high}" in info.description if low == high else f"length {low}-{high} (unequal)" in info.description
    assert f"{spec.train} train / {spec.test} test" in info.description
    assert list(tmp_path.iterdir()) == []  # offline, nothing written


def test_official_split_is_the_one_aeon_ships():
    ds = load_dataset("gunpoint", ".", DataParams(name="gunpoint"))
    splits = make_splits(ds.y.numpy(), 0.2, 5, seed=3, official_test=ds.official_test.numpy())
    X_train, y_train = load_gunpoint(split="train")
    X_test, y_test = load_gunpoint(split="test")
    assert np.array_equal(ds.X[splits.train_idx].numpy(), X_train.astype(np.float32))
    assert np.array_equal(ds.X[splits.test_idx].numpy(), X_test.astype(np.float32))
    names = np.asarray(ds.class_names)
    assert np.array_equal(names[ds.y[splits.test_idx].numpy()], y_test)
    assert np.array_equal(names[ds.y[splits.train_idx].numpy()], y_train)
    # folds are drawn from the official training part only, stratified, and cover it
    assert sorted(np.unique(splits.fold).tolist()) == list(range(5))
    for k in range(5):
        fit, scored = splits.fold_indices(k)
        assert not set(scored) & set(splits.test_idx) and not set(fit) & set(splits.test_idx)


def test_multivariate_and_unequal_sets_match_aeon():
    motions = load_dataset("basic_motions", ".", DataParams(name="basic_motions"))
    X, _ = load_basic_motions()
    assert np.array_equal(motions.X.numpy(), X.astype(np.float32))
    vowels = load_dataset("japanese_vowels", ".", DataParams(name="japanese_vowels"))
    series, _ = load_japanese_vowels()
    lengths = vowels.lengths.numpy()
    assert lengths.tolist() == [s.shape[1] for s in series]
    for i in (0, int(lengths.argmin()), int(lengths.argmax())):
        n = lengths[i]
        assert np.array_equal(vowels.X[i, :, :n].numpy(), series[i].astype(np.float32))
        assert torch.isnan(vowels.X[i, :, n:]).all()


def test_padding_keeps_every_step_and_refuses_to_cut():
    series = [np.arange(3.0)[None], np.arange(5.0)[None]]
    X = pad_series(series, "s")
    assert X.shape == (2, 1, 5) and np.isnan(X[0, 0, 3:]).all() and X[1, 0].tolist() == [0, 1, 2, 3, 4]
    assert series_lengths(torch.from_numpy(X)).tolist() == [3, 5]
    assert pad_series(series, "s", length=7).shape == (2, 1, 7)
    with pytest.raises(DataError, match="s: series 1 has 5 steps, more than the 4 this model takes"):
        pad_series(series, "s", length=4)
    with pytest.raises(DataError, match="different channel counts"):
        pad_series([np.zeros((1, 3)), np.zeros((2, 3))], "s")
    with pytest.raises(DataError, match="series 0 ends in a step with no value"):
        pad_series([np.array([[1.0, NAN]])], "s")


def test_sequence_datasets_round_trip_with_their_official_split(tmp_path):
    ds = series_dataset("s", [np.ones((2, 3)), np.ones((2, 4))], ["b", "a"], ["a", "b"], np.array([False, True]))
    assert ds.kind == "sequence" and ds.y.tolist() == [1, 0] and ds.lengths.tolist() == [3, 4]
    save_dataset(ds, tmp_path)
    back = load_saved_dataset(tmp_path, verify=True)
    assert back.official_test.tolist() == [False, True] and back.lengths.tolist() == [3, 4]
    assert torch.equal(torch.isnan(back.X), torch.isnan(ds.X))
    with pytest.raises(ValueError, match="sequence data must be N x channels x length"):
        Dataset("s", torch.zeros(2, 3), torch.zeros(2, dtype=torch.int64), "sequence", ["a"])
    with pytest.raises(DataError, match=r"label\(s\) c not among the classes a, b"):
        series_dataset("s", [np.ones((1, 2))], ["c"], ["a", "b"])


def test_ts_and_npz_readers(tmp_path):
    ts = tmp_path / "toy.ts"
    ts.write_text(
        "@problemName toy\n@timeStamps false\n@missing false\n@univariate true\n@equalLength false\n"
        "@classLabel true up down\n@data\n1.0,2.0,3.0:up\n3.0,2.0:down\n"
    )
    series, labels, classes = read_ts(ts)
    assert [s.tolist() for s in series] == [[[1, 2, 3]], [[3, 2]]]
    assert labels.tolist() == ["up", "down"] and classes == ["up", "down"]
    with pytest.raises(DataError, match=r"no such \.ts file"):
        read_ts(tmp_path / "absent.ts")
    npz = tmp_path / "x.npz"
    np.savez(npz, X=np.array([[[1.0, 2.0, 0.0]], [[4.0, 5.0, 6.0]]]), lengths=np.array([2, 3]))
    assert [s.tolist() for s in read_npz_series(npz)] == [[[1, 2]], [[4, 5, 6]]]
    np.savez(npz, X=np.zeros((2, 3)), lengths=np.array([2, 4]))
    with pytest.raises(DataError, match=r"lengths\[1\] = 4 is outside 1..3"):
        read_npz_series(npz)
    np.savez(npz, Y=np.zeros((2, 3)))
    with pytest.raises(DataError, match="no array 'X'"):
        read_npz_series(npz)


def test_normaliser_skips_padding_and_can_znormalise_each_series():
    X = torch.tensor([[[1.0, 3.0, NAN]], [[10.0, 20.0, 30.0]]])
    norm = Normalizer.fit(X)
    assert norm.mean.shape == (1, 1) and norm.mean.item() == pytest.approx(64 / 5)
    out = norm(X)
    assert torch.isnan(out[0, 0, 2]) and torch.isfinite(out[1]).all()
    z = znormalize_series(X)
    assert z[0, 0, :2].tolist() == [-1.0, 1.0] and torch.isnan(z[0, 0, 2])
    assert torch.allclose(z[1, 0], torch.tensor([-1.2247, 0.0, 1.2247]), atol=1e-4)
    per = Normalizer.fit(X, per_series=True)
    module = per.module()
    assert torch.allclose(per(X[1:]), module(X[1:])) and torch.allclose(per(X[1:]), z[1:], atol=1e-6)
    # a series scaled and shifted is the same series after per-series z-normalisation
    assert torch.allclose(per(X[1:] * 7 + 3), per(X[1:]), atol=1e-5)


def test_prepared_folds_come_from_the_official_training_part(tmp_path):
    ds = load_dataset("italy_power_demand", ".", DataParams(name="italy_power_demand"))
    splits = make_splits(ds.y.numpy(), 0.5, 3, 0, ds.official_test.numpy())
    assert len(splits.train_idx) == 67 and len(splits.test_idx) == 1029
    data = PreparedData(ds, splits, znormalize=True)
    fold = data.fold(0, 0.2, seed=0)
    assert set(fold.fit.train.idx) | set(fold.fit.val.idx) | set(fold.scored.idx) <= set(range(67))
    assert fold.fit.normalizer.per_series
    with pytest.raises(DataError, match=r"data\.folds: 40 folds need at least 40 training samples per class"):
        make_splits(ds.y.numpy(), 0.5, 40, 0, ds.official_test.numpy())


def test_split_and_znormalize_params_are_checked_against_the_dataset():
    ok = parse_params(
        {"data": {"name": "gunpoint", "split": "official", "znormalize": True}, "architectures": ["cnn1d"]}
    )
    assert ok.data.split == "official" and ok.data.znormalize
    assert parse_params({"data": {"name": "mnist", "split": "official"}, "architectures": ["cnn"]}).data.split
    assert parse_params({"architectures": ["cnn"]}).data.split == "random"
    with pytest.raises(
        ConfigError,
        match=r"data.split: dataset 'digits' has no official test set; allowed: random "
        r"\(official for mnist, fashion_mnist, cifar10, gunpoint, ",
    ):
        parse_params({"data": {"name": "digits", "split": "official"}, "architectures": ["cnn"]})
    with pytest.raises(ConfigError, match=r"data\.znormalize: z-normalises each series; dataset 'digits' is image"):
        parse_params({"data": {"znormalize": True}, "architectures": ["cnn"]})
    with pytest.raises(ConfigError, match=r"data.split: Input should be 'random' or 'official'"):
        parse_params({"data": {"split": "fixed"}, "architectures": ["cnn"]})
    with pytest.raises(
        ConfigError, match=r"architectures.0: 'cnn' takes image input but dataset 'gunpoint' is sequence"
    ):
        parse_params({"data": {"name": "gunpoint"}, "architectures": ["cnn"]})


def test_fetch_and_prepare_stages_hold_out_the_official_test_set(tmp_path):
    from dlpipe.stages import fetch, prepare

    paths = ProjectPaths(tmp_path)
    params = parse_params({"data": {"name": "arrow_head", "split": "official", "folds": 3}, "architectures": ["lstm"]})
    fetch.run(params, paths)
    (paths.prepared).mkdir(parents=True)
    summary = prepare.run(params, paths)
    assert (summary["split"], summary["n_train"], summary["n_test"]) == ("official", 36, 175)
    data = PreparedData.load(paths.raw, paths.prepared)
    assert (
        data.dataset.official_test[data.splits.test_idx].all()
        and not data.dataset.official_test[data.splits.train_idx].any()
    )
    limited = parse_params({**params.model_dump(), "data": {**params.data.model_dump(), "limit": 100}})
    summary = prepare.run(limited, paths)
    assert summary["n_train"] + summary["n_test"] == 100 and 0 < summary["n_test"] < 100
    data = PreparedData.load(paths.raw, paths.prepared)
    assert (
        data.dataset.official_test[data.splits.test_idx].all()
        and not data.dataset.official_test[data.splits.train_idx].any()
    )
    random = parse_params({**params.model_dump(), "data": {**params.data.model_dump(), "split": "random"}})
    assert prepare.run(random, paths)["n_test"] == 43  # ceil(0.2 x 211)


def test_scikit_learn_baselines_take_series_of_unequal_length():
    from dlpipe.evaluation.baselines import run_baseline

    ds = load_dataset("japanese_vowels", ".", DataParams(name="japanese_vowels"))
    data = PreparedData(ds, make_splits(ds.y.numpy(), 0.2, 3, 0, ds.official_test.numpy()))
    result = run_baseline("knn", data, seed=0)
    assert result.test["accuracy"] > 0.5  # 9 classes
