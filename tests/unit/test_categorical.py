"""Categorical columns of tabular data: codes and vocabularies through dataset.json, a normaliser that leaves codes
alone (and makes categories the training rows never showed unknown), one-hot inputs for the perceptron and the MLP,
and wide & deep's one-hot, crossed (hashed) and embedded categories."""

from __future__ import annotations

import pytest
import torch
from torch import nn

from dlpipe.data.base import Dataset, Features
from dlpipe.data.prepared import PreparedData
from dlpipe.data.splits import Normalizer, make_splits
from dlpipe.data.store import dataset_features, load_saved_dataset, save_dataset
from dlpipe.errors import ConfigError
from dlpipe.models import build_model
from dlpipe.models.common import EmbeddedInput, OneHotInput
from dlpipe.models.dense import CrossedInput

# columns: x (numeric), colour (3 categories), y (numeric), size (2 categories)
FEATURES = Features(("x", "colour", "y", "size"), {"colour": ("blue", "green", "red"), "size": ("L", "S")})


def mixed(n: int = 60, seed: int = 0) -> Dataset:
    gen = torch.Generator().manual_seed(seed)
    X = torch.stack(
        [
            torch.randn(n, generator=gen) * 5 + 10,
            torch.randint(1, 4, (n,), generator=gen).float(),
            torch.randn(n, generator=gen) - 3,
            torch.randint(1, 3, (n,), generator=gen).float(),
        ],
        dim=1,
    )
    y = (X[:, 1] == 3).long()
    categories = {k: list(v) for k, v in FEATURES.vocabularies.items()}
    return Dataset("csv", X, y, "tabular", ["no", "yes"], list(FEATURES.names), categories)


def test_dataset_json_keeps_the_vocabularies(tmp_path):
    ds = mixed()
    meta = save_dataset(ds, tmp_path)
    assert meta["categories"] == {"colour": ["blue", "green", "red"], "size": ["L", "S"]}
    back = load_saved_dataset(tmp_path)
    assert back.categories == ds.categories and torch.equal(back.X, ds.X)
    assert back.features == FEATURES == dataset_features(tmp_path)
    assert FEATURES.categorical == [1, 3] and FEATURES.numeric == [0, 2]


def test_a_dataset_refuses_codes_outside_the_vocabulary():
    ds = mixed()
    X = ds.X.clone()
    X[0, 3] = 3  # size has codes 0..2
    with pytest.raises(ValueError, match=r"column 'size' must hold codes 0\.\.2"):
        Dataset("csv", X, ds.y, "tabular", ds.class_names, ds.feature_names, ds.categories)


def test_features_encode_and_decode_text():
    assert FEATURES.encode("colour", ["red", "purple", None, float("nan"), "blue"]).tolist() == [3, 0, 0, 0, 1]
    assert FEATURES.decode("size", [1, 2, 0]) == ["L", "S", None]
    assert Features.from_json(FEATURES.to_json()) == FEATURES


# --- the normaliser ---


def test_the_normaliser_scales_numbers_and_leaves_codes_untouched():
    ds = mixed()
    norm = Normalizer.fit(ds.X, ds.features)
    out = norm(ds.X)
    assert torch.equal(out[:, [1, 3]], ds.X[:, [1, 3]])  # every code seen in training: kept as it is
    assert torch.allclose(out[:, [0, 2]].mean(dim=0), torch.zeros(2), atol=1e-5)
    assert torch.allclose(out[:, [0, 2]].std(dim=0), torch.ones(2), atol=1e-5)
    assert norm.mean[[1, 3]].tolist() == [0, 0] and norm.std[[1, 3]].tolist() == [1, 1]
    raw = Normalizer.fit(ds.X, ds.features, standardize=False)(ds.X)
    assert torch.equal(raw, ds.X)


def test_categories_the_training_rows_never_showed_become_unknown():
    ds = mixed()
    train = ds.X[ds.X[:, 1] != 2]  # no green in the rows the normaliser is fitted on
    norm = Normalizer.fit(train, ds.features)
    probe = torch.tensor([[0.0, 2, 0, 1], [0.0, 3, 0, 2], [0.0, 7, 0, -1], [0.0, 1.5, 0, float("nan")]])
    out = norm(probe)
    assert out[:, 1].tolist() == [0, 3, 0, 0]  # green unseen; 7 and 1.5 are no codes
    assert out[:, 3].tolist() == [1, 2, 0, 0]
    with torch.no_grad():
        assert torch.equal(norm.module()(probe), out)  # the module the exported model carries does the same


