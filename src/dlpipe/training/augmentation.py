"""Augmentation of training batches, drawn independently for every sample: images with torchvision transforms.v2;
series (N x channels x length, NaN-padded) with jitter, scaling and window slicing, each within a series' own
length (padding stays padding)."""

from __future__ import annotations

import torch
from torch import nn
from torchvision.transforms import v2

from dlpipe.data.base import series_lengths


class BatchAugment(nn.Module):
    """Applies a v2 transform pipeline to each image of an `N x C x H x W` batch (fresh randomness per sample)."""

    def __init__(self, transform: nn.Module):
        super().__init__()
        self.transform = transform

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return torch.stack([self.transform(img) for img in x])


class SeriesAugment(nn.Module):
    """Window slicing (a random window of `window` of each series' own length, stretched back to that length by
    linear interpolation), then scaling (one factor per series and channel, around 1 with std `scaling`), then
    jitter (Gaussian noise of std `jitter` on every step)."""

    def __init__(self, jitter: float, scaling: float, window: float):
        super().__init__()
        self.jitter, self.scaling, self.window = jitter, scaling, window

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if self.window < 1:
            x = self.slice_windows(x)
        if self.scaling:
            x = x * (1 + self.scaling * torch.randn(x.shape[0], x.shape[1], 1, device=x.device, dtype=x.dtype))
        if self.jitter:
            x = x + self.jitter * torch.randn_like(x)
        return x

    def slice_windows(self, x: torch.Tensor) -> torch.Tensor:
        lengths = series_lengths(x).clamp(min=1).to(x.dtype)
        steps = torch.arange(x.shape[-1], device=x.device, dtype=x.dtype)
        width = torch.clamp(torch.ceil(self.window * lengths), min=1)
        start = torch.floor(torch.rand_like(lengths) * (lengths - width + 1))
        # step t of the result reads position start + t * (width - 1) / (length - 1) of the original
        stride = (width - 1) / torch.clamp(lengths - 1, min=1)
        position = torch.minimum(start[:, None] + steps * stride[:, None], (lengths - 1)[:, None])
        low = position.floor().long()
        high = torch.minimum(low + 1, (lengths - 1).long()[:, None])
        frac = (position - low.to(x.dtype)).unsqueeze(1)
        channels = x.shape[1]
        sliced = _steps(x, low, channels) * (1 - frac) + _steps(x, high, channels) * frac
        inside = (steps < lengths[:, None]).unsqueeze(1)
        return torch.where(inside, sliced, x)  # padding stays NaN


def _steps(x: torch.Tensor, index: torch.Tensor, channels: int) -> torch.Tensor:
    """`x[n, c, index[n, t]]` for every series n, channel c and step t."""
    return x.gather(2, index.unsqueeze(1).expand(-1, channels, -1))


def build_augmentation(p, input_shape: tuple[int, ...]) -> nn.Module | None:
    """The training-batch augmentation from `train.augmentation`, or None when it is off or does nothing."""
    if p.enabled and len(input_shape) == 2:
        if not (p.jitter or p.scaling or p.window_slice < 1):
            return None
        return SeriesAugment(p.jitter, p.scaling, p.window_slice)
    if not p.enabled or len(input_shape) != 3:
        return None
    _, h, w = input_shape
    steps: list[nn.Module] = []
    if p.crop_padding:
        steps.append(v2.RandomCrop((h, w), padding=p.crop_padding))
    if p.rotation or p.translate or (p.scale_min, p.scale_max) != (1.0, 1.0):
        steps.append(
            v2.RandomAffine(
                degrees=p.rotation,
                translate=(p.translate, p.translate) if p.translate else None,
                scale=(p.scale_min, p.scale_max),
            )
        )
    if p.hflip:
        steps.append(v2.RandomHorizontalFlip())
    if p.vflip:
        steps.append(v2.RandomVerticalFlip())
    return BatchAugment(v2.Compose(steps)) if steps else None
