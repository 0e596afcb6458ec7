"""TensorLoader: in-memory batches by slicing, one seeded permutation per epoch, and DDP sharding by rank."""

from __future__ import annotations

import math

import pytest
import torch

from dlpipe.training import batching
from dlpipe.training.batching import TensorLoader


def indexed(n: int, shape: tuple[int, ...] = (1, 8, 8)) -> tuple[torch.Tensor, torch.Tensor]:
    """X[i] is filled with the value i and y[i] == i, so every batch tells which samples it holds."""
    y = torch.arange(n, dtype=torch.int64)
    X = y.to(torch.float32).view(n, *[1] * len(shape)).expand(n, *shape).contiguous()
    return X, y


def epoch_labels(loader: TensorLoader) -> list[int]:
    return [int(i) for _, yb in loader for i in yb]


@pytest.mark.parametrize(("n", "batch_size"), [(100, 7), (64, 8), (5, 10), (1, 1)])
@pytest.mark.parametrize("shuffle", [False, True])
def test_every_sample_exactly_once_per_epoch(n, batch_size, shuffle):
    loader = TensorLoader(*indexed(n), batch_size, shuffle=shuffle, seed=3)
    for _ in range(3):
        seen = epoch_labels(loader)
        assert sorted(seen) == list(range(n))


def test_unshuffled_order_is_the_tensor_order():
    loader = TensorLoader(*indexed(23), 5)
    assert epoch_labels(loader) == list(range(23))
    assert epoch_labels(loader) == list(range(23))  # and stays so


def test_shuffled_epochs_use_a_new_permutation():
    loader = TensorLoader(*indexed(200), 16, shuffle=True, seed=0)
    orders = [epoch_labels(loader) for _ in range(4)]
    assert loader.epoch == 4
    assert orders[0] != list(range(200))  # actually shuffled
    assert len({tuple(o) for o in orders}) == 4  # a different permutation every epoch


def test_shuffle_is_deterministic_for_a_seed():
    a = TensorLoader(*indexed(150), 16, shuffle=True, seed=7)
    b = TensorLoader(*indexed(150), 16, shuffle=True, seed=7)
    c = TensorLoader(*indexed(150), 16, shuffle=True, seed=8)
    run_a = [epoch_labels(a) for _ in range(3)]
    assert run_a == [epoch_labels(b) for _ in range(3)]
    assert epoch_labels(c) != run_a[0]  # another seed, another order (epoch 0 of both)


def test_shuffle_does_not_touch_the_global_rng():
    torch.manual_seed(123)
    expected = torch.rand(3)
    torch.manual_seed(123)
    epoch_labels(TensorLoader(*indexed(50), 8, shuffle=True, seed=1))
    assert torch.equal(torch.rand(3), expected)


