"""Transfer learning over torchvision backbones (ResNet, VGG, MobileNetV3, EfficientNet), for small images too.

The backbone's ImageNet classifier is replaced by a new head (dropout, linear). Weights come from a local
state_dict (`weights_path`) or torchvision's download (`pretrained`); the old classifier's weights are ignored.
Images below 64 px and 1-channel images get an adapted stem, seeded from the pretrained first conv (its kernel's
centre for ResNet's 7x7, the mean over the input channels for grey images): ResNet's stem conv becomes 3x3/1, the
stride-2 first conv of MobileNet and EfficientNet and ResNet's stem max-pool are kept or dropped by `stem_downsample`,
and VGG skips the max-pools that would shrink the map below 1 px.

Fine-tuning: `freeze` keeps the backbone (`backbone`) or all but its last `unfreeze_last` blocks (`all_but_last_k`)
as loaded. Frozen blocks stay in eval mode whenever the model is put in training mode (BatchNorm running statistics
and dropout as at inference), and the trainable backbone learns at `backbone_lr_factor` times the head's learning
rate (optimizer parameter groups, see `TransferNet.lr_groups`).

`resnet` is this family with a ResNet backbone (resnet18 by default): the earlier `resnet` architecture's keys
`freeze_backbone` and `maxpool` were renamed to `freeze` and `stem_downsample`.
"""

from __future__ import annotations

import logging
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Literal

import torch
from pydantic import Field, model_validator
from torch import nn

from dlpipe.errors import ModelError
from dlpipe.models.common import ArchParams, apply_init
from dlpipe.models.registry import register

log = logging.getLogger(__name__)
SMALL_IMAGE = 64  # below this side length the strided stems would erase the image

Backbone = Literal[
    "resnet18",
    "resnet34",
    "resnet50",
    "vgg11_bn",
    "vgg16_bn",
    "mobilenet_v3_small",
    "mobilenet_v3_large",
    "efficientnet_b0",
]
ResNetBackbone = Literal["resnet18", "resnet34", "resnet50"]
# blocks of each backbone (the unit of freeze: all_but_last_k), known before anything is built
BLOCKS = {
    "resnet18": 5,
    "resnet34": 5,
    "resnet50": 5,
    "vgg11_bn": 5,
    "vgg16_bn": 5,
    "mobilenet_v3_small": 13,
    "mobilenet_v3_large": 17,
    "efficientnet_b0": 9,
}
RENAMED = {
    "freeze_backbone": "freeze_backbone: renamed; use freeze: backbone (was true) or freeze: none (was false)",
    "maxpool": "maxpool: renamed; use stem_downsample (same values: true, false or null)",
}


class TransferParams(ArchParams):
    backbone: Backbone = Field("resnet18", description="torchvision model the features come from")
    pretrained: bool = Field(False, description="start from ImageNet weights (download, or weights_path)")
    weights_path: str | None = Field(None, description="local state_dict (.pth) of the torchvision backbone")
    freeze: Literal["none", "backbone", "all_but_last_k"] = Field(
        "none", description="none: train all; backbone: train only the head; all_but_last_k: also the last blocks"
    )
    unfreeze_last: int = Field(1, ge=1, description="backbone blocks trained with freeze: all_but_last_k")
    backbone_lr_factor: float | None = Field(
        None, gt=0.0, le=1.0, description="backbone LR = head LR x this; null = 0.1 with pretrained weights, else 1"
    )
    dropout: float = Field(0.0, ge=0.0, lt=1.0, description="dropout before the classification head")
    stem_downsample: bool | None = Field(
        True, description="images under 64 px: keep the stem's 2x downsampling; null = only for images of 64 px or more"
    )

    @model_validator(mode="before")
    @classmethod
    def _renamed_keys(cls, data: Any) -> Any:
        if isinstance(data, dict):
            for old, message in RENAMED.items():
                if old in data:
                    raise ValueError(message)
        return data

    @model_validator(mode="after")
    def _unfreeze_fits(self) -> TransferParams:
        blocks = BLOCKS[self.backbone]
        if self.freeze == "all_but_last_k" and self.unfreeze_last > blocks:
            raise ValueError(
                f"unfreeze_last: {self.backbone} has {blocks} blocks; allowed: 1 to {blocks} (or freeze: none)"
            )
        return self

    @property
    def lr_factor(self) -> float:
        if self.backbone_lr_factor is not None:
            return self.backbone_lr_factor
        return 0.1 if self.pretrained else 1.0


