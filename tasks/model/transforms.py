"""torchvision transforms v2 where PyTorch already runs: random augmentation of one image for training,
MixUp/CutMix for whole batches, and `eval_transform`, the fixed resize, centre crop and normalization.

Used by training's DataLoader path (`train.input: loader`: `train_transform` for the training images,
`eval_transform` for the validation batches), by the training engine (`batch_mix`) and by the augment
stage's preview. Evaluation, the gate, monitoring and the service do not preprocess here: they use
tasks/model/preprocess.py (Pillow and NumPy, no PyTorch), which computes `eval_transform`'s numbers
to within two intensity levels (tests/test_preprocess.py), so `eval_transform` is also its reference.
The image cache path of training crops and normalizes its cached pixels itself (tasks/training/inputs.py).
"""
from __future__ import annotations

import torch
from torchvision.transforms import InterpolationMode, v2

from tasks.common.config import AugmentParams


def eval_transform(size: int, mean, std, crop_pct: float) -> v2.Compose:
    """Resize the short side to size / crop_pct, centre-crop `size`, scale to [0, 1], normalize.

    This is how the backbone's pretrained weights were evaluated (crop_pct 0.875 for most ImageNet
    models); tasks/model/preprocess.py computes it without PyTorch for evaluation, monitoring and
    the service.
    """
    return v2.Compose([
        v2.ToImage(),
        v2.Resize(round(size / crop_pct), antialias=True),
        v2.CenterCrop(size),
        v2.ToDtype(torch.float32, scale=True),
        v2.Normalize(mean=list(mean), std=list(std)),
    ])


def _auto_augment(aug: AugmentParams) -> v2.Transform | None:
    if aug.auto_augment == "trivial":
        return v2.TrivialAugmentWide()
    if aug.auto_augment == "rand":
        return v2.RandAugment(num_ops=aug.rand_num_ops, magnitude=aug.rand_magnitude)
    return None


def train_transform(size: int, mean, std, aug: AugmentParams) -> v2.Compose:
    """The random training pipeline of `train.augment`; steps that are switched off are left out.

    Geometry and colour run on uint8 images, as TrivialAugment and RandAugment expect; erasing runs
    last, on the normalized tensor, so erased pixels hold the dataset mean.
    """
    jitter = aug.color_jitter.model_dump()
    steps = [
        v2.ToImage(),
        v2.RandomResizedCrop(size, scale=aug.crop_scale, ratio=aug.crop_ratio, antialias=True),
        v2.RandomHorizontalFlip(aug.hflip) if aug.hflip else None,
        v2.RandomVerticalFlip(aug.vflip) if aug.vflip else None,
        v2.RandomRotation(aug.rotation, interpolation=InterpolationMode.BILINEAR) if aug.rotation else None,
        v2.ColorJitter(**jitter) if any(jitter.values()) else None,
        _auto_augment(aug),
        v2.ToDtype(torch.float32, scale=True),
        v2.Normalize(mean=list(mean), std=list(std)),
        v2.RandomErasing(aug.erasing) if aug.erasing else None,
    ]
    return v2.Compose([step for step in steps if step is not None])


def batch_mix(aug: AugmentParams, num_classes: int) -> v2.Transform | None:
    """MixUp and/or CutMix for a whole batch, or None when both are off.

    Called as `images, targets = mix(images, labels)`: int labels (N,) become soft targets (N, C)
    that sum to 1. With both on, each batch gets one of the two at random.
    """
    mixes = []
    if aug.mixup_alpha > 0:
        mixes.append(v2.MixUp(alpha=aug.mixup_alpha, num_classes=num_classes))
    if aug.cutmix_alpha > 0:
        mixes.append(v2.CutMix(alpha=aug.cutmix_alpha, num_classes=num_classes))
    if not mixes:
        return None
    return mixes[0] if len(mixes) == 1 else v2.RandomChoice(mixes)
