"""The families on series (N x channels x length, shorter series NaN-padded): rnn/lstm/gru read each series to its
own last step exactly as packed sequences do, the transformer masks padded steps, cnn1d (FCN / ResNet) pools over
the real steps only; every one exports for serving; a label decided by the last step of the longest series is
learned; cnn1d learns GunPoint on its official split; series augmentation keeps to each series' own steps."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from helpers.training import CPU, NO_EARLY_STOP, problem, spec, torch_threads, train
from torch import nn
from torch.nn.utils.rnn import pack_padded_sequence

from dlpipe.config import DataParams, TrainParams, parse_params
from dlpipe.data import load_dataset
from dlpipe.data.prepared import PreparedData
from dlpipe.data.series_sets import series_dataset
from dlpipe.data.splits import Normalizer, make_splits
from dlpipe.errors import ConfigError
from dlpipe.models import build_model, get_architecture
from dlpipe.tracking.model_logging import ServingNet, export_program
from dlpipe.training.augmentation import SeriesAugment, build_augmentation
from dlpipe.training.fit import evaluate, fit, predict_proba

SEQUENCE_ARCHS = ("rnn", "lstm", "gru", "transformer", "cnn1d")
NAN = float("nan")


def build(arch: str, input_shape: tuple[int, ...], num_classes: int = 3, **params) -> nn.Module:
    torch.manual_seed(0)
    return build_model(arch, get_architecture(arch).params.model_validate(params), input_shape, num_classes)


def padded_batch(lengths: list[int], channels: int = 2, length: int | None = None, seed: int = 0) -> torch.Tensor:
    gen = torch.Generator().manual_seed(seed)
    x = torch.randn(len(lengths), channels, length or max(lengths), generator=gen)
    for i, n in enumerate(lengths):
        x[i, :, n:] = NAN
    return x


@pytest.mark.parametrize("arch", SEQUENCE_ARCHS)
def test_series_give_finite_logits_and_every_parameter_learns(arch):
    model = build(arch, (2, 9), num_layers=2) if arch != "cnn1d" else build(arch, (2, 9), residual=True)
    x = padded_batch([9, 4, 1, 7])
    loss = nn.functional.cross_entropy(model(x), torch.tensor([0, 1, 2, 0]))
    loss.backward()
    assert torch.isfinite(loss)
    missing = [name for name, p in model.named_parameters() if p.grad is None or not p.grad.abs().sum() > 0]
    assert missing == []


@pytest.mark.parametrize("arch", ["rnn", "lstm", "gru", "cnn1d"])
def test_padding_is_never_read(arch):
    """A series' output is the same whatever the batch is padded to, and whatever the padded steps' neighbours."""
    model = build(arch, (2, 6), num_layers=2, hidden_size=5) if arch != "cnn1d" else build(arch, (2, 6))
    model.eval()
    x = padded_batch([6, 3, 1])
    longer = torch.cat([x, torch.full((3, 2, 5), NAN)], dim=2)
    with torch.no_grad():
        assert torch.allclose(model(x), model(longer), atol=1e-6)
        assert torch.allclose(model(x)[1:2], model(x[1:2, :, :3]), atol=1e-6)  # alone, cut to its length


@pytest.mark.parametrize("residual", [False, True])
def test_cnn1d_batch_norm_in_training_leaves_padding_out(residual):
    """With batch statistics (training), padded steps are no data either: padding the batch further changes neither
    its outputs nor the running statistics batch norm keeps for evaluation."""
    x = padded_batch([6, 3, 1])
    longer = torch.cat([x, torch.full((3, 2, 5), NAN)], dim=2)
    short, long = build("cnn1d", (2, 6), residual=residual).train(), build("cnn1d", (2, 11), residual=residual).train()
    assert torch.allclose(short(x), long(longer), atol=1e-5)
    norms = [m for m in short.modules() if isinstance(m, nn.BatchNorm1d)]
    for a, b in zip(norms, [m for m in long.modules() if isinstance(m, nn.BatchNorm1d)], strict=True):
        assert torch.allclose(a.running_mean, b.running_mean, atol=1e-6)
        assert torch.allclose(a.running_var, b.running_var, atol=1e-5)


@pytest.mark.parametrize("arch", ["rnn", "lstm", "gru"])
@pytest.mark.parametrize("bidirectional", [True, False])
def test_recurrent_series_equal_packed_sequences(arch, bidirectional):
    """The same weights in one stacked (bidirectional) nn.RNN/LSTM/GRU over packed sequences give the same head
    input: the final forward state after each series' last step, the backward one after its first."""
    hidden, layers = 5, 2
    model = build(arch, (3, 8), hidden_size=hidden, num_layers=layers, bidirectional=bidirectional).eval()
    cell = {"rnn": nn.RNN, "lstm": nn.LSTM, "gru": nn.GRU}[arch]
    packed_rnn = cell(3, hidden, num_layers=layers, batch_first=True, bidirectional=bidirectional)
    with torch.no_grad():
        for i, cells in enumerate(model.layers):
            for d, one_way in enumerate(cells):
                suffix = "_reverse" if d else ""
                for name, p in one_way.named_parameters():  # weight_ih_l0 -> weight_ih_l{i}{suffix}
                    getattr(packed_rnn, f"{name[:-1]}{i}{suffix}").copy_(p)
    x = padded_batch([8, 5, 2, 7], channels=3)
    lengths = torch.tensor([8, 5, 2, 7])
    with torch.no_grad():
        packed = pack_padded_sequence(torch.nan_to_num(x).transpose(1, 2), lengths, True, enforce_sorted=False)
        _, state = packed_rnn(packed)
        h = state[0] if isinstance(state, tuple) else state
        directions = 2 if bidirectional else 1
        expected = model.head(h[-directions:].transpose(0, 1).flatten(1))
        assert torch.allclose(model(x), expected, atol=1e-5)