@pytest.mark.parametrize("shuffle", [False, True])
def test_drop_last_yields_only_full_batches(shuffle):
    n, bs = 103, 10
    loader = TensorLoader(*indexed(n), bs, shuffle=shuffle, seed=0, drop_last=True)
    sizes = [len(yb) for _, yb in loader]
    assert sizes == [bs] * (n // bs)
    seen = epoch_labels(loader)
    assert len(seen) == len(set(seen)) == n - n % bs
    assert len(loader) == n // bs


@pytest.mark.parametrize(("n", "batch_size"), [(100, 10), (101, 10), (9, 10), (1, 4), (64, 1)])
@pytest.mark.parametrize("drop_last", [False, True])
@pytest.mark.parametrize("shuffle", [False, True])
def test_len_is_the_number_of_batches(n, batch_size, drop_last, shuffle):
    loader = TensorLoader(*indexed(n), batch_size, shuffle=shuffle, drop_last=drop_last)
    expected = n // batch_size if drop_last else math.ceil(n / batch_size)
    assert len(loader) == expected == sum(1 for _ in loader)


@pytest.mark.parametrize("shuffle", [False, True])
def test_batches_are_rows_of_the_tensors(shuffle):
    X, y = indexed(37, (3, 5, 4))
    loader = TensorLoader(X, y, 8, shuffle=shuffle, seed=2)
    batches = list(loader)
    assert [len(yb) for _, yb in batches] == [8, 8, 8, 8, 5]
    for xb, yb in batches:
        assert xb.dtype == torch.float32 and yb.dtype == torch.int64
        assert xb.shape == (len(yb), 3, 5, 4)
        assert torch.equal(xb, X[yb])  # each row paired with its own label


def test_unshuffled_batches_are_views_without_copies():
    X, y = indexed(30)
    xb, yb = next(iter(TensorLoader(X, y, 8)))
    assert xb.untyped_storage().data_ptr() == X.untyped_storage().data_ptr()
    assert yb.untyped_storage().data_ptr() == y.untyped_storage().data_ptr()


def test_tabular_rows_keep_their_feature_shape():
    X = torch.randn(20, 30)
    y = torch.randint(0, 2, (20,))
    xb, yb = next(iter(TensorLoader(X, y, 6, shuffle=True)))
    assert xb.shape == (6, 30) and yb.shape == (6,)


def test_mismatched_lengths_are_rejected():
    with pytest.raises(ValueError, match="X has 5 rows but y has 4"):
        TensorLoader(torch.zeros(5, 2), torch.zeros(4, dtype=torch.int64), 2)


def test_to_moves_the_data_and_returns_the_loader():
    X, y = indexed(10)
    loader = TensorLoader(X.double(), y, 4)
    assert loader.to("cpu") is loader
    assert loader.X.device.type == "cpu"


# --- DDP sharding, simulated: every rank runs the same loader code with its own (rank, world) ---


def shards(monkeypatch, n: int, world: int, batch_size: int, shuffle: bool, epochs: int = 1):
    """Per rank: (len(loader), labels of each epoch) as that rank would see them."""
    out = []
    for rank in range(world):
        monkeypatch.setattr(batching, "_rank_and_world", lambda rank=rank: (rank, world))
        loader = TensorLoader(*indexed(n), batch_size, shuffle=shuffle, seed=5)
        out.append(
            (len(loader), [[int(i) for _, yb in loader for i in yb] for _ in range(epochs)], [sum(1 for _ in loader)])
        )
    return out


@pytest.mark.parametrize("batch_size", [1, 4])
@pytest.mark.parametrize(("n", "world"), [(101, 2), (100, 2), (10, 3), (7, 4)])
def test_evaluation_shards_count_every_sample_exactly_once(monkeypatch, n, world, batch_size):
    per_rank = shards(monkeypatch, n, world, batch_size=batch_size, shuffle=False)
    seen = [i for _, epochs, _ in per_rank for i in epochs[0]]
    assert sorted(seen) == list(range(n))  # disjoint shares, no padding: metrics sum to the true counts
    for length, _, batches in per_rank:
        assert length == batches[0]  # len() is what this rank iterates


@pytest.mark.parametrize("batch_size", [1, 4])
@pytest.mark.parametrize(("n", "world"), [(101, 2), (100, 2), (10, 3), (7, 4)])
def test_training_shards_cover_the_data_with_equal_step_counts(monkeypatch, n, world, batch_size):
    per_rank = shards(monkeypatch, n, world, batch_size=batch_size, shuffle=True, epochs=2)
    per_rank_size = math.ceil(n / world)
    for length, _, batches in per_rank:
        assert length == batches[0] == math.ceil(per_rank_size / batch_size)  # every rank steps equally often
    for epoch in range(2):
        seen = [i for _, epochs, _ in per_rank for i in epochs[epoch]]
        assert len(seen) == per_rank_size * world  # padded to equal shares
        assert set(seen) == set(range(n))  # and every sample is used
        assert len(seen) - len(set(seen)) == per_rank_size * world - n  # padding repeats only what it must
    # ranks agree on the permutation: together their epoch-0 and epoch-1 shares differ (reshuffled)
    assert [epochs[0] for _, epochs, _ in per_rank] != [epochs[1] for _, epochs, _ in per_rank]
