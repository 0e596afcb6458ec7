"""1-D convolutional networks over series: the fully convolutional network (FCN) and its residual variant (ResNet),
the standard deep baselines of time-series classification (Wang, Yan and Oates, "Time series classification from
scratch with deep neural networks: a strong baseline", IJCNN 2017).

FCN: convolution blocks (Conv1d with "same" padding, batch norm, ReLU; kernels 8, 5, 3 with 128, 256, 128 filters),
then global average pooling over the steps and a linear head. ResNet (`residual: true`): residual blocks, each the
convolutions of `kernel_sizes` with a shortcut (a 1x1 convolution and batch norm where the width changes); the
paper's widths are 64, 128, 128. Series of unequal length: padded steps are zero before every convolution, left out of
batch norm's statistics in training and out of the average.
"""

from __future__ import annotations

import torch
from pydantic import Field, model_validator
from torch import nn

from dlpipe.models.common import TextInputParams, apply_init, padded_steps
from dlpipe.models.registry import register


class CNN1DParams(TextInputParams):
    channels: list[int] = Field(
        [128, 256, 128], min_length=1, description="filters of each block (FCN: one convolution; ResNet: a block)"
    )
    kernel_sizes: list[int] = Field(
        [8, 5, 3], min_length=1, description="FCN: each block's kernel; ResNet: the kernels of every block's convs"
    )
    residual: bool = Field(False, description="residual blocks with shortcuts (ResNet) instead of FCN blocks")
    dropout: float = Field(0.0, ge=0.0, lt=1.0, description="before the linear head")

    @model_validator(mode="after")
    def _blocks_have_kernels(self) -> CNN1DParams:
        if min(self.channels) < 1 or min(self.kernel_sizes) < 1:
            raise ValueError("channels and kernel_sizes must be positive")
        if not self.residual and len(self.kernel_sizes) != len(self.channels):
            raise ValueError(
                f"kernel_sizes: the FCN takes one kernel per block of channels ({len(self.channels)}), "
                f"got {len(self.kernel_sizes)}"
            )
        return self


class MaskedBatchNorm1d(nn.BatchNorm1d):
    """Batch norm whose batch statistics (training) count only the steps within each series' length: padding, and how
    much of it a batch has, changes neither the normalised steps nor the running statistics kept for evaluation."""

    def forward(self, x: torch.Tensor, keep: torch.Tensor) -> torch.Tensor:  # type: ignore[override]
        if not self.training:
            return super().forward(x)  # running statistics: each step on its own
        n = keep.sum()  # real steps in the batch (keep: N x 1 x length)
        mean = (x * keep).sum(dim=(0, 2)) / n
        var = ((x - mean[:, None]).square() * keep).sum(dim=(0, 2)) / n
        with torch.no_grad():
            self.num_batches_tracked += 1
            momentum = self.momentum if self.momentum is not None else 1.0 / float(self.num_batches_tracked)
            self.running_mean.lerp_(mean.detach(), momentum)
            self.running_var.lerp_(var.detach() * n / max(float(n) - 1, 1.0), momentum)  # unbiased, as BatchNorm1d
        z = (x - mean[:, None]) / torch.sqrt(var[:, None] + self.eps)
        return z * self.weight[:, None] + self.bias[:, None]


class ConvBlock(nn.Module):
    """Zero padding to keep the length ("same"; an even kernel pads one more step after than before), convolution,
    batch norm over the real steps, ReLU; padded steps are zero after it."""

    def __init__(self, in_ch: int, out_ch: int, kernel: int, relu: bool = True):
        super().__init__()
        self.pad = nn.ConstantPad1d(((kernel - 1) // 2, kernel // 2), 0.0)
        self.conv = nn.Conv1d(in_ch, out_ch, kernel, bias=False)
        self.norm = MaskedBatchNorm1d(out_ch)
        self.relu = nn.ReLU() if relu else nn.Identity()

    def forward(self, x: torch.Tensor, keep: torch.Tensor) -> torch.Tensor:
        return self.relu(self.norm(self.conv(self.pad(x)), keep)) * keep


class ResidualBlock(nn.Module):
    def __init__(self, in_ch: int, out_ch: int, kernels: list[int]):
        super().__init__()
        widths = [in_ch] + [out_ch] * len(kernels)
        last = len(kernels) - 1
        self.convs = nn.ModuleList(ConvBlock(widths[i], widths[i + 1], k, relu=i < last) for i, k in enumerate(kernels))
        self.shortcut = None if in_ch == out_ch else ConvBlock(in_ch, out_ch, 1, relu=False)
        self.relu = nn.ReLU()

    def forward(self, x: torch.Tensor, keep: torch.Tensor) -> torch.Tensor:
        z = x
        for conv in self.convs:
            z = conv(z, keep)
        return self.relu(z + (x * keep if self.shortcut is None else self.shortcut(x, keep)))


class SeriesCNN(nn.Module):
    """Blocks over `channels x length` series, global average pooling over each series' own steps, linear head."""

    def __init__(self, p: CNN1DParams, input_shape: tuple[int, ...], num_classes: int):
        super().__init__()
        widths = [input_shape[0], *p.channels]
        if p.residual:
            blocks = [ResidualBlock(widths[i], widths[i + 1], p.kernel_sizes) for i in range(len(p.channels))]
        else:
            blocks = [ConvBlock(widths[i], widths[i + 1], k) for i, k in enumerate(p.kernel_sizes)]
        self.blocks = nn.ModuleList(blocks)
        self.dropout = nn.Dropout(p.dropout)
        self.head = nn.Linear(widths[-1], num_classes)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        z, valid = padded_steps(x)
        keep = valid.unsqueeze(1).to(z.dtype)  # N x 1 x length
        for block in self.blocks:
            z = block(z, keep)
        pooled = z.sum(dim=2) / keep.sum(dim=2)
        return self.head(self.dropout(pooled))


@register(
    "cnn1d",
    params=CNN1DParams,
    kinds={"sequence", "text"},
    description="1-D convolutions over series: FCN (kernels 8/5/3, global average pooling) or ResNet (residual)",
    space={
        "model.channels": {"type": "categorical", "choices": [[64, 128, 64], [128, 256, 128]]},
        "model.dropout": {"type": "float", "low": 0.0, "high": 0.5},
    },
)
def build_cnn1d(p: CNN1DParams, input_shape: tuple[int, ...], num_classes: int) -> nn.Module:
    return apply_init(SeriesCNN(p, input_shape, num_classes), p.init)