@pytest.mark.parametrize("pooling", ["cls", "mean"])
def test_transformer_masks_padded_steps(pooling):
    """A padded series gives what the encoder gives on its real steps alone (no mask, no padding)."""
    model = build("transformer", (2, 7), pooling=pooling, d_model=16, nhead=2, num_layers=2).eval()
    x = padded_batch([7, 3], length=7)
    with torch.no_grad():
        tokens = model.embed(x[1:2, :, :3].transpose(1, 2))
        if model.cls is not None:
            tokens = torch.cat([model.cls, tokens], dim=1)
        z = model.norm(model.encoder(tokens + model.pos[:, : tokens.shape[1]]))
        expected = model.head(z[:, 0] if pooling == "cls" else z.mean(dim=1))
        assert torch.allclose(model(x)[1:2], expected, atol=1e-5)
    with pytest.raises(ConfigError, match=r"models\.transformer\.patch_size: a series takes one token per step"):
        build("transformer", (2, 8), patch_size=2)


def test_cnn1d_is_the_fcn_or_its_residual_variant():
    fcn = build("cnn1d", (3, 20))
    convs = [m for m in fcn.modules() if isinstance(m, nn.Conv1d)]
    assert [(c.in_channels, c.out_channels, c.kernel_size[0]) for c in convs] == [
        (3, 128, 8),
        (128, 256, 5),
        (256, 128, 3),
    ]
    assert sum(isinstance(m, nn.BatchNorm1d) for m in fcn.modules()) == 3 and fcn.head.in_features == 128
    res = build("cnn1d", (3, 20), residual=True, channels=[64, 128, 128])
    convs = [m for m in res.modules() if isinstance(m, nn.Conv1d)]
    assert len(convs) == 3 * 3 + 2  # three convs per block, a 1x1 shortcut where the width changes (3->64, 64->128)
    assert fcn(padded_batch([20, 11], channels=3)).shape == (2, 3)
    with pytest.raises(ValueError, match="one kernel per block of channels"):
        get_architecture("cnn1d").params.model_validate({"channels": [8, 8], "kernel_sizes": [3]})


@pytest.mark.parametrize("arch", SEQUENCE_ARCHS)
def test_series_models_export_for_serving_with_per_series_znormalisation(arch, tmp_path):
    x = padded_batch([9, 4, 6], length=9) * 5 + 2
    norm = Normalizer.fit(x, per_series=True)
    net = build(arch, (2, 9)).eval()
    export_program(net, norm, x, tmp_path / "model.pt2", check=x)  # raises unless the program gives the same
    program = torch.export.load(str(tmp_path / "model.pt2")).module()
    with torch.no_grad():
        probs = program(x)
        assert torch.allclose(probs, ServingNet(net, norm).eval()(x), atol=1e-5)
        assert torch.allclose(probs, torch.softmax(net(norm(x)), dim=1), atol=1e-5)


def last_step_problem(n: int = 240, length: int = 24, seed: int = 0):
    """Noise series of lengths 4..length whose class is the sign of their last step: only reading every series to
    its own end tells the classes apart, the longest ones to step `length`."""
    rng = np.random.default_rng(seed)
    lengths = np.where(np.arange(n) % 3 == 0, length, rng.integers(4, length, size=n))  # a third full length
    labels = rng.integers(0, 2, size=n)
    series = []
    for steps, label in zip(lengths, labels, strict=True):
        s = rng.normal(0.0, 1.0, size=(1, steps)).astype(np.float32)
        s[0, -1] = 2.0 if label else -2.0
        series.append(s)
    ds = series_dataset("last_step", series, [str(v) for v in labels], ["0", "1"])
    assert ds.X.shape == (n, 1, length)  # padded to the longest series, never cut to a shorter one
    return problem(ds, test_size=0.25)


