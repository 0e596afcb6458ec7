"""Transfer learning (`transfer`, and `resnet` as its ResNet form): every backbone on small grey and colour images,
weights from a state_dict the test saves itself, stem adaptation, freezing (parameters and BatchNorm statistics
through a real fit), the backbone's lower learning rate, offline errors and the renamed keys."""

from __future__ import annotations

import urllib.error
from pathlib import Path
from typing import get_args

import lightning as L
import pytest
import torch
import torchvision
from helpers.training import NO_EARLY_STOP, SEED, dataset, problem, spec, subsample, train
from torch import nn

from dlpipe.config import parse_params
from dlpipe.errors import ConfigError, ModelError
from dlpipe.models import build_model
from dlpipe.models.transfer import BLOCKS, Backbone, TransferNet, TransferParams

BACKBONES = get_args(Backbone)
RESNET_URL = "https://download.pytorch.org/models/resnet18-f37072fd.pth"


def build(input_shape: tuple[int, ...], arch: str = "transfer", num_classes: int = 10, **params) -> TransferNet:
    torch.manual_seed(0)
    return build_model(arch, params, input_shape, num_classes)


def saved_weights(folder: Path, backbone: str, seed: int = 123) -> tuple[str, dict[str, torch.Tensor]]:
    """A torchvision `backbone` state_dict with random (seeded) weights and shifted BatchNorm statistics, saved where
    `weights_path` can point: what an ImageNet download would give, without the network."""
    torch.manual_seed(seed)
    state = torchvision.models.get_model(backbone, weights=None).state_dict()
    for key, value in state.items():  # BatchNorm statistics other than the 0/1 a fresh model starts from
        if key.endswith("running_mean"):
            state[key] = value + 0.1 * torch.randn_like(value)
        elif key.endswith("running_var"):
            state[key] = value * (1 + 0.1 * torch.rand_like(value))
    path = folder / f"{backbone}.pth"
    torch.save(state, path)
    return str(path), state


@pytest.fixture(scope="module")
def resnet18_weights(tmp_path_factory: pytest.TempPathFactory) -> tuple[str, dict[str, torch.Tensor]]:
    return saved_weights(tmp_path_factory.mktemp("weights"), "resnet18")


# --- every backbone ---


@pytest.mark.parametrize("input_shape", [(1, 8, 8), (3, 32, 32)], ids=["8x8x1", "32x32x3"])
@pytest.mark.parametrize("backbone", BACKBONES)
def test_every_backbone_builds_and_trains_on_small_images(backbone, input_shape):
    model = build(input_shape, backbone=backbone)
    x = torch.randn(2, *input_shape)
    out = model(x)
    assert out.shape == (2, 10) and torch.isfinite(out).all()
    nn.functional.cross_entropy(out, torch.tensor([0, 1])).backward()
    assert model.head.weight.grad is not None and model.head.weight.grad.abs().sum() > 0
    stem = next(p for p in model.backbone.parameters())
    assert stem.grad is not None and stem.grad.abs().sum() > 0  # the gradient reaches the first conv


@pytest.mark.parametrize("backbone", BACKBONES)
def test_the_blocks_cover_every_backbone_parameter_once(backbone):
    model = build((1, 8, 8), backbone=backbone)
    assert len(model.blocks) == BLOCKS[backbone]  # what params validation allows for unfreeze_last
    modules = [model.backbone.get_submodule(name).named_parameters(prefix=name) for b in model.blocks for name in b]
    owned = [n for params in modules for n, _ in params]
    assert sorted(owned) == sorted(n for n, _ in model.backbone.named_parameters())
    assert len(model.blocks) >= 5


def test_vgg_skips_the_pools_that_would_leave_nothing():
    small = build((1, 8, 8), backbone="vgg11_bn")
    assert sum(isinstance(m, nn.MaxPool2d) for m in small.modules()) == 3  # 8 -> 4 -> 2 -> 1, then none
    mnist = build((1, 28, 28), backbone="vgg11_bn")
    assert sum(isinstance(m, nn.MaxPool2d) for m in mnist.modules()) == 4  # 28 -> 14 -> 7 -> 3 -> 1
    assert mnist(torch.randn(2, 1, 28, 28)).shape == (2, 10)
    big = build((3, 64, 64), backbone="vgg11_bn")
    assert sum(isinstance(m, nn.MaxPool2d) for m in big.modules()) == 5


@pytest.mark.parametrize("backbone", ["mobilenet_v3_small", "efficientnet_b0"])
def test_strided_stems_follow_stem_downsample(backbone):
    kept = build((1, 8, 8), backbone=backbone)
    assert kept.backbone.features[0][0].stride == (2, 2) and kept.backbone.features[0][0].in_channels == 1
    dropped = build((1, 8, 8), backbone=backbone, stem_downsample=None)  # null: dropped below 64 px
    assert dropped.backbone.features[0][0].stride == (1, 1)
    assert dropped(torch.randn(2, 1, 8, 8)).shape == (2, 10)
    big = build((3, 64, 64), backbone=backbone, stem_downsample=None)
    assert big.backbone.features[0][0].stride == (2, 2)