def test_prepared_splits_leave_codes_untouched():
    ds = mixed(100)
    prepared = PreparedData(ds, make_splits(ds.y.numpy(), 0.2, 3, seed=0))
    split = prepared.holdout(0.2, seed=0)
    assert torch.equal(split.train.X[:, [1, 3]], ds.X[torch.from_numpy(split.train.idx)][:, [1, 3]])
    assert split.normalizer.features == FEATURES
    assert not torch.equal(split.train.X[:, 0], ds.X[torch.from_numpy(split.train.idx), 0])  # numbers are scaled


# --- perceptron and MLP: one-hot ---


def test_one_hot_input_puts_numbers_first_and_the_unknown_code_at_zero():
    onehot = OneHotInput(FEATURES)
    x = torch.tensor([[1.5, 3, -2.0, 1], [0.5, 0, 4.0, 2]])
    assert onehot.width == 2 + 3 + 2
    assert onehot(x).tolist() == [[1.5, -2.0, 0, 0, 1, 1, 0], [0.5, 4.0, 0, 0, 0, 0, 1]]


@pytest.mark.parametrize("arch", ["perceptron", "mlp"])
def test_perceptron_and_mlp_take_categories_one_hot(arch):
    model = build_model(arch, {}, (4,), 2, features=FEATURES)
    first = next(m for m in model.modules() if isinstance(m, nn.Linear))
    assert first.in_features == 7 and isinstance(model[0], OneHotInput)
    assert model(mixed().X[:5]).shape == (5, 2)


@pytest.mark.parametrize("arch", ["perceptron", "mlp", "wide_deep"])
def test_without_categories_the_dense_families_are_unchanged(arch):
    numeric = Features(("a", "b", "c", "d"))
    torch.manual_seed(0)
    plain = build_model(arch, {}, (4,), 3)
    torch.manual_seed(0)
    described = build_model(arch, {}, (4,), 3, features=numeric)
    assert plain.state_dict().keys() == described.state_dict().keys()
    assert all(
        torch.equal(a, b) for a, b in zip(plain.state_dict().values(), described.state_dict().values(), strict=True)
    )


# --- wide & deep ---


def xor_task(n: int = 200, seed: int = 0) -> tuple[torch.Tensor, torch.Tensor, Features]:
    """label = colour XOR size, with a numeric column of noise: no linear model of the one-hot columns can fit it."""
    gen = torch.Generator().manual_seed(seed)
    colour = torch.randint(1, 3, (n,), generator=gen)
    size = torch.randint(1, 3, (n,), generator=gen)
    noise = torch.randn(n, generator=gen)
    X = torch.stack([colour.float(), size.float(), noise], dim=1)
    features = Features(("colour", "size", "noise"), {"colour": ("blue", "red"), "size": ("L", "S")})
    return X, ((colour == 2) ^ (size == 2)).long(), features


def wide_path_accuracy(crosses: list[list[str]]) -> float:
    """Train the wide path alone (its linear layer) on the XOR task; its training accuracy."""
    X, y, features = xor_task()
    torch.manual_seed(0)
    model = build_model("wide_deep", {"crosses": crosses}, (3,), 2, features=features)
    opt = torch.optim.Adam(model.wide.parameters(), lr=0.1)
    for _ in range(200):
        opt.zero_grad()
        nn.functional.cross_entropy(model.wide_logits(X), y).backward()
        opt.step()
    with torch.no_grad():
        return float((model.wide_logits(X).argmax(dim=1) == y).float().mean())


def test_the_wide_path_learns_xor_with_the_cross_and_not_without():
    assert wide_path_accuracy([["colour", "size"]]) == 1.0
    assert wide_path_accuracy([]) <= 0.8  # the best a linear model of the one-hot columns does is 3 of 4 cells


