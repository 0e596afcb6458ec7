"""Autoencoder: an encoder to a small code, a classification head on the code, and a decoder back to the input.

The registered network is what is evaluated, exported and served: encoder -> head, raw logits. The decoder is built
apart (`build_decoder`) by the LightningModule that trains both (`dlpipe.training.autoencoder`), so that a served
model carries no decoder and every parameter of the network gets a gradient from the classification loss.
Images get convolutional blocks (stride 2: each halves the map), tabular data dense layers (narrowing to the code).
"""

from __future__ import annotations

from typing import Literal

import torch
from pydantic import Field
from torch import nn

from dlpipe.models.common import DropoutParams, apply_init, flat_size, make_activation, mlp_layers
from dlpipe.models.registry import register


class AutoencoderParams(DropoutParams):
    latent: int = Field(32, ge=1, description="size of the code the head classifies and the decoder reconstructs from")
    width: int = Field(
        32,
        ge=1,
        description="conv: channels of the first block, doubling per block; dense: width "
        "of the last layer before the code, doubling towards the input",
    )
    depth: int = Field(2, ge=1, le=5, description="encoder blocks (the decoder mirrors them)")
    batch_norm: bool = Field(True, description="batch norm in the conv blocks (images)")
    head: list[int] = Field([], description="hidden widths of the classification head on the code ([] = linear)")
    dropout: float = Field(0.2, ge=0.0, lt=1.0, description="dropout on the code before the classification head")
    noise: float = Field(
        0.1,
        ge=0.0,
        description="denoising: std of the Gaussian noise added to the (normalised) encoder input in "
        "training; the decoder reconstructs the clean input",
    )
    reconstruction: Literal["mse", "bce"] = Field(
        "mse",
        description="mse: reconstruct the normalised input; bce: reconstruct the raw input, which must lie in "
        "[0, 1] (images), from the decoder's logits",
    )
    reconstruction_weight: float = Field(
        1.0, ge=0.0, description="weight of the reconstruction loss beside the classification loss"
    )
    pretrain_epochs: int = Field(
        0,
        ge=0,
        description="first epochs in which the encoder learns from reconstruction alone (the head learns on "
        "the detached code meanwhile)",
    )


def _down(size: int) -> int:
    """A 3x3, stride-2, padding-1 convolution's output side."""
    return (size + 1) // 2


def conv_sizes(input_shape: tuple[int, ...], depth: int) -> list[tuple[int, int]]:
    """(H, W) of the input and after each stride-2 block."""
    _, h, w = input_shape
    sizes = [(h, w)]
    for _ in range(depth):
        h, w = _down(h), _down(w)
        sizes.append((h, w))
    return sizes


def conv_channels(p: AutoencoderParams) -> list[int]:
    return [p.width * 2**i for i in range(p.depth)]


def dense_widths(p: AutoencoderParams) -> list[int]:
    return [p.width * 2 ** (p.depth - 1 - i) for i in range(p.depth)]


class AutoencoderNet(nn.Module):
    """encoder -> code -> head: `forward` gives the class logits; `encode` the code the decoder starts from."""

    def __init__(self, encoder: nn.Module, head: nn.Module, params: AutoencoderParams, input_shape: tuple[int, ...]):
        super().__init__()
        self.encoder = encoder
        self.head = head
        self.params = params  # what `build_decoder` needs (plain attributes: not in the state dict or the export)
        self.input_shape = tuple(input_shape)

    def encode(self, x: torch.Tensor) -> torch.Tensor:
        return self.encoder(x)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.head(self.encoder(x))


def _conv_encoder(p: AutoencoderParams, input_shape: tuple[int, ...]) -> nn.Module:
    layers: list[nn.Module] = []
    in_ch = input_shape[0]
    for out_ch in conv_channels(p):
        layers.append(nn.Conv2d(in_ch, out_ch, 3, 2, 1, bias=not p.batch_norm))
        if p.batch_norm:
            layers.append(nn.BatchNorm2d(out_ch))
        layers.append(make_activation(p.activation))
        in_ch = out_ch
    h, w = conv_sizes(input_shape, p.depth)[-1]
    return nn.Sequential(*layers, nn.Flatten(), nn.Linear(in_ch * h * w, p.latent))


def _dense_encoder(p: AutoencoderParams, input_shape: tuple[int, ...]) -> nn.Module:
    layers, width = mlp_layers(flat_size(input_shape), dense_widths(p), 0.0, p.activation)
    return nn.Sequential(nn.Flatten(), *layers, nn.Linear(width, p.latent))


def build_decoder(net: AutoencoderNet) -> nn.Module:
    """The decoder mirroring `net`'s encoder: code -> an output of the input's shape (no final activation: values
    for mse, logits for bce)."""
    p, shape = net.params, net.input_shape
    if len(shape) != 3:
        widths = dense_widths(p)[::-1]
        layers, width = mlp_layers(p.latent, widths, 0.0, p.activation)
        decoder = nn.Sequential(*layers, nn.Linear(width, flat_size(shape)), nn.Unflatten(1, shape))
        return apply_init(decoder, p.init, p.activation)
    sizes = conv_sizes(shape, p.depth)
    channels = conv_channels(p)
    h, w = sizes[-1]
    layers: list[nn.Module] = [
        nn.Linear(p.latent, channels[-1] * h * w),
        make_activation(p.activation),
        nn.Unflatten(1, (channels[-1], h, w)),
    ]
    outs = [*channels[-2::-1], shape[0]]  # back through the encoder's channels to the input's
    in_ch = channels[-1]
    for i, out_ch in enumerate(outs):
        th, tw = sizes[-2 - i]  # a transposed conv (not interpolation: deterministic on GPUs) back to that size
        last = i == len(outs) - 1
        layers.append(
            nn.ConvTranspose2d(
                in_ch, out_ch, 3, 2, 1, output_padding=(1 - th % 2, 1 - tw % 2), bias=last or not p.batch_norm
            )
        )
        if not last:
            if p.batch_norm:
                layers.append(nn.BatchNorm2d(out_ch))
            layers.append(make_activation(p.activation))
        in_ch = out_ch
    return apply_init(nn.Sequential(*layers), p.init, p.activation)


@register(
    "autoencoder",
    params=AutoencoderParams,
    kinds={"image", "tabular"},
    description="encoder-decoder + classifier on the code; denoising, semi-supervised",
    space={
        "model.latent": {"type": "categorical", "choices": [16, 32, 64]},
        "model.depth": {"type": "int", "low": 1, "high": 3},
        "model.dropout": {"type": "float", "low": 0.0, "high": 0.5},
        "model.noise": {"type": "float", "low": 0.0, "high": 0.3},
        "model.reconstruction_weight": {"type": "float", "low": 0.1, "high": 3.0, "log": True},
    },
    module="dlpipe.training.autoencoder:AutoencoderClassifier",
)
def build_autoencoder(p: AutoencoderParams, input_shape: tuple[int, ...], num_classes: int) -> nn.Module:
    encoder = _conv_encoder(p, input_shape) if len(input_shape) == 3 else _dense_encoder(p, input_shape)
    head_layers, width = mlp_layers(p.latent, p.head, p.dropout, p.activation)
    head = nn.Sequential(
        *([nn.Dropout(p.dropout)] if p.dropout > 0 else []), *head_layers, nn.Linear(width, num_classes)
    )
    return apply_init(AutoencoderNet(encoder, head, p, input_shape), p.init, p.activation)