@pytest.mark.parametrize("arch", ["lstm", "transformer"])
def test_a_label_decided_by_the_last_step_of_the_longest_series_is_learned(arch):
    prob = last_step_problem()
    model = {"hidden_size": 16} if arch == "lstm" else {"d_model": 16, "nhead": 2, "num_layers": 1}
    with torch_threads(1):
        result = train(arch, prob, model, max_epochs=25, lr=0.01, batch_size=32, **NO_EARLY_STOP)
        probs = predict_proba(result.module, prob.test.X)
    predicted = probs.argmax(dim=1).numpy()
    longest = (~torch.isnan(prob.test.X[:, 0, -1])).numpy()  # the full-length test series
    assert longest.sum() >= 15
    assert (predicted == prob.test.y.numpy()).mean() >= 0.9
    assert (predicted[longest] == prob.test.y.numpy()[longest]).mean() >= 0.9


def test_cnn1d_learns_gunpoint_on_its_official_split():
    """50 training series, 150 test: a small FCN well above chance (0.5) after 20 epochs (measured: 0.80)."""
    ds = load_dataset("gunpoint", ".", DataParams(name="gunpoint"))
    data = PreparedData(ds, make_splits(ds.y.numpy(), 0.2, 5, 0, ds.official_test.numpy()))
    split = data.holdout(0.2, seed=0)
    test = data.test(split.normalizer)
    assert len(test) == 150 and len(split.train) + len(split.val) == 50
    with torch_threads(2):
        model = spec("cnn1d", {"channels": [16, 32, 16]}, lr=0.01, batch_size=8, **NO_EARLY_STOP)
        result = fit(model, split, ds.class_names, CPU, 0, max_epochs=20)
        accuracy = evaluate(result.module, test, CPU)["accuracy"]
    assert accuracy >= 0.7, accuracy


def test_series_augmentation_stays_within_each_series_and_keeps_padding():
    p = TrainParams.model_validate({"augmentation": {"enabled": True, "jitter": 0.1, "scaling": 0.2}}).augmentation
    augment = build_augmentation(p, (2, 9))
    assert isinstance(augment, SeriesAugment)
    x = padded_batch([9, 4, 1], length=9)
    torch.manual_seed(0)
    out = augment(x)
    assert torch.equal(torch.isnan(out), torch.isnan(x)) and not torch.allclose(out[0], x[0])
    off = TrainParams.model_validate({"augmentation": {"enabled": True}}).augmentation
    assert build_augmentation(off, (2, 9)) is None
    # window slicing: a ramp 0..n-1 keeps a window of half its length, stretched back over the n steps
    ramp = torch.full((2, 1, 9), NAN)
    ramp[0, 0, :] = torch.arange(9.0)
    ramp[1, 0, :5] = torch.arange(5.0)
    sliced = SeriesAugment(0.0, 0.0, 0.5).slice_windows(ramp)
    assert torch.isnan(sliced[1, 0, 5:]).all()
    for row, n in ((0, 9), (1, 5)):
        steps = sliced[row, 0, :n]
        width = int(np.ceil(0.5 * n))
        slope = (width - 1) / (n - 1)
        assert torch.allclose(steps.diff(), torch.full((n - 1,), slope), atol=1e-5)
        assert steps[0] >= 0 and steps[-1] <= n - 1 + 1e-5


def test_augmentation_options_must_fit_the_data_kind():
    series = {"data": {"name": "gunpoint"}, "architectures": ["cnn1d"]}
    ok = parse_params({**series, "train": {"augmentation": {"enabled": True, "window_slice": 0.9, "jitter": 0.05}}})
    assert ok.train.augmentation.window_slice == 0.9
    with pytest.raises(ConfigError, match=r"train\.augmentation\.hflip: not for sequence data; allowed: jitter"):
        parse_params({**series, "train": {"augmentation": {"enabled": True, "hflip": True}}})
    with pytest.raises(ConfigError, match=r"train\.augmentation\.jitter: not for image data; allowed: the image"):
        parse_params({"architectures": ["cnn"], "train": {"augmentation": {"enabled": True, "jitter": 0.1}}})


def test_series_augmentation_is_applied_in_training():
    prob = last_step_problem(n=60)
    augmentation = {"enabled": True, "jitter": 0.1, "window_slice": 0.9}
    with torch_threads(1):
        result = train("gru", prob, {"hidden_size": 8}, max_epochs=1, augmentation=augmentation, **NO_EARLY_STOP)
    assert isinstance(result.module.augment, SeriesAugment)
    assert result.module.augment.window == 0.9