def test_wide_deep_paths_read_one_hot_crosses_and_embeddings():
    model = build_model("wide_deep", {"crosses": [["colour", "size"]], "embedding_dim": 5}, (4,), 2, FEATURES)
    assert model.wide.in_features == 2 + 3 + 2 + 3 * 2  # numbers, one-hot colour and size, the 6 crossed pairs
    assert model.deep[0].in_features == 2 + 5 * 2  # numbers and two embeddings
    x = mixed().X[:6]
    model.eval()
    assert torch.allclose(model(x), model.wide_logits(x) + model.deep_logits(x))


def test_crossed_pairs_are_exact_when_they_fit_and_hashed_otherwise():
    x = torch.tensor([[0.0, 3, 0, 2], [0.0, 1, 0, 1], [0.0, 0, 0, 1], [0.0, 2, 0, 2]])
    exact = CrossedInput(FEATURES, [("colour", "size")], buckets=1000)
    assert exact.width == 6
    assert exact(x).argmax(dim=1).tolist()[:2] == [2 * 2 + 1, 0] and exact(x)[2].sum() == 0  # unknown: no bucket
    hashed = CrossedInput(FEATURES, [("colour", "size")], buckets=4)
    out = hashed(x)
    assert hashed.width == 4 and out.shape == (4, 4)
    assert out.sum(dim=1).tolist() == [1, 1, 0, 1]  # one bucket per known pair, none for an unknown side


def test_unknown_categories_embed_to_zero_and_stay_there():
    embedded = EmbeddedInput(FEATURES, dim=3)
    out = embedded(torch.tensor([[1.0, 0, 2.0, 0]]))
    assert out[0, 2:].abs().sum() == 0
    out.sum().backward()
    assert embedded.embeddings[0].weight.grad[0].abs().sum() == 0


def test_crosses_must_name_categorical_columns():
    with pytest.raises(
        ConfigError, match=r"models\.wide_deep\.crosses: 'x' is not a categorical column; allowed: colour"
    ):
        build_model("wide_deep", {"crosses": [["x", "size"]]}, (4,), 2, FEATURES)
    with pytest.raises(ConfigError, match=r"models\.wide_deep\.crosses: crossing needs categorical columns"):
        build_model("wide_deep", {"crosses": [["a", "b"]]}, (1, 8, 8), 10)
    with pytest.raises(Exception, match="two different columns"):
        build_model("wide_deep", {"crosses": [["size", "size"]]}, (4,), 2, FEATURES)


def test_the_wide_path_is_penalised_by_l1_like_every_weight_matrix():
    from dlpipe.training.module import penalised_weights

    model = build_model("wide_deep", {"crosses": [["colour", "size"]]}, (4,), 2, FEATURES)
    penalised = {id(p) for p in penalised_weights(model)}
    assert id(model.wide.weight) in penalised
    assert all(id(e.weight) in penalised for e in model.deep_in.embeddings)


# --- the exported model ---


def test_the_exported_program_carries_the_vocabularies_and_maps_unseen_codes(tmp_path):
    from dlpipe.tracking.model_logging import export_program, program_features

    ds = mixed()
    norm = Normalizer.fit(ds.X[ds.X[:, 1] != 2], ds.features)  # green never in the fitted rows
    torch.manual_seed(0)
    net = build_model("wide_deep", {"crosses": [["colour", "size"]]}, (4,), 2, FEATURES).eval()
    path = tmp_path / "model.pt2"
    export_program(net, norm, ds.X[:4], path, check=ds.X)
    assert program_features(path) == FEATURES
    program = torch.export.load(str(path)).module()
    probe = torch.tensor([[10.0, 2, -3, 1], [10.0, 0, -3, 1], [10.0, 3, -3, 1]])
    with torch.no_grad():
        out = program(probe)
        expected = torch.softmax(net(norm(probe)), dim=1)
    assert torch.allclose(out, expected, atol=1e-6)
    assert torch.equal(out[0], out[1]) and not torch.equal(out[0], out[2])  # green is unknown, red is not
    plain = tmp_path / "plain.pt2"
    export_program(build_model("mlp", {}, (4,), 2).eval(), Normalizer.fit(ds.X), ds.X[:4], plain)
    assert program_features(plain) is None  # no categories: nothing extra in the program
