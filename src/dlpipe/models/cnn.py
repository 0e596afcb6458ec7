"""Convolutional network: conv blocks (conv, optional batch norm, activation, pooling), then a dense head."""

from __future__ import annotations

from pydantic import Field
from torch import nn

from dlpipe.errors import ConfigError
from dlpipe.models.common import DropoutParams, apply_init, make_activation, mlp_layers
from dlpipe.models.registry import register


class CNNParams(DropoutParams):
    channels: list[int] = Field([32, 64], min_length=1, description="output channels of each conv block")
    kernel_size: int = Field(3, ge=1)
    stride: int = Field(1, ge=1)
    padding: int = Field(1, ge=0)
    pool: int = Field(2, ge=1, description="max-pool size after each block (1 = none; skipped once the map is smaller)")
    batch_norm: bool = True
    hidden: list[int] = Field([128], description="widths of the dense head's hidden layers")
    dropout: float = Field(0.3, ge=0.0, lt=1.0, description="dropout probability in the dense head")


def _out(size: int, kernel: int, stride: int, padding: int) -> int:
    return (size + 2 * padding - kernel) // stride + 1


@register(
    "cnn",
    params=CNNParams,
    kinds={"image"},
    description="conv blocks + pooling + dense head",
    space={
        "model.channels": {"type": "categorical", "choices": [[16, 32], [32, 64]]},
        "model.dropout": {"type": "float", "low": 0.0, "high": 0.5},
    },
)
def build_cnn(p: CNNParams, input_shape: tuple[int, ...], num_classes: int) -> nn.Module:
    in_ch, h, w = input_shape
    layers: list[nn.Module] = []
    for out_ch in p.channels:
        layers.append(nn.Conv2d(in_ch, out_ch, p.kernel_size, p.stride, p.padding, bias=not p.batch_norm))
        if p.batch_norm:
            layers.append(nn.BatchNorm2d(out_ch))
        layers.append(make_activation(p.activation))
        h, w = _out(h, p.kernel_size, p.stride, p.padding), _out(w, p.kernel_size, p.stride, p.padding)
        if p.pool > 1 and min(h, w) >= p.pool:
            layers.append(nn.MaxPool2d(p.pool))
            h, w = h // p.pool, w // p.pool
        if h < 1 or w < 1:
            raise ConfigError(
                f"models.cnn: the feature map shrinks to nothing on {tuple(input_shape)} input; "
                "use fewer channels blocks, a smaller kernel_size/stride or more padding"
            )
        in_ch = out_ch
    head, width = mlp_layers(in_ch * h * w, p.hidden, p.dropout, p.activation)
    if p.dropout > 0 and not p.hidden:
        head.append(nn.Dropout(p.dropout))
    model = nn.Sequential(*layers, nn.Flatten(), *head, nn.Linear(width, num_classes))
    return apply_init(model, p.init, p.activation)
