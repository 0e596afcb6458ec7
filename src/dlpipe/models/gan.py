"""Semi-supervised GAN (Salimans et al. 2016, "Improved techniques for training GANs"), images.

The registered network is the discriminator: K class logits, which are also its real-vs-fake judgement
(D(x) = Z / (Z + 1), Z = sum_k exp(logit_k)). It is what is evaluated, exported and served. The generator is built
apart (`build_generator`) by the LightningModule that trains both (`dlpipe.training.gan`): it maps noise to raw
images in [0, 1] (a sigmoid), which the module normalises like the real inputs before the discriminator sees them.
"""

from __future__ import annotations

import torch
from pydantic import Field, field_validator
from torch import nn

from dlpipe.models.autoencoder import conv_sizes
from dlpipe.models.common import ArchParams, apply_init
from dlpipe.models.registry import register

LEAK = 0.2  # LeakyReLU slope in the discriminator (the usual GAN choice)


class GanParams(ArchParams):
    latent: int = Field(64, ge=1, description="size of the generator's noise input")
    width: int = Field(
        32,
        ge=1,
        description="channels of the discriminator's first conv block, doubling per block (the generator mirrors them)",
    )
    depth: int = Field(2, ge=1, le=5, description="stride-2 conv blocks of each network")
    dropout: float = Field(0.2, ge=0.0, lt=1.0, description="dropout after each discriminator block")
    hidden: int = Field(
        128,
        ge=0,
        description="width of the discriminator's dense layer after the conv blocks, "
        "whose output is the matched features (0 = none: the flattened conv output)",
    )
    lr_discriminator: float | None = Field(
        None, gt=0.0, le=1.0, description="Adam learning rate of the discriminator; null = train.lr"
    )
    lr_generator: float | None = Field(
        None, gt=0.0, le=1.0, description="Adam learning rate of the generator; null = the discriminator's"
    )
    betas_discriminator: tuple[float, float] = Field((0.5, 0.999), description="Adam betas of the discriminator")
    betas_generator: tuple[float, float] = Field((0.5, 0.999), description="Adam betas of the generator")
    unsupervised_weight: float = Field(
        1.0, ge=0.0, description="weight of the real-vs-fake loss beside the supervised one"
    )

    @field_validator("betas_discriminator", "betas_generator")
    @classmethod
    def _betas_in_range(cls, betas: tuple[float, float]) -> tuple[float, float]:
        if not all(0.0 <= b < 1.0 for b in betas):
            raise ValueError(f"Adam betas must lie in [0, 1), got {list(betas)}")
        return betas


def channels(p: GanParams) -> list[int]:
    return [p.width * 2**i for i in range(p.depth)]


class Discriminator(nn.Module):
    """Conv blocks (stride 2, LeakyReLU, dropout) -> features -> K logits. `features` is what feature matching
    compares between real and generated batches."""

    def __init__(self, p: GanParams, input_shape: tuple[int, ...], num_classes: int):
        super().__init__()
        layers: list[nn.Module] = []
        in_ch = input_shape[0]
        for out_ch in channels(p):
            layers += [nn.Conv2d(in_ch, out_ch, 3, 2, 1), nn.LeakyReLU(LEAK)]
            if p.dropout > 0:
                layers.append(nn.Dropout(p.dropout))
            in_ch = out_ch
        h, w = conv_sizes(input_shape, p.depth)[-1]
        width = in_ch * h * w
        layers.append(nn.Flatten())
        if p.hidden:
            layers += [nn.Linear(width, p.hidden), nn.LeakyReLU(LEAK)]
            if p.dropout > 0:
                layers.append(nn.Dropout(p.dropout))
            width = p.hidden
        self.body = nn.Sequential(*layers)
        self.head = nn.Linear(width, num_classes)
        self.params = p  # what `build_generator` needs (a plain attribute: not in the state dict or the export)
        self.input_shape = tuple(input_shape)

    def features(self, x: torch.Tensor) -> torch.Tensor:
        return self.body(x)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.head(self.body(x))


def build_generator(disc: Discriminator) -> nn.Module:
    """Noise (N x latent) -> raw images in [0, 1] of the discriminator's input shape: a dense layer to the smallest
    map, then transposed convs (batch norm, ReLU) mirroring the discriminator, and a sigmoid."""
    p, shape = disc.params, disc.input_shape
    sizes = conv_sizes(shape, p.depth)
    chans = channels(p)
    h, w = sizes[-1]
    layers: list[nn.Module] = [
        nn.Linear(p.latent, chans[-1] * h * w, bias=False),
        nn.BatchNorm1d(chans[-1] * h * w),
        nn.ReLU(),
        nn.Unflatten(1, (chans[-1], h, w)),
    ]
    outs = [*chans[-2::-1], shape[0]]
    in_ch = chans[-1]
    for i, out_ch in enumerate(outs):
        th, tw = sizes[-2 - i]
        last = i == len(outs) - 1
        layers.append(nn.ConvTranspose2d(in_ch, out_ch, 3, 2, 1, output_padding=(1 - th % 2, 1 - tw % 2), bias=last))
        layers += [nn.Sigmoid()] if last else [nn.BatchNorm2d(out_ch), nn.ReLU()]
        in_ch = out_ch
    return apply_init(nn.Sequential(*layers), p.init)


@register(
    "gan",
    params=GanParams,
    kinds={"image"},
    description="semi-supervised GAN: K-class discriminator, feature-matching generator",
    space={
        "model.latent": {"type": "categorical", "choices": [32, 64, 100]},
        "model.lr_generator": {"type": "float", "low": 0.0001, "high": 0.003, "log": True},
        "model.betas_generator": {"type": "categorical", "choices": [[0.5, 0.999], [0.9, 0.999]]},
        "model.dropout": {"type": "float", "low": 0.0, "high": 0.5},
    },
    module="dlpipe.training.gan:SemiSupervisedGan",
)
def build_gan(p: GanParams, input_shape: tuple[int, ...], num_classes: int) -> nn.Module:
    return apply_init(Discriminator(p, input_shape, num_classes), p.init, "leaky_relu")
