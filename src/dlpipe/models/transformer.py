"""Transformer encoder over image rows or square patches, or over the steps of a series (padded steps masked as
keys and left out of mean pooling), with a learned positional embedding."""

from __future__ import annotations

from typing import Literal

import torch
from pydantic import Field, model_validator
from torch import nn

from dlpipe.errors import ConfigError
from dlpipe.models.common import TextInputParams, apply_init, padded_steps
from dlpipe.models.registry import register


class TransformerParams(TextInputParams):
    d_model: int = Field(64, ge=2)
    nhead: int = Field(4, ge=1)
    num_layers: int = Field(2, ge=1)
    dim_feedforward: int = Field(128, ge=1)
    dropout: float = Field(0.1, ge=0.0, lt=1.0)
    activation: Literal["relu", "gelu"] = "gelu"
    patch_size: int = Field(0, ge=0, description="0 = one token per image row (or series step); p = p x p patches")
    pooling: Literal["cls", "mean"] = "cls"

    @model_validator(mode="after")
    def _heads_divide_width(self) -> TransformerParams:
        if self.d_model % self.nhead:
            raise ValueError(f"d_model ({self.d_model}) must be divisible by nhead ({self.nhead})")
        return self


class ImageTransformer(nn.Module):
    def __init__(self, p: TransformerParams, input_shape: tuple[int, ...], num_classes: int):
        super().__init__()
        self.sequence = len(input_shape) == 2  # channels x length: one token per step
        c, h, w = (*input_shape, 1) if self.sequence else input_shape
        self.patch = p.patch_size
        if self.sequence and self.patch:
            raise ConfigError(
                f"models.transformer.patch_size: a series takes one token per step; allowed: 0 (got {self.patch})"
            )
        if self.patch:
            if h % self.patch or w % self.patch:
                raise ConfigError(f"models.transformer.patch_size: {self.patch} must divide the image size {h}x{w}")
            tokens, token_dim = (h // self.patch) * (w // self.patch), c * self.patch * self.patch
        else:
            tokens, token_dim = h, c * w
        self.embed = nn.Linear(token_dim, p.d_model)
        self.use_cls = p.pooling == "cls"
        self.cls = nn.Parameter(torch.zeros(1, 1, p.d_model)) if self.use_cls else None
        self.pos = nn.Parameter(torch.randn(1, tokens + int(self.use_cls), p.d_model) * 0.02)
        layer = nn.TransformerEncoderLayer(
            p.d_model, p.nhead, p.dim_feedforward, p.dropout, p.activation, batch_first=True, norm_first=True
        )
        self.encoder = nn.TransformerEncoder(layer, p.num_layers, enable_nested_tensor=False)
        self.norm = nn.LayerNorm(p.d_model)
        self.head = nn.Linear(p.d_model, num_classes)

    def tokens(self, x: torch.Tensor) -> torch.Tensor:
        if not self.patch:
            return x.permute(0, 2, 1, 3).flatten(2)  # rows: (N, H, C*W)
        n, c, _, _ = x.shape
        p = self.patch
        patches = x.unfold(2, p, p).unfold(3, p, p)  # (N, C, H/p, W/p, p, p)
        return patches.permute(0, 2, 3, 1, 4, 5).reshape(n, -1, c * p * p)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if not self.sequence:
            return self.head(self.pool(self.encode(self.embed(self.tokens(x)))))
        values, valid = padded_steps(x)
        padding = ~valid
        z = self.embed(values.transpose(1, 2))  # steps: (N, length, channels)
        if self.cls is not None:
            padding = torch.cat([torch.zeros_like(padding[:, :1]), padding], dim=1)
        return self.head(self.pool(self.encode(z, padding), padding))

    def encode(self, z: torch.Tensor, padding: torch.Tensor | None = None) -> torch.Tensor:
        if self.cls is not None:
            z = torch.cat([self.cls.expand(z.shape[0], -1, -1), z], dim=1)
        return self.norm(self.encoder(z + self.pos, src_key_padding_mask=padding))

    def pool(self, z: torch.Tensor, padding: torch.Tensor | None = None) -> torch.Tensor:
        if self.use_cls:
            return z[:, 0]
        if padding is None:
            return z.mean(dim=1)
        keep = (~padding).unsqueeze(-1).to(z.dtype)
        return (z * keep).sum(dim=1) / keep.sum(dim=1)


@register(
    "transformer",
    params=TransformerParams,
    kinds={"image", "sequence", "text"},
    description="encoder over image rows or patches, or series steps (padding masked)",
    space={
        "model.d_model": {"type": "categorical", "choices": [32, 64]},
        "model.num_layers": {"type": "int", "low": 1, "high": 3},
    },
)
def build_transformer(p: TransformerParams, input_shape: tuple[int, ...], num_classes: int) -> nn.Module:
    return apply_init(ImageTransformer(p, input_shape, num_classes), p.init)