class ResNetParams(TransferParams):
    backbone: ResNetBackbone = Field("resnet18", description="torchvision ResNet the features come from")


class TransferNet(nn.Module):
    """`head(backbone(x))`. `blocks`: the backbone's parameter groups in forward order (each a list of submodule
    names), the unit of `all_but_last_k`; `frozen` of them (from the first) are frozen and kept in eval mode."""

    def __init__(self, backbone: nn.Module, head: nn.Module, blocks: list[list[str]], frozen: int, lr_factor: float):
        super().__init__()
        self.backbone = backbone
        self.head = head
        self.blocks = blocks
        # all frozen: the whole backbone (also its pooling and activations) runs as at inference
        self.frozen_modules = [""] if frozen >= len(blocks) else [name for block in blocks[:frozen] for name in block]
        self.lr_factor = lr_factor
        for name in self.frozen_modules:
            self.backbone.get_submodule(name).requires_grad_(False)
        self.train()

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.head(self.backbone(x))

    def train(self, mode: bool = True) -> TransferNet:
        """Training mode everywhere but in the frozen blocks: their BatchNorm statistics (and dropout) stay as
        loaded, also through Lightning's train() calls after each validation."""
        super().train(mode)
        for name in self.frozen_modules:
            self.backbone.get_submodule(name).eval()
        return self

    def lr_groups(self) -> list[tuple[list[nn.Parameter], float]]:
        """(trainable parameters, learning-rate factor): the backbone's at `lr_factor`, the head's at 1."""
        backbone = [p for p in self.backbone.parameters() if p.requires_grad]
        head = [p for p in self.head.parameters() if p.requires_grad]
        return [(backbone, self.lr_factor), (head, 1.0)]


@dataclass(frozen=True)
class Family:
    """How one kind of torchvision backbone is built, adapted and cut into blocks."""

    make: Callable[[str], nn.Module]  # name -> backbone with a `classifier_key` attribute, random weights
    classifier_key: str  # the ImageNet classifier's attribute (replaced by the head; its weights are not loaded)
    adapt: Callable[[nn.Module, int, int, bool, bool], None]  # (model, channels, side, small, downsample)
    blocks: Callable[[nn.Module], list[list[str]]]
    width: Callable[[nn.Module], int]  # the features' width (the head's input)


