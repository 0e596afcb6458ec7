"""ResNet-18 transfer learning (torchvision), adapted to small and 1-channel images."""

from __future__ import annotations

import logging
from pathlib import Path

import torch
from pydantic import Field
from torch import nn

from dlpipe.errors import ModelError
from dlpipe.models.common import ArchParams, apply_init
from dlpipe.models.registry import register

log = logging.getLogger(__name__)
SMALL_IMAGE = 64  # below this side length the 7x7/2 stem and max-pool would erase the image


class ResNetParams(ArchParams):
    pretrained: bool = Field(False, description="start from ImageNet weights (download, or weights_path)")
    weights_path: str | None = Field(None, description="local ImageNet ResNet-18 state_dict file (.pth)")
    freeze_backbone: bool = Field(False, description="train only the new classification head")
    dropout: float = Field(0.0, ge=0.0, lt=1.0, description="dropout before the classification head")
    maxpool: bool | None = Field(
        True, description="keep the stem's max-pool (halves the cost); null = only for images of 64 px or more"
    )


def _imagenet_state_dict(p: ResNetParams) -> dict[str, torch.Tensor]:
    if p.weights_path:
        path = Path(p.weights_path)
        if not path.is_file():
            raise ModelError(f"models.resnet.weights_path: no such file {str(path)!r}")
        return torch.load(path, map_location="cpu", weights_only=True)
    from torchvision.models import ResNet18_Weights

    weights = ResNet18_Weights.IMAGENET1K_V1
    try:
        return weights.get_state_dict(progress=False)
    except Exception as exc:  # URLError, socket errors, SSL errors ...
        raise ModelError(
            f"models.resnet.pretrained: could not download ImageNet weights from {weights.url} ({exc}); "
            "set models.resnet.weights_path to a local copy or pretrained: false"
        ) from None


def _adapt_stem(conv: nn.Conv2d, in_channels: int, small: bool) -> nn.Conv2d:
    """A stem for `in_channels` inputs; small images get a 3x3/1 conv seeded from the 7x7 kernel's centre."""
    kernel, stride, padding = (3, 1, 1) if small else (7, 2, 3)
    stem = nn.Conv2d(in_channels, conv.out_channels, kernel, stride, padding, bias=False)
    with torch.no_grad():
        w = conv.weight  # (64, 3, 7, 7)
        if small:
            w = w[:, :, 2:5, 2:5]
        if in_channels != w.shape[1]:
            w = w.mean(dim=1, keepdim=True).repeat(1, in_channels, 1, 1) * (3 / in_channels)
        stem.weight.copy_(w)
    return stem


@register(
    "resnet",
    params=ResNetParams,
    kinds={"image"},
    description="torchvision ResNet-18, transfer learning",
    space={  # the costliest model on a CPU: few epochs, tuned
        "model.dropout": {"type": "float", "low": 0.0, "high": 0.5},
        "train.max_epochs": {"type": "int", "low": 2, "high": 3},
    },
)
def build_resnet(p: ResNetParams, input_shape: tuple[int, ...], num_classes: int) -> nn.Module:
    from torchvision.models import resnet18

    in_channels, h, w = input_shape
    model = resnet18(weights=None)
    if p.pretrained:
        model.load_state_dict(_imagenet_state_dict(p))
    small = min(h, w) < SMALL_IMAGE
    if small or in_channels != 3:
        model.conv1 = _adapt_stem(model.conv1, in_channels, small)
    if not (p.maxpool if p.maxpool is not None else not small):
        model.maxpool = nn.Identity()
    if p.freeze_backbone:
        for param in model.parameters():
            param.requires_grad = False
    head = nn.Linear(model.fc.in_features, num_classes)
    model.fc = nn.Sequential(nn.Dropout(p.dropout), head) if p.dropout > 0 else head
    if not p.pretrained:
        apply_init(model, p.init)
    return model
