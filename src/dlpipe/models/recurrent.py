"""Recurrent families (rnn, lstm, gru): an image is read row by row, one row per time step; a sequence step by
step, the channels of a step as its features."""

from __future__ import annotations

import torch
from pydantic import Field
from torch import nn

from dlpipe.models.common import TextInputParams, apply_init, padded_steps
from dlpipe.models.registry import register


class RecurrentParams(TextInputParams):
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


class SequenceRecurrent(nn.Module):
    """Reads `channels x length` series one step at a time, each series to its own last step: padding is never
    read, as with packed sequences. The forward direction's state after a series' last step and the backward
    direction's after its first step (having read the series backwards from its last) feed the head.

    Packed sequences cannot be exported for serving (`torch.export`), so each layer runs its two directions as two
    one-way cells: the backward one on every series reversed within its own length, its outputs reversed back.
    That computes what a packed, stacked, bidirectional `nn.LSTM` computes (tests/unit/test_sequence_models.py).
    """

    def __init__(self, cell: type[nn.RNNBase], input_shape: tuple[int, ...], num_classes: int, p: RecurrentParams):
        super().__init__()
        channels, _ = input_shape
        directions = 2 if p.bidirectional else 1
        self.layers = nn.ModuleList(
            nn.ModuleList(
                cell(channels if i == 0 else directions * p.hidden_size, p.hidden_size, batch_first=True)
                for _ in range(directions)
            )
            for i in range(p.num_layers)
        )
        self.between = nn.Dropout(p.dropout)  # on every layer's outputs but the last, as nn.LSTM's dropout
        self.dropout = nn.Dropout(p.dropout)
        self.head = nn.Linear(directions * p.hidden_size, num_classes)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        values, valid = padded_steps(x)
        lengths = valid.sum(dim=1)
        steps = torch.arange(values.shape[-1], device=x.device)
        # step t of a series' reversal: its step length-1-t within its length, padding left where it is
        reverse = torch.where(valid, lengths[:, None] - 1 - steps, steps)
        seq = values.transpose(1, 2)  # N x length x channels
        outputs: list[torch.Tensor] = []
        for i, cells in enumerate(self.layers):
            if i:
                seq = self.between(seq)
            outputs = [cells[0](seq)[0]]
            if len(cells) == 2:
                outputs.append(_gather_steps(cells[1](_gather_steps(seq, reverse))[0], reverse))
            seq = torch.cat(outputs, dim=2)
        forward_last = _gather_steps(outputs[0], (lengths - 1)[:, None]).squeeze(1)
        final = [forward_last] + [out[:, 0] for out in outputs[1:]]  # the backward direction ends at step 0
        return self.head(self.dropout(torch.cat(final, dim=1)))


def _gather_steps(seq: torch.Tensor, index: torch.Tensor) -> torch.Tensor:
    """`seq[n, index[n, t]]` for every n, t (seq: N x length x features, index: N x steps)."""
    return seq.gather(1, index[:, :, None].expand(-1, -1, seq.shape[2]))


def _register(name: str, cell: type[nn.RNNBase], label: str) -> None:
    @register(
        name,
        params=RecurrentParams,
        kinds={"image", "sequence", "text"},
        description=f"{label} over image rows or series steps (bidirectional, stacked)",
        space={"model.hidden_size": {"type": "int", "low": 32, "high": 128, "log": True}},
    )
    def build(p: RecurrentParams, input_shape: tuple[int, ...], num_classes: int) -> nn.Module:
        network = SequenceRecurrent if len(input_shape) == 2 else RowRecurrent
        return apply_init(network(cell, input_shape, num_classes, p), p.init, "tanh")


_register("rnn", nn.RNN, "Elman RNN")
_register("lstm", nn.LSTM, "LSTM")
_register("gru", nn.GRU, "GRU")