def _adapt_conv(conv: nn.Conv2d, in_channels: int, kernel: int | None = None, stride: int | None = None) -> nn.Conv2d:
    """`conv` for `in_channels` inputs, optionally with a smaller kernel (its centre) or another stride; the weights
    carry over (over input channels: their mean, scaled to keep the response to a grey image)."""
    k = kernel or conv.kernel_size[0]
    s = stride or conv.stride[0]
    new = nn.Conv2d(in_channels, conv.out_channels, k, s, k // 2, bias=conv.bias is not None)
    with torch.no_grad():
        w = conv.weight
        cut = (w.shape[-1] - k) // 2
        if cut:
            w = w[:, :, cut : cut + k, cut : cut + k]
        if in_channels != w.shape[1]:
            w = w.mean(dim=1, keepdim=True).repeat(1, in_channels, 1, 1) * (w.shape[1] / in_channels)
        new.weight.copy_(w)
        if conv.bias is not None:
            new.bias.copy_(conv.bias)
    return new


# --- ResNet: stem conv1/bn1 (7x7/2 conv, then a 3x3/2 max-pool), layer1..layer4, fc ---


def _torchvision(name: str) -> nn.Module:
    from torchvision.models import get_model

    return get_model(name, weights=None)


def _adapt_resnet(model: nn.Module, channels: int, side: int, small: bool, downsample: bool) -> None:
    if small or channels != 3:
        model.conv1 = _adapt_conv(model.conv1, channels, *((3, 1) if small else (None, None)))
    if not downsample:
        model.maxpool = nn.Identity()


# --- VGG: `features` (3x3/1 convs, a max-pool ending each stage); the 7x7 average pool and classifier are dropped ---


class VGGFeatures(nn.Module):
    """torchvision's VGG without its 120M-parameter classifier: features, global average pooling, flatten."""

    def __init__(self, features: nn.Sequential):
        super().__init__()
        self.features = features
        self.avgpool = nn.AdaptiveAvgPool2d(1)
        self.classifier = nn.Identity()

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.classifier(self.avgpool(self.features(x)).flatten(1))


def _vgg(name: str) -> nn.Module:
    from torchvision.models.vgg import cfgs, make_layers

    config = {"vgg11_bn": "A", "vgg16_bn": "D"}[name]
    model = VGGFeatures(make_layers(cfgs[config], batch_norm=True))
    for m in model.modules():  # torchvision's VGG initialisation
        if isinstance(m, nn.Conv2d):
            nn.init.kaiming_normal_(m.weight, mode="fan_out", nonlinearity="relu")
            nn.init.zeros_(m.bias)
        elif isinstance(m, nn.BatchNorm2d):
            nn.init.ones_(m.weight)
            nn.init.zeros_(m.bias)
    return model


def _adapt_vgg(model: nn.Module, channels: int, side: int, small: bool, downsample: bool) -> None:
    if channels != 3:
        model.features[0] = _adapt_conv(model.features[0], channels)
    for i, layer in enumerate(model.features):
        if isinstance(layer, nn.MaxPool2d):
            if side < 2:  # the map is already 1 px: pooling it again would leave nothing
                model.features[i] = nn.Identity()
            else:
                side //= 2


def _vgg_blocks(model: nn.Module) -> list[list[str]]:
    blocks, current = [], []
    for i, layer in enumerate(model.features):
        if any(True for _ in layer.parameters()):
            current.append(f"features.{i}")
        if isinstance(layer, (nn.MaxPool2d, nn.Identity)) and current:
            blocks.append(current)
            current = []
    return blocks + ([current] if current else [])


# --- MobileNetV3 and EfficientNet: `features` (features.0 = a 3x3/2 conv stem), `classifier` ---


def _adapt_strided_stem(model: nn.Module, channels: int, side: int, small: bool, downsample: bool) -> None:
    conv = model.features[0][0]
    stride = conv.stride[0] if downsample else 1
    if channels != 3 or stride != conv.stride[0]:
        model.features[0][0] = _adapt_conv(conv, channels, stride=stride)


def _features_blocks(model: nn.Module) -> list[list[str]]:
    return [[f"features.{i}"] for i in range(len(model.features))]


def _last_channels(model: nn.Module) -> int:
    return [m for m in model.features.modules() if isinstance(m, nn.Conv2d)][-1].out_channels


FAMILIES: dict[str, Family] = {
    "resnet": Family(
        _torchvision,
        "fc",
        _adapt_resnet,
        lambda m: [["conv1", "bn1"], ["layer1"], ["layer2"], ["layer3"], ["layer4"]],
        lambda m: m.fc.in_features,
    ),
    "vgg": Family(_vgg, "classifier", _adapt_vgg, _vgg_blocks, _last_channels),
    "mobilenet": Family(_torchvision, "classifier", _adapt_strided_stem, _features_blocks, _last_channels),
    "efficientnet": Family(_torchvision, "classifier", _adapt_strided_stem, _features_blocks, _last_channels),
}


def family_of(backbone: str) -> Family:
    return FAMILIES[next(name for name in FAMILIES if backbone.startswith(name))]


def _state_dict(p: TransferParams, key: str) -> dict[str, torch.Tensor]:
    """The ImageNet weights of `p.backbone`: from `weights_path`, or torchvision's download."""
    if p.weights_path:
        path = Path(p.weights_path)
        if not path.is_file():
            raise ModelError(f"{key}.weights_path: no such file {str(path)!r}")
        try:
            state = torch.load(path, map_location="cpu", weights_only=True)
        except Exception as exc:  # pickle errors, zip errors, objects that are not tensors
            raise ModelError(f"{key}.weights_path: {path} is not a saved state_dict ({type(exc).__name__})") from None
        if not isinstance(state, dict):
            raise ModelError(f"{key}.weights_path: {path} holds a {type(state).__name__}, not a state_dict")
        return state
    from torchvision.models import get_model_weights

    weights = get_model_weights(p.backbone).DEFAULT
    try:
        return weights.get_state_dict(progress=False)
    except Exception as exc:  # URLError, socket errors, SSL errors ...
        raise ModelError(
            f"{key}.pretrained: could not download ImageNet weights for {p.backbone} from {weights.url} "
            f"({' '.join(str(exc).split())}); set {key}.weights_path to a local copy or pretrained: false"
        ) from None


def _load(model: nn.Module, state: dict[str, torch.Tensor], classifier: str, p: TransferParams, key: str) -> None:
    """Load every backbone weight of `state` (the classifier's are dropped: a new head replaces it)."""
    state = {k: v for k, v in state.items() if not k.startswith(f"{classifier}.")}
    wanted = {k for k in model.state_dict() if not k.startswith(f"{classifier}.")}
    missing, unexpected = sorted(wanted - set(state)), sorted(set(state) - wanted)
    source = p.weights_path or "the downloaded weights"
    if missing or unexpected:
        detail = "; ".join(
            f"{what} keys {', '.join(keys[:3])}{' ...' if len(keys) > 3 else ''}"
            for what, keys in (("missing", missing), ("unexpected", unexpected))
            if keys
        )
        raise ModelError(f"{key}.weights_path: {source} is not a {p.backbone} state_dict ({detail})")
    try:
        model.load_state_dict(state, strict=False)
    except RuntimeError as exc:  # shapes that do not match
        first = str(exc).strip().splitlines()[-1].strip()
        raise ModelError(f"{key}.weights_path: {source} does not fit {p.backbone} ({first})") from None


def build_transfer(p: TransferParams, input_shape: tuple[int, ...], num_classes: int, key: str) -> TransferNet:
    """`p.backbone` for `input_shape` (C, H, W) images and a new `num_classes` head; errors name `key`."""
    channels, h, w = input_shape
    family = family_of(p.backbone)
    model = family.make(p.backbone)
    if p.pretrained:
        _load(model, _state_dict(p, key), family.classifier_key, p, key)
    small = min(h, w) < SMALL_IMAGE
    downsample = p.stem_downsample if p.stem_downsample is not None else not small
    family.adapt(model, channels, min(h, w), small, downsample)
    width = family.width(model)
    setattr(model, family.classifier_key, nn.Identity())
    blocks = family.blocks(model)
    frozen = {"none": 0, "backbone": len(blocks), "all_but_last_k": len(blocks) - p.unfreeze_last}[p.freeze]
    head = nn.Linear(width, num_classes)
    head = nn.Sequential(nn.Dropout(p.dropout), head) if p.dropout > 0 else head
    net = TransferNet(model, head, blocks, frozen, p.lr_factor)
    apply_init(net.head if p.pretrained else net, p.init)
    return net


TRANSFER_SPACE = {  # the costliest models on a CPU: few epochs, tuned
    "model.dropout": {"type": "float", "low": 0.0, "high": 0.5},
    "train.max_epochs": {"type": "int", "low": 2, "high": 3},
}


@register(
    "resnet",
    params=ResNetParams,
    kinds={"image"},
    description="torchvision ResNet (18 by default): transfer with a ResNet backbone",
    space=TRANSFER_SPACE,
)
def build_resnet(p: ResNetParams, input_shape: tuple[int, ...], num_classes: int) -> nn.Module:
    return build_transfer(p, input_shape, num_classes, "models.resnet")


@register(
    "transfer",
    params=TransferParams,
    kinds={"image"},
    description="torchvision ResNet/VGG/MobileNetV3/EfficientNet, transfer learning",
    space=TRANSFER_SPACE,
)
def build_transfer_arch(p: TransferParams, input_shape: tuple[int, ...], num_classes: int) -> nn.Module:
    return build_transfer(p, input_shape, num_classes, "models.transfer")