def test_resnet_stem_downsample_is_its_max_pool():
    assert isinstance(build((1, 8, 8), "resnet", stem_downsample=None).backbone.maxpool, nn.Identity)
    kept = build((1, 8, 8), "resnet", stem_downsample=True)
    assert isinstance(kept.backbone.maxpool, nn.MaxPool2d)
    assert isinstance(build((3, 64, 64), "resnet", stem_downsample=False).backbone.maxpool, nn.Identity)


def test_resnet_is_transfer_with_a_resnet18_backbone():
    alias, full = build((1, 8, 8), "resnet"), build((1, 8, 8), "transfer", backbone="resnet18")
    assert alias.state_dict().keys() == full.state_dict().keys()
    assert all(torch.equal(a, b) for a, b in zip(alias.state_dict().values(), full.state_dict().values(), strict=True))
    with pytest.raises(Exception, match="resnet18"):
        build((1, 8, 8), "resnet", backbone="mobilenet_v3_small")  # resnet takes ResNet backbones only


# --- weights ---


def test_weights_from_a_local_state_dict_reach_the_model(resnet18_weights):
    path, state = resnet18_weights
    model = build((3, 64, 64), pretrained=True, weights_path=path).backbone
    assert torch.equal(model.layer1[0].conv1.weight, state["layer1.0.conv1.weight"])
    assert torch.equal(model.layer4[1].bn2.running_var, state["layer4.1.bn2.running_var"])
    assert torch.equal(model.conv1.weight, state["conv1.weight"])  # 3-channel, large image: stem kept as is
    fresh = build((3, 64, 64), pretrained=False, weights_path=path).backbone  # the path alone loads nothing
    assert not torch.equal(fresh.layer1[0].conv1.weight, state["layer1.0.conv1.weight"])


@pytest.mark.parametrize("backbone", ["mobilenet_v3_small", "vgg11_bn", "efficientnet_b0"])
def test_weights_reach_every_family(tmp_path, backbone):
    path, state = saved_weights(tmp_path, backbone)
    model = build((3, 32, 32), backbone=backbone, pretrained=True, weights_path=path).backbone
    own = model.state_dict()
    loaded = [k for k in state if not k.startswith("classifier.")]
    assert loaded and all(torch.equal(own[k], state[k]) for k in loaded if own[k].shape == state[k].shape)
    assert "classifier.0.weight" not in own  # the ImageNet classifier is gone; a new head replaces it


def test_small_grey_images_get_a_stem_from_the_kernel_centre(resnet18_weights):
    path, state = resnet18_weights
    stem = build((1, 8, 8), pretrained=True, weights_path=path).backbone.conv1
    assert (stem.in_channels, stem.kernel_size, stem.stride, stem.padding) == (1, (3, 3), (1, 1), (1, 1))
    assert torch.allclose(stem.weight, state["conv1.weight"][:, :, 2:5, 2:5].mean(dim=1, keepdim=True) * 3)
    colour = build((3, 32, 32), pretrained=True, weights_path=path).backbone
    assert torch.equal(colour.conv1.weight, state["conv1.weight"][:, :, 2:5, 2:5])


def test_a_state_dict_of_another_backbone_is_refused(resnet18_weights):
    path, _ = resnet18_weights
    with pytest.raises(ModelError, match=r"models\.transfer\.weights_path: .*is not a mobilenet_v3_small state_dict"):
        build((1, 8, 8), backbone="mobilenet_v3_small", pretrained=True, weights_path=path)


def test_a_file_that_is_no_state_dict_is_refused(tmp_path):
    junk = tmp_path / "junk.pth"
    junk.write_text("not a checkpoint")
    with pytest.raises(ModelError, match=r"models\.transfer\.weights_path: .*junk\.pth is not a saved state_dict"):
        build((1, 8, 8), pretrained=True, weights_path=str(junk))
    with pytest.raises(ModelError, match=r"models\.resnet\.weights_path: no such file .*nope\.pth"):
        build((1, 8, 8), "resnet", pretrained=True, weights_path=str(tmp_path / "nope.pth"))


def _offline(monkeypatch) -> list:
    calls = []

    def offline(*args, **kwargs):
        calls.append(args)
        raise urllib.error.URLError("no network in tests")

    monkeypatch.setattr(torchvision.models._api, "load_state_dict_from_url", offline)
    monkeypatch.setattr(torch.hub, "load_state_dict_from_url", offline)  # belt and braces: never download
    return calls


def test_pretrained_without_network_names_the_url_and_weights_path(monkeypatch):
    calls = _offline(monkeypatch)
    with pytest.raises(ModelError) as err:
        build((1, 8, 8), "resnet", pretrained=True)
    message = str(err.value)
    assert RESNET_URL in message and "\n" not in message
    assert "models.resnet.weights_path" in message and "no network in tests" in message
    assert calls  # the download path was really taken
    with pytest.raises(ModelError, match=r"mobilenet_v3_small from https://download\.pytorch\.org/models/mobilenet"):
        build((1, 8, 8), backbone="mobilenet_v3_small", pretrained=True)


# --- freezing and learning rates ---


