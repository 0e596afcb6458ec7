"""Fully connected families: perceptron, MLP, wide & deep."""

from __future__ import annotations

import torch
from pydantic import Field
from torch import nn

from dlpipe.models.common import ArchParams, DropoutParams, apply_init, flat_size, mlp_layers
from dlpipe.models.registry import register

ANY_INPUT = {"image", "tabular"}


class PerceptronParams(ArchParams):
    pass


class MLPParams(DropoutParams):
    hidden: list[int] = Field([128, 64], min_length=1, description="width of each hidden layer")
    dropout: float = Field(0.2, ge=0.0, lt=1.0, description="dropout probability after each hidden layer")


class WideDeepParams(DropoutParams):
    hidden: list[int] = Field([128, 64], min_length=1, description="widths of the deep path's hidden layers")
    dropout: float = Field(0.2, ge=0.0, lt=1.0, description="dropout probability after each hidden layer")


DROPOUT_SPACE = {"type": "float", "low": 0.0, "high": 0.5}


@register(
    "perceptron",
    params=PerceptronParams,
    kinds=ANY_INPUT,
    description="one linear layer (multiclass)",
    space={"train.l2": {"type": "float", "low": 0.000001, "high": 0.001, "log": True}},
)
def build_perceptron(p: PerceptronParams, input_shape: tuple[int, ...], num_classes: int) -> nn.Module:
    model = nn.Sequential(nn.Flatten(), nn.Linear(flat_size(input_shape), num_classes))
    return apply_init(model, p.init)


@register(
    "mlp",
    params=MLPParams,
    kinds=ANY_INPUT,
    description="multi-layer perceptron",
    space={
        "model.hidden": {"type": "categorical", "choices": [[128], [256, 128]]},
        "model.dropout": DROPOUT_SPACE,
        "model.activation": {"type": "categorical", "choices": ["relu", "gelu"]},
    },
)
def build_mlp(p: MLPParams, input_shape: tuple[int, ...], num_classes: int) -> nn.Module:
    layers, width = mlp_layers(flat_size(input_shape), p.hidden, p.dropout, p.activation)
    model = nn.Sequential(nn.Flatten(), *layers, nn.Linear(width, num_classes))
    return apply_init(model, p.init, p.activation)


class WideDeep(nn.Module):
    """A wide linear path beside a deep MLP; their logits are summed."""

    def __init__(self, in_features: int, hidden: list[int], dropout: float, activation: str, num_classes: int):
        super().__init__()
        self.wide = nn.Linear(in_features, num_classes)
        layers, width = mlp_layers(in_features, hidden, dropout, activation)
        self.deep = nn.Sequential(*layers, nn.Linear(width, num_classes))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = x.flatten(1)
        return self.wide(x) + self.deep(x)


@register(
    "wide_deep",
    params=WideDeepParams,
    kinds=ANY_INPUT,
    description="wide linear path + deep MLP, summed",
    space={
        "model.dropout": DROPOUT_SPACE,
        "train.l1": {"type": "float", "low": 0.0000001, "high": 0.0001, "log": True},
    },
)
def build_wide_deep(p: WideDeepParams, input_shape: tuple[int, ...], num_classes: int) -> nn.Module:
    model = WideDeep(flat_size(input_shape), p.hidden, p.dropout, p.activation, num_classes)
    return apply_init(model, p.init, p.activation)
