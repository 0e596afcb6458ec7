"""Recurrent families (rnn, lstm, gru): an image is read row by row, one row per time step."""

from __future__ import annotations

import torch
from pydantic import Field
from torch import nn

from dlpipe.models.common import ArchParams, apply_init
from dlpipe.models.registry import register


class RecurrentParams(ArchParams):
    hidden_size: int = Field(64, ge=1)
    num_layers: int = Field(1, ge=1)
    bidirectional: bool = True
    dropout: float = Field(0.0, ge=0.0, lt=1.0, description="between stacked layers and before the output layer")


class RowRecurrent(nn.Module):
    """Reads `C x H x W` as H steps of `C*W` features; classifies from the final hidden state(s)."""

    def __init__(self, cell: type[nn.RNNBase], input_shape: tuple[int, ...], num_classes: int, p: RecurrentParams):
        super().__init__()
        c, _, w = input_shape
        self.rnn = cell(
            input_size=c * w,
            hidden_size=p.hidden_size,
            num_layers=p.num_layers,
            batch_first=True,
            bidirectional=p.bidirectional,
            dropout=p.dropout if p.num_layers > 1 else 0.0,
        )
        directions = 2 if p.bidirectional else 1
        self.dropout = nn.Dropout(p.dropout)
        self.head = nn.Linear(directions * p.hidden_size, num_classes)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        seq = x.permute(0, 2, 1, 3).flatten(2)  # (N, H, C*W)
        _, state = self.rnn(seq)
        h = state[0] if isinstance(state, tuple) else state  # LSTM returns (h, c)
        directions = 2 if self.rnn.bidirectional else 1
        last = h[-directions:].transpose(0, 1).flatten(1)  # last layer, every direction
        return self.head(self.dropout(last))


def _register(name: str, cell: type[nn.RNNBase], label: str) -> None:
    @register(
        name,
        params=RecurrentParams,
        kinds={"image"},
        description=f"{label} over image rows (bidirectional option)",
        space={"model.hidden_size": {"type": "int", "low": 32, "high": 128, "log": True}},
    )
    def build(p: RecurrentParams, input_shape: tuple[int, ...], num_classes: int) -> nn.Module:
        return apply_init(RowRecurrent(cell, input_shape, num_classes, p), p.init, "tanh")


_register("rnn", nn.RNN, "Elman RNN")
_register("lstm", nn.LSTM, "LSTM")
_register("gru", nn.GRU, "GRU")