def test_freeze_backbone_trains_only_the_head(resnet18_weights):
    path, _ = resnet18_weights
    model = build((1, 8, 8), pretrained=True, weights_path=path, freeze="backbone", dropout=0.3)
    assert {n for n, p in model.named_parameters() if p.requires_grad} == {"head.1.weight", "head.1.bias"}
    model.train()
    assert not any(m.training for m in model.backbone.modules())  # frozen blocks stay in eval mode
    assert model.head.training


def test_all_but_last_k_trains_the_last_blocks_and_the_head():
    model = build((1, 8, 8), backbone="mobilenet_v3_small", freeze="all_but_last_k", unfreeze_last=2)
    trainable = {n.split(".")[1] for n, p in model.backbone.named_parameters() if p.requires_grad}
    assert trainable == {"11", "12"}  # features.11 and features.12, the last two of 13 blocks
    assert all(p.requires_grad for p in model.head.parameters())
    model.train()
    assert model.backbone.features[12].training and not model.backbone.features[10].training
    with pytest.raises(
        ConfigError, match=r"p\.yaml: models\.transfer: unfreeze_last: resnet18 has 5 blocks; allowed: 1"
    ):
        parse_params({"models": {"transfer": {"freeze": "all_but_last_k", "unfreeze_last": 6}}}, "p.yaml")


def test_frozen_parameters_and_batchnorm_statistics_do_not_move_in_a_real_fit(resnet18_weights):
    """Two epochs (validation between them: Lightning puts the module back in training mode) with the first four
    blocks frozen: their weights and running statistics stay as loaded; the last block and the head learn."""
    path, state = resnet18_weights
    prob = problem(subsample(dataset("digits"), 8))
    model = {"pretrained": True, "weights_path": path, "freeze": "all_but_last_k", "unfreeze_last": 1}
    result = train("transfer", prob, model, max_epochs=2, batch_size=16, **NO_EARLY_STOP)
    assert result.epochs == 2
    backbone = result.module.model.backbone.state_dict()
    frozen = [k for k in backbone if k.startswith(("bn1.", "layer1.", "layer2.", "layer3."))]
    moved = [k for k in frozen if not torch.equal(backbone[k], state[k])]
    assert frozen and moved == []
    assert any(k.endswith("running_mean") for k in frozen)
    assert not torch.equal(backbone["layer4.1.bn2.running_mean"], state["layer4.1.bn2.running_mean"])
    assert not torch.equal(backbone["layer4.1.conv2.weight"], state["layer4.1.conv2.weight"])
    L.seed_everything(SEED, verbose=False)  # as fit does before it builds: the head it started from
    start = spec("transfer", model).build((1, 8, 8), 10, None).model.head
    assert not torch.equal(result.module.model.head.weight, start.weight)


def test_the_backbone_learns_at_a_fraction_of_the_head_rate():
    def groups(model: dict, **train) -> list[tuple[int, float]]:
        optimizer = spec("transfer", model, **train).build((1, 8, 8), 10, None).configure_optimizers()
        optimizer = optimizer["optimizer"] if isinstance(optimizer, dict) else optimizer
        return [(len(g["params"]), g["lr"]) for g in optimizer.param_groups]

    head = 2  # weight and bias
    backbone = sum(1 for _ in build((1, 8, 8)).backbone.parameters())
    assert groups({"backbone_lr_factor": 0.1}, lr=0.01) == [(backbone, pytest.approx(0.001)), (head, 0.01)]
    assert groups({}, lr=0.01) == [(backbone, 0.01), (head, 0.01)]  # no pretrained weights: the same rate
    assert groups({"freeze": "backbone"}, lr=0.01) == [(head, 0.01)]
    sched = groups({"backbone_lr_factor": 0.5}, lr=0.01, scheduler="step")
    assert sched == [(backbone, pytest.approx(0.005)), (head, 0.01)]
    assert TransferParams(pretrained=True).lr_factor == 0.1 and TransferParams().lr_factor == 1.0


# --- params ---


@pytest.mark.parametrize(
    ("old", "new"),
    [({"freeze_backbone": True}, "freeze: backbone"), ({"maxpool": None}, "stem_downsample")],
)
def test_the_old_resnet_keys_are_refused_naming_the_new_ones(old, new):
    with pytest.raises(ConfigError) as err:
        parse_params({"models": {"resnet": old}}, "p.yaml")
    message = str(err.value)
    assert message.startswith(f"p.yaml: models.resnet: {next(iter(old))}: renamed; use ") and new in message
    assert "\n" not in message


@pytest.mark.parametrize("backbone", ["mobilenet_v3_small", "efficientnet_b0"])
def test_a_transfer_model_exports_for_serving(tmp_path, backbone):
    from dlpipe.data.splits import Normalizer
    from dlpipe.tracking.model_logging import export_program

    model = build((1, 8, 8), backbone=backbone, freeze="all_but_last_k", unfreeze_last=2).eval()
    X = torch.rand(6, 1, 8, 8)
    export_program(model, Normalizer.fit(X), X[:4], tmp_path / "model.pt2", check=X)  # checks the probabilities
    assert (tmp_path / "model.pt2").stat().st_size > 0
