"""The architecture registry: output shapes on every input kind, shape checks, recurrent heads, the autoencoder's
decoder and the GAN's generator (transfer learning: test_transfer.py; categorical tabular inputs:
test_categorical.py)."""

from __future__ import annotations

import pytest
import torch
from torch import nn

from dlpipe.errors import ConfigError
from dlpipe.models import ARCHITECTURES, build_model, get_architecture
from dlpipe.models.registry import Architecture

IMAGE_SHAPES = [(1, 8, 8), (1, 28, 28), (3, 32, 32)]
TABULAR_SHAPE = (30,)
TABULAR_ARCHS = ("perceptron", "mlp", "wide_deep", "autoencoder")
IMAGE_ONLY_ARCHS = ("cnn", "resnet", "transfer", "gan")
SEQUENCE_ARCHS = ("rnn", "lstm", "gru", "transformer")  # images and series (tests/unit/test_sequence_models.py)
SERIES_ONLY_ARCHS = ("cnn1d",)
RECURRENT = ("rnn", "lstm", "gru")
ACTIVATIONS = ("relu", "leaky_relu", "tanh", "sigmoid", "gelu")
INITS = ("default", "xavier", "kaiming")
NUM_CLASSES = 10
IMAGE_ARCHS = sorted(name for name, arch in ARCHITECTURES.items() if "image" in arch.kinds)


def build(arch: str, input_shape: tuple[int, ...], num_classes: int = NUM_CLASSES, **params) -> nn.Module:
    torch.manual_seed(0)
    return build_model(arch, get_architecture(arch).params.model_validate(params), input_shape, num_classes)


def logits(model: nn.Module, input_shape: tuple[int, ...], n: int = 3) -> torch.Tensor:
    model.eval()
    with torch.no_grad():
        return model(torch.randn(n, *input_shape))


def test_registry_lists_every_family_with_its_input_kinds():
    assert set(ARCHITECTURES) == set(TABULAR_ARCHS) | set(IMAGE_ONLY_ARCHS) | set(SEQUENCE_ARCHS) | set(
        SERIES_ONLY_ARCHS
    )
    for name in TABULAR_ARCHS:
        assert ARCHITECTURES[name].kinds == {"image", "tabular"}
    for name in IMAGE_ONLY_ARCHS:
        assert ARCHITECTURES[name].kinds == {"image"}
    for name in SEQUENCE_ARCHS:
        assert ARCHITECTURES[name].kinds == {"image", "sequence", "text"}
    assert ARCHITECTURES["cnn1d"].kinds == {"sequence", "text"}
    assert all(isinstance(a, Architecture) and a.description for a in ARCHITECTURES.values())


def test_unknown_architecture_names_the_choices():
    with pytest.raises(ConfigError, match=r"unknown architecture 'vgg'; allowed: perceptron, mlp"):
        get_architecture("vgg")


@pytest.mark.parametrize("input_shape", IMAGE_SHAPES, ids=lambda s: "x".join(map(str, s)))
@pytest.mark.parametrize("arch", IMAGE_ARCHS)
def test_image_input_gives_one_logit_per_class(arch, input_shape):
    model = build(arch, input_shape)
    out = logits(model, input_shape)
    assert out.shape == (3, NUM_CLASSES)
    assert torch.isfinite(out).all()


@pytest.mark.parametrize("arch", TABULAR_ARCHS)
@pytest.mark.parametrize("num_classes", [2, 5])
def test_tabular_input_gives_one_logit_per_class(arch, num_classes):
    out = logits(build(arch, TABULAR_SHAPE, num_classes), TABULAR_SHAPE, n=4)
    assert out.shape == (4, num_classes)


@pytest.mark.parametrize("arch", IMAGE_ARCHS)
def test_every_parameter_gets_a_gradient(arch):
    """No dead parameters: DDP (without find_unused_parameters) would hang or fail on them."""
    model = build(arch, (1, 8, 8))
    model.train()
    loss = nn.functional.cross_entropy(model(torch.randn(4, 1, 8, 8)), torch.tensor([0, 1, 2, 3]))
    loss.backward()
    missing = [name for name, p in model.named_parameters() if p.grad is None or not p.grad.abs().sum() > 0]
    assert missing == []


