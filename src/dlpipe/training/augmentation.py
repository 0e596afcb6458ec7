"""Image augmentation with torchvision transforms.v2, drawn independently for every sample of a batch."""

from __future__ import annotations

import torch
from torch import nn
from torchvision.transforms import v2


class BatchAugment(nn.Module):
    """Applies a v2 transform pipeline to each image of an `N x C x H x W` batch (fresh randomness per sample)."""

    def __init__(self, transform: nn.Module):
        super().__init__()
        self.transform = transform

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return torch.stack([self.transform(img) for img in x])


def build_augmentation(p, input_shape: tuple[int, ...]) -> BatchAugment | None:
    """The training-batch augmentation from `train.augmentation`, or None when it is off or does nothing."""
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
