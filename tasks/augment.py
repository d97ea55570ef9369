"""torchvision transforms v2: random augmentation for training, a fixed resize for everything else."""
from __future__ import annotations

import torch
from torchvision.transforms import v2

from tasks.config import AugmentParams


def eval_transform(size: int, mean, std) -> v2.Compose:
    """Resize the short side, centre-crop, scale to [0, 1], normalize: what the service also does."""
    return v2.Compose([
        v2.ToImage(),
        v2.Resize(size, antialias=True),
        v2.CenterCrop(size),
        v2.ToDtype(torch.float32, scale=True),
        v2.Normalize(mean=list(mean), std=list(std)),
    ])


def train_transform(size: int, mean, std, aug: AugmentParams) -> v2.Compose:
    return v2.Compose([
        v2.ToImage(),
        v2.RandomResizedCrop(size, scale=tuple(aug.crop_scale), antialias=True),
        v2.RandomHorizontalFlip(aug.hflip),
        v2.ToDtype(torch.float32, scale=True),
        v2.Normalize(mean=list(mean), std=list(std)),
    ])