def test_build_model_accepts_plain_dict_params():
    model = build_model("mlp", {"hidden": [16, 8]}, (1, 8, 8), 3)
    widths = [m.out_features for m in model.modules() if isinstance(m, nn.Linear)]
    assert widths == [16, 8, 3]


def test_perceptron_is_one_linear_layer():
    model = build("perceptron", (1, 8, 8))
    linears = [m for m in model.modules() if isinstance(m, nn.Linear)]
    assert [(m.in_features, m.out_features) for m in linears] == [(64, NUM_CLASSES)]
    assert sum(p.numel() for p in model.parameters()) == 64 * NUM_CLASSES + NUM_CLASSES


def test_wide_deep_sums_a_linear_path_and_an_mlp():
    model = build("wide_deep", TABULAR_SHAPE, 2, hidden=[16])
    x = torch.randn(5, 30)
    model.eval()
    with torch.no_grad():
        assert torch.allclose(model(x), model.wide(x) + model.deep(x))
    assert model.wide.in_features == 30


@pytest.mark.parametrize("arch", ["mlp", "wide_deep", "cnn"])
def test_dropout_sits_after_every_hidden_layer(arch):
    hidden = [32, 16]
    model = build(arch, (1, 8, 8), hidden=hidden, dropout=0.25)
    drops = [m for m in model.modules() if isinstance(m, nn.Dropout)]
    assert len(drops) == len(hidden) and all(d.p == 0.25 for d in drops)
    assert not any(isinstance(m, nn.Dropout) for m in build(arch, (1, 8, 8), hidden=hidden, dropout=0.0).modules())


# --- activations and initialisation ---


@pytest.mark.parametrize("activation", ACTIVATIONS)
@pytest.mark.parametrize("arch", ["mlp", "wide_deep", "cnn"])
def test_each_activation_builds_and_is_used(arch, activation):
    model = build(arch, (1, 8, 8), activation=activation)
    expected = {"relu": nn.ReLU, "leaky_relu": nn.LeakyReLU, "tanh": nn.Tanh, "sigmoid": nn.Sigmoid, "gelu": nn.GELU}
    kinds = {type(m) for m in model.modules()} & set(expected.values())
    assert kinds == {expected[activation]}
    assert logits(model, (1, 8, 8)).shape == (3, NUM_CLASSES)


@pytest.mark.parametrize("activation", ["relu", "gelu"])
def test_transformer_activation_option(activation):
    model = build("transformer", (1, 8, 8), activation=activation)
    assert logits(model, (1, 8, 8)).shape == (3, NUM_CLASSES)


def init_weights(model: nn.Module) -> list[torch.Tensor]:
    return [m.weight.detach().clone() for m in model.modules() if isinstance(m, (nn.Linear, nn.Conv2d))]


def init_biases(model: nn.Module) -> list[torch.Tensor]:
    layers = [m for m in model.modules() if isinstance(m, (nn.Linear, nn.Conv2d)) and m.bias is not None]
    rnn = [p for m in model.modules() if isinstance(m, nn.RNNBase) for n, p in m.named_parameters() if "bias" in n]
    return [m.bias.detach() for m in layers] + [p.detach() for p in rnn]


@pytest.mark.parametrize("init", INITS)
@pytest.mark.parametrize("arch", IMAGE_ARCHS)
def test_each_init_builds_and_is_applied(arch, init):
    model = build(arch, (1, 8, 8), init=init)
    assert logits(model, (1, 8, 8)).shape == (3, NUM_CLASSES)
    biases = init_biases(model)
    assert biases, "every family has some bias"
    all_zero = all(not b.any() for b in biases)
    # PyTorch's default init draws biases at random; xavier/kaiming (apply_init) start them at zero
    assert all_zero == (init != "default")


@pytest.mark.parametrize("arch", ["mlp", "cnn", "lstm"])
def test_init_schemes_give_different_weights_for_the_same_seed(arch):
    weights = {init: init_weights(build(arch, (1, 8, 8), init=init)) for init in INITS}
    for a, b in [("default", "xavier"), ("default", "kaiming"), ("xavier", "kaiming")]:
        assert not all(torch.equal(x, y) for x, y in zip(weights[a], weights[b], strict=True)), (a, b)


def test_xavier_bounds_the_weights_by_fan_in_and_out():
    model = build("mlp", (1, 8, 8), hidden=[50], init="xavier")
    first = model[1]
    bound = (6 / (first.in_features + first.out_features)) ** 0.5
    assert first.weight.abs().max() <= bound
    assert first.weight.abs().max() > 0.9 * bound  # uniform over the full range, not a narrower default


