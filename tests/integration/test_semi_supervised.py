"""The autoencoder and the semi-supervised GAN in `fit`: the reconstruction loss falls, no hidden label reaches a
supervised loss (checked on the dataset indices of every training batch), a diverging GAN fails like any model, and
a fixed seed gives the same training twice."""

from __future__ import annotations

import itertools

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from helpers.training import CPU, NO_EARLY_STOP, Problem, problem, spec
from lightning.pytorch.callbacks import Callback

from dlpipe.data.base import Dataset
from dlpipe.data.prepared import HIDDEN
from dlpipe.training.fit import fit
from dlpipe.tuning.objective import EpochReporter, NonFiniteLoss

SEED = 0


class BatchRecorder(Callback):
    """Every training batch exactly as the module's training_step receives it."""

    def __init__(self) -> None:
        self.batches: list[tuple[torch.Tensor, torch.Tensor]] = []

    def on_train_batch_start(self, trainer, pl_module, batch, batch_idx) -> None:
        x, y = batch
        self.batches.append((x.detach().clone(), y.detach().clone()))


class StubTrial:
    def report(self, value: float, step: int) -> None:
        pass

    def should_prune(self) -> bool:
        return False


def run(arch: str, prob: Problem, model: dict | None = None, epochs: int = 3, callbacks=None, **train):
    return fit(
        spec(arch, model, **{**NO_EARLY_STOP, **train}),
        prob.split,
        prob.class_names,
        CPU,
        SEED,
        max_epochs=epochs,
        callbacks=callbacks,
    )


@pytest.fixture(scope="module")
def digits() -> Problem:
    return problem("digits")


@pytest.fixture(scope="module")
def few_labels() -> Problem:
    """Random 8x8 'images' (every row distinct, so a batch row names its sample) of which 20% keep their labels."""
    gen = torch.Generator().manual_seed(1)
    n = 400
    ds = Dataset("toy", torch.rand(n, 1, 8, 8, generator=gen), torch.arange(n) % 4, "image", list("abcd"))
    return problem(ds, labeled_fraction=0.2)


@pytest.mark.parametrize("reconstruction", ["mse", "bce"])
def test_the_autoencoders_reconstruction_loss_falls_over_epochs(digits, reconstruction):
    result = run("autoencoder", digits, {"reconstruction": reconstruction}, epochs=6)
    train = [e["train_recon_loss"] for e in result.history]
    val = [e["val_recon_loss"] for e in result.history]
    assert len(train) == len(val) == 6
    assert train[-1] < 0.6 * train[0] and val[-1] < 0.6 * val[0], (train, val)
    assert sum(b < a for a, b in itertools.pairwise(val)) >= 4  # it falls epoch after epoch, not once by luck


def test_pretraining_keeps_the_classification_loss_off_the_encoder(digits):
    """During pretrain_epochs the encoder follows reconstruction alone: its weights after epoch 1 are the same
    whatever the classification head does (here: with and without label smoothing, which changes the head's
    loss)."""
    a = run("autoencoder", digits, {"pretrain_epochs": 2, "dropout": 0.0}, epochs=2)
    b = run("autoencoder", digits, {"pretrain_epochs": 2, "dropout": 0.0}, epochs=2, label_smoothing=0.3)
    c = run("autoencoder", digits, {"pretrain_epochs": 0, "dropout": 0.0}, epochs=2, label_smoothing=0.3)
    enc = [dict(m.module.model.encoder.named_parameters()) for m in (a, b, c)]
    assert all(torch.equal(enc[0][k], enc[1][k]) for k in enc[0])
    assert not all(torch.equal(enc[1][k], enc[2][k]) for k in enc[1])
    heads = [dict(m.module.model.head.named_parameters()) for m in (a, b)]
    assert not all(torch.equal(heads[0][k], heads[1][k]) for k in heads[0])  # the heads did learn, differently
    assert a.history[1]["val_loss"] < a.history[0]["val_loss"]  # early stopping sees a classifier improve


def dataset_indices(prob: Problem) -> dict[bytes, int]:
    parts = [prob.split.train, prob.split.unlabeled]
    return {x.numpy().tobytes(): int(i) for part in parts for x, i in zip(part.X, part.idx, strict=True)}


@pytest.mark.parametrize("arch", ["mlp", "autoencoder", "gan"])
def test_no_hidden_label_reaches_a_supervised_loss(few_labels, arch):
    prob = few_labels
    labeled, hidden = set(prob.split.train.idx.tolist()), set(prob.split.unlabeled.idx.tolist())
    true = prob.ds.y.numpy()
    recorder = BatchRecorder()
    result = run(arch, prob, epochs=2, callbacks=[recorder])
    where = dataset_indices(prob)
    seen_labeled, seen_hidden = set(), set()
    for x, y in recorder.batches:
        idx = np.array([where[row.numpy().tobytes()] for row in x])
        y = y.numpy()
        with_label = y != HIDDEN
        assert set(idx[with_label]) <= labeled  # a label in a batch is always one the study may use ...
        assert np.array_equal(y[with_label], true[idx[with_label]])  # ... and the true one
        assert set(idx[~with_label]) <= hidden  # every other row carries -1, never its label
        seen_labeled |= set(idx[with_label].tolist())
        seen_hidden |= set(idx[~with_label].tolist())
    assert seen_labeled == labeled  # every labelled sample was used
    if arch == "mlp":
        assert seen_hidden == set()  # supervised models train on the labelled part only
    else:
        assert seen_hidden == hidden  # semi-supervised ones also read every unlabelled input
        # and their supervised loss counts the labelled rows only
        x, y = recorder.batches[0]
        logits = result.module(x)
        loss, count = result.module.supervised_loss(logits, y)
        assert int(count) == int((y != HIDDEN).sum()) > 0
        assert torch.allclose(loss, F.cross_entropy(logits[y != HIDDEN], y[y != HIDDEN]))


def test_a_diverging_gan_fails_the_fit_with_non_finite_loss(digits):
    """Manual optimisation: the loss training_step returns still reaches the per-batch check (here the
    discriminator's L2 penalty overflows float32)."""
    reporter = EpochReporter(StubTrial(), "val_f1_macro")
    with pytest.raises(NonFiniteLoss, match="not finite in epoch 0"):
        run("gan", digits, epochs=2, callbacks=[reporter], l2=1e300)


@pytest.mark.parametrize("arch", ["autoencoder", "gan"])
def test_a_fixed_seed_trains_the_same_model_twice(few_labels, arch):
    first, second = run(arch, few_labels, epochs=2), run(arch, few_labels, epochs=2)
    assert first.history == second.history
    a, b = first.module.state_dict(), second.module.state_dict()
    assert all(torch.equal(a[k], b[k]) for k in a)
