"""Pieces shared by the architecture families: param fields, activations, weight init, tabular inputs with
categorical columns, padded sequences."""

from __future__ import annotations

from typing import Literal

import torch
from pydantic import BaseModel, ConfigDict, Field
from torch import nn

from dlpipe.data.base import UNKNOWN, Features, series_lengths

Activation = Literal["relu", "leaky_relu", "tanh", "sigmoid", "gelu"]
Init = Literal["default", "xavier", "kaiming"]

_ACTIVATIONS: dict[str, type[nn.Module]] = {
    "relu": nn.ReLU,
    "leaky_relu": nn.LeakyReLU,
    "tanh": nn.Tanh,
    "sigmoid": nn.Sigmoid,
    "gelu": nn.GELU,
}


class ArchParams(BaseModel):
    """Base of every architecture's params: unknown keys are errors."""

    model_config = ConfigDict(extra="forbid")

    init: Init = Field("default", description="weight init: default (PyTorch's), xavier or kaiming")


class TextInputParams(ArchParams):
    """Params of a family that also reads text (token ids): the width of its token embedding."""

    embedding_dim: int = Field(32, ge=1, description="text data: width of each token's learned embedding")


class DropoutParams(ArchParams):
    dropout: float = Field(0.0, ge=0.0, lt=1.0, description="dropout probability before each hidden/output layer")
    activation: Activation = "relu"


def make_activation(name: str) -> nn.Module:
    return _ACTIVATIONS[name]()


def apply_init(module: nn.Module, scheme: str, activation: str = "relu") -> nn.Module:
    """Re-initialise the weights of linear, conv and recurrent layers; biases start at zero."""
    if scheme == "default":
        return module
    nonlinearity = "leaky_relu" if activation == "leaky_relu" else "relu"
    for layer in module.modules():
        if isinstance(layer, (nn.Linear, nn.Conv1d, nn.Conv2d)):
            _init_weight(layer.weight, scheme, nonlinearity)
            if layer.bias is not None:
                nn.init.zeros_(layer.bias)
        elif isinstance(layer, (nn.RNN, nn.LSTM, nn.GRU)):
            for pname, p in layer.named_parameters():
                if pname.startswith("weight"):
                    _init_weight(p, scheme, nonlinearity)
                else:
                    nn.init.zeros_(p)
    return module


def _init_weight(weight: nn.Parameter, scheme: str, nonlinearity: str) -> None:
    if scheme == "xavier":
        nn.init.xavier_uniform_(weight)
    else:
        nn.init.kaiming_uniform_(weight, nonlinearity=nonlinearity)


def mlp_layers(in_features: int, hidden: list[int], dropout: float, activation: str) -> tuple[list[nn.Module], int]:
    """Linear -> activation -> dropout blocks; returns the layers and the last width."""
    layers: list[nn.Module] = []
    width = in_features
    for h in hidden:
        layers += [nn.Linear(width, h), make_activation(activation)]
        if dropout > 0:
            layers.append(nn.Dropout(dropout))
        width = h
    return layers, width


def flat_size(input_shape: tuple[int, ...]) -> int:
    size = 1
    for d in input_shape:
        size *= d
    return size


def has_categories(features: Features | None) -> bool:
    return features is not None and bool(features.categorical)


def category_codes(x: torch.Tensor, column: int, size: int) -> torch.Tensor:
    """Column `column` of `x` as integer codes; anything outside 0..size-1 is the unknown code 0."""
    codes = x[:, column].long()
    return torch.where((codes >= 0) & (codes < size), codes, 0)


class OneHotInput(nn.Module):
    """Tabular rows as numbers: the numeric columns as they are, then each categorical column one-hot over its
    vocabulary (the unknown code 0 is all zeros)."""

    def __init__(self, features: Features):
        super().__init__()
        self.register_buffer("numeric", torch.tensor(features.numeric, dtype=torch.long), persistent=False)
        self.columns = features.categorical
        self.sizes = [features.cardinality(i) for i in self.columns]
        for i, size in enumerate(self.sizes):
            self.register_buffer(f"categories_{i}", torch.arange(1, size), persistent=False)
        self.width = len(features.numeric) + sum(size - 1 for size in self.sizes)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        parts = [x.index_select(1, self.numeric)]
        for i, (column, size) in enumerate(zip(self.columns, self.sizes, strict=True)):
            codes = category_codes(x, column, size)
            parts.append((codes.unsqueeze(1) == getattr(self, f"categories_{i}")).to(x.dtype))
        return torch.cat(parts, dim=1)


class EmbeddedInput(nn.Module):
    """Tabular rows as numbers: the numeric columns as they are, then a learned `dim`-vector per categorical column
    (the unknown code's vector is zero and stays zero)."""

    def __init__(self, features: Features, dim: int):
        super().__init__()
        self.register_buffer("numeric", torch.tensor(features.numeric, dtype=torch.long), persistent=False)
        self.columns = features.categorical
        self.sizes = [features.cardinality(i) for i in self.columns]
        self.embeddings = nn.ModuleList(nn.Embedding(size, dim, padding_idx=UNKNOWN) for size in self.sizes)
        self.width = len(features.numeric) + dim * len(self.columns)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        parts = [x.index_select(1, self.numeric)]
        for column, size, embedding in zip(self.columns, self.sizes, self.embeddings, strict=True):
            parts.append(embedding(category_codes(x, column, size)))
        return torch.cat(parts, dim=1)


def padded_steps(x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """A sequence batch (N x channels x length, shorter series padded with NaN steps) as (the values with NaN as 0,
    an N x length mask of the steps within each series' length; at least its first step)."""
    lengths = series_lengths(x).clamp(min=1)
    valid = torch.arange(x.shape[-1], device=x.device) < lengths[:, None]
    return torch.nan_to_num(x, nan=0.0), valid


class TokenEmbedding(nn.Module):
    """Token ids (N x 1 x length, NaN after each text's last token, see `data.text`) as a series of `dim` channels
    (N x dim x length) with the same NaN padding: the sequence network behind it masks text padding as it masks
    series padding. The padding id 0 (`[PAD]`) embeds to zero; an id outside the vocabulary is `[UNK]` (1)."""

    def __init__(self, vocabulary: int, dim: int):
        super().__init__()
        self.vocabulary = vocabulary
        self.embedding = nn.Embedding(vocabulary, dim, padding_idx=0)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        values, valid = padded_steps(x)
        ids = values[:, 0].long()
        ids = torch.where((ids >= 0) & (ids < self.vocabulary), ids, 1)
        z = self.embedding(ids).transpose(1, 2)  # N x dim x length
        return torch.where(valid[:, None, :], z, torch.full_like(z, float("nan")))


class TextNetwork(nn.Module):
    """A sequence family's network reading text: token embedding, then the network over `dim` channels per step."""

    def __init__(self, embedding: TokenEmbedding, net: nn.Module):
        super().__init__()
        self.embed = embedding
        self.net = net

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.net(self.embed(x))