# --- CNN ---


def test_cnn_rejects_a_config_that_shrinks_the_map_to_nothing():
    with pytest.raises(ConfigError, match=r"models\.cnn: the feature map shrinks to nothing on \(1, 8, 8\)"):
        build("cnn", (1, 8, 8), channels=[8, 8, 8], kernel_size=5, padding=0)
    # the same blocks fit on a larger image
    assert logits(build("cnn", (1, 28, 28), channels=[8, 8], kernel_size=5, padding=0), (1, 28, 28)).shape == (3, 10)


def test_cnn_skips_pooling_once_the_map_is_smaller_than_the_pool():
    model = build("cnn", (1, 8, 8), channels=[4, 4, 4, 4])  # 8 -> 4 -> 2 -> 1 -> (no pool) 1
    assert sum(isinstance(m, nn.MaxPool2d) for m in model.modules()) == 3
    flatten_to_head = next(m for m in model.modules() if isinstance(m, nn.Linear))
    assert flatten_to_head.in_features == 4 * 1 * 1


def test_cnn_batch_norm_option():
    with_bn = build("cnn", (1, 8, 8), batch_norm=True)
    without = build("cnn", (1, 8, 8), batch_norm=False)
    assert sum(isinstance(m, nn.BatchNorm2d) for m in with_bn.modules()) == 2
    assert not any(isinstance(m, nn.BatchNorm2d) for m in without.modules())
    convs = [m for m in without.modules() if isinstance(m, nn.Conv2d)]
    assert all(c.bias is not None for c in convs)  # the bias is only dropped where batch norm follows


# --- transformer ---


@pytest.mark.parametrize(("input_shape", "patch"), [((1, 8, 8), 3), ((1, 28, 28), 5), ((3, 32, 32), 6)])
def test_transformer_patch_size_must_divide_the_image(input_shape, patch):
    with pytest.raises(ConfigError, match=r"models\.transformer\.patch_size: .* must divide the image size"):
        build("transformer", input_shape, patch_size=patch)


@pytest.mark.parametrize(
    ("input_shape", "patch", "tokens"),
    [((1, 8, 8), 4, 4), ((1, 28, 28), 7, 16), ((3, 32, 32), 4, 64), ((1, 28, 28), 0, 28)],
)
@pytest.mark.parametrize("pooling", ["cls", "mean"])
def test_transformer_tokens_and_positions(input_shape, patch, tokens, pooling):
    model = build("transformer", input_shape, patch_size=patch, pooling=pooling)
    assert model.pos.shape == (1, tokens + (pooling == "cls"), 64)
    assert logits(model, input_shape).shape == (3, NUM_CLASSES)


def test_transformer_patches_are_the_image_squares():
    model = build("transformer", (3, 8, 8), patch_size=4)
    x = torch.randn(2, 3, 8, 8)
    tokens = model.tokens(x)
    assert tokens.shape == (2, 4, 3 * 4 * 4)
    for t, (i, j) in enumerate([(0, 0), (0, 1), (1, 0), (1, 1)]):  # row-major over the patch grid
        assert torch.equal(tokens[:, t], x[:, :, 4 * i : 4 * i + 4, 4 * j : 4 * j + 4].reshape(2, -1))


def test_transformer_rows_are_tokens_without_patches():
    model = build("transformer", (2, 5, 4))
    x = torch.randn(3, 2, 5, 4)
    tokens = model.tokens(x)
    assert tokens.shape == (3, 5, 8)
    assert torch.equal(tokens[:, 2], x[:, :, 2, :].reshape(3, -1))


# --- recurrent ---


@pytest.mark.parametrize("num_layers", [1, 2])
@pytest.mark.parametrize("arch", RECURRENT)
def test_bidirectional_doubles_the_head_input(arch, num_layers):
    bi = build(arch, (1, 8, 8), hidden_size=24, num_layers=num_layers, bidirectional=True)
    uni = build(arch, (1, 8, 8), hidden_size=24, num_layers=num_layers, bidirectional=False)
    assert bi.head.in_features == 2 * 24
    assert uni.head.in_features == 24
    assert bi.rnn.input_size == uni.rnn.input_size == 8  # one image row (C*W) per step
    for model in (bi, uni):
        assert logits(model, (1, 8, 8)).shape == (3, NUM_CLASSES)


@pytest.mark.parametrize("arch", RECURRENT)
def test_recurrent_head_reads_the_last_layers_final_states(arch):
    model = build(arch, (2, 6, 5), hidden_size=7, num_layers=2, bidirectional=True)
    model.eval()
    x = torch.randn(4, 2, 6, 5)
    with torch.no_grad():
        out, _ = model.rnn(x.permute(0, 2, 1, 3).reshape(4, 6, 10))  # rows as steps, channels side by side
        forward_last = out[:, -1, :7]  # forward direction after the last row
        backward_first = out[:, 0, 7:]  # backward direction after reading back to the first row
        expected = model.head(torch.cat([forward_last, backward_first], dim=1))
        assert torch.allclose(model(x), expected, atol=1e-6)


# --- autoencoder and GAN ---


ALL_SHAPES = [*IMAGE_SHAPES, TABULAR_SHAPE, (1, 7, 5)]  # (1, 7, 5): odd sides, which the transposed convs must meet


@pytest.mark.parametrize("depth", [1, 2, 3])
@pytest.mark.parametrize("input_shape", ALL_SHAPES, ids=lambda s: "x".join(map(str, s)))
def test_autoencoder_decoder_reconstructs_the_input_shape_from_the_code(input_shape, depth):
    from dlpipe.models.autoencoder import build_decoder

    net = build("autoencoder", input_shape, depth=depth, latent=12)
    x = torch.randn(3, *input_shape)
    net.eval()
    with torch.no_grad():
        code = net.encode(x)
        assert code.shape == (3, 12)
        assert build_decoder(net)(code).shape == x.shape
        assert torch.equal(net(x), net.head(code))  # the logits are the head's on the code


def test_autoencoder_convolves_images_and_densely_encodes_tabular_data():
    image = build("autoencoder", (1, 8, 8), width=8, depth=2)
    assert [m.out_channels for m in image.modules() if isinstance(m, nn.Conv2d)] == [8, 16]  # doubling per block
    tabular = build("autoencoder", TABULAR_SHAPE, width=8, depth=3, latent=4)
    assert not any(isinstance(m, nn.Conv2d) for m in tabular.modules())
    assert [m.out_features for m in tabular.encoder if isinstance(m, nn.Linear)] == [32, 16, 8, 4]  # narrowing


def test_served_networks_carry_no_decoder_or_generator():
    """What is exported and counted is the classifier: encoder + head, or the discriminator."""
    from dlpipe.models.autoencoder import build_decoder
    from dlpipe.models.gan import build_generator

    ae = build("autoencoder", (1, 8, 8))
    assert {name.split(".")[0] for name, _ in ae.named_parameters()} == {"encoder", "head"}
    decoder_params = {id(p) for p in build_decoder(ae).parameters()}
    assert decoder_params and not decoder_params & {id(p) for p in ae.parameters()}
    disc = build("gan", (1, 8, 8))
    assert {name.split(".")[0] for name, _ in disc.named_parameters()} == {"body", "head"}
    assert not {id(p) for p in build_generator(disc).parameters()} & {id(p) for p in disc.parameters()}


@pytest.mark.parametrize("input_shape", [(1, 8, 8), (1, 28, 28), (3, 32, 32), (1, 7, 5)], ids=str)
@pytest.mark.parametrize("depth", [1, 3])
def test_gan_generator_draws_raw_images_of_the_input_shape(input_shape, depth):
    from dlpipe.models.gan import build_generator

    disc = build("gan", input_shape, depth=depth, latent=20)
    fake = build_generator(disc)(torch.randn(5, 20))
    assert fake.shape == (5, *input_shape)
    assert fake.min() >= 0 and fake.max() <= 1  # a sigmoid: raw pixels in [0, 1], like the data's
    assert disc(fake).shape == (5, NUM_CLASSES)
    assert disc.features(fake).shape == (5, 128)  # the dense layer feature matching compares


@pytest.mark.parametrize("bad", [[0.5, 1.0], [-0.1, 0.9]])
def test_gan_betas_must_lie_in_the_unit_interval(bad):
    from pydantic import ValidationError

    with pytest.raises(ValidationError, match=r"Adam betas must lie in \[0, 1\)"):
        get_architecture("gan").params.model_validate({"betas_generator": bad})
