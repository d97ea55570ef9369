"""Training augmentation of a whole batch on the training device, with its own random draw for every image.

torchvision v2 transforms given a batch draw once for all of its images, so batches from the uint8
image cache are augmented here instead: one affine resampling for crop, flips and rotation, then
vectorized colour jitter and erasing. It follows `tasks.augment.train_transform` as closely as a batch
allows; where it differs, the docstring of the step says how. Every draw comes from the caller's
torch.Generator, so a run is reproducible and can resume where it stopped.
"""
from __future__ import annotations

import math
from functools import lru_cache

import torch
import torch.nn.functional as F

from tasks.common.config import AugmentParams, TrainParams, UserError

GRAY = (0.2989, 0.587, 0.114)  # torchvision's rgb_to_grayscale weights
ERASE_SCALE = (0.02, 0.33)  # RandomErasing's defaults: area share and aspect ratio of the rectangle
ERASE_RATIO = (0.3, 3.3)


def _unsupported(aug: AugmentParams) -> list[str]:
    return [f"auto_augment={aug.auto_augment}"] if aug.auto_augment != "none" else []


def batch_augmentable(aug: AugmentParams) -> bool:
    """True when the batch path can do every switched-on option; it has no auto_augment policies."""
    return not _unsupported(aug)


def uses_image_cache(cfg: TrainParams) -> bool:
    """train.input resolved: True for the uint8 cache with batch augmentation, False for the DataLoader."""
    if cfg.input == "cache" and not batch_augmentable(cfg.augment):
        raise UserError("train.input: cache augments whole batches, which auto_augment cannot do; "
                        "set train.input to loader or auto, or train.augment.auto_augment to none")
    return cfg.input == "cache" or (cfg.input == "auto" and batch_augmentable(cfg.augment))


@lru_cache(maxsize=16)
def _scale_shift(mean: tuple, std: tuple, max_value: float, device: torch.device):
    """Normalize as one multiply-add; cached so that a CUDA batch copies no constants to the device."""
    mean_t = torch.tensor(mean, dtype=torch.float32, device=device).view(1, 3, 1, 1)
    std_t = torch.tensor(std, dtype=torch.float32, device=device).view(1, 3, 1, 1)
    return 1.0 / (max_value * std_t), -mean_t / std_t


def _normalized(x: torch.Tensor, mean, std, max_value: float) -> torch.Tensor:
    """(x / max_value - mean) / std in one pass, written channels_last as the model reads it."""
    scale, shift = _scale_shift(tuple(map(float, mean)), tuple(map(float, std)), float(max_value), x.device)
    out = torch.empty(x.shape, dtype=torch.float32, device=x.device, memory_format=torch.channels_last)
    return torch.addcmul(shift, x, scale, out=out)


def normalize(images: torch.Tensor, mean, std) -> torch.Tensor:
    """uint8 (N, 3, H, W) -> float32 scaled to [0, 1] and normalized, channels_last: evaluation batches."""
    return _normalized(images, mean, std, 255.0)


def _gray(x: torch.Tensor) -> torch.Tensor:
    return GRAY[0] * x[:, 0:1] + GRAY[1] * x[:, 1:2] + GRAY[2] * x[:, 2:3]


def _blend(x: torch.Tensor, other: torch.Tensor, factor: torch.Tensor) -> torch.Tensor:
    """factor * x + (1 - factor) * other, clamped to [0, 1], in place: torchvision's _blend."""
    return x.sub_(other).mul_(factor).add_(other).clamp_(0.0, 1.0)


def _shift_hue(x: torch.Tensor, shift: torch.Tensor) -> torch.Tensor:
    """Rotate the hue through RGB -> HSV -> RGB like torchvision's adjust_hue: saturation and value are kept.

    HSV rather than a YIQ rotation, so that results match the per-image pipeline; `shift` is (N, 1, 1).
    """
    r, g, b = x.unbind(1)
    value = x.amax(1)
    chroma = value - x.amin(1)
    c = chroma.clamp(min=1e-8)  # grey pixels: any hue, chroma 0 gives back the value
    hue = torch.where(value == r, (g - b) / c, torch.where(value == g, 2.0 + (b - r) / c, 4.0 + (r - g) / c))
    sixths = ((hue / 6.0 + shift) % 1.0) * 6.0
    k = torch.stack([(sixths + 5.0) % 6.0, (sixths + 3.0) % 6.0, (sixths + 1.0) % 6.0], 1)
    return value.unsqueeze(1) - chroma.unsqueeze(1) * torch.minimum(k, 4.0 - k).clamp_(0.0, 1.0)


class BatchAugment:
    """uint8 (N, 3, S, S) -> augmented, normalized float32 (N, 3, size, size), channels_last, on the same device.

    Resampling is bilinear without antialiasing, so the cache resolution should stay close to `size`.
    """

    def __init__(self, size: int, aug: AugmentParams, mean, std):
        unsupported = _unsupported(aug)
        if unsupported:
            raise ValueError(f"train.augment {', '.join(unsupported)} is not supported by batch augmentation "
                             "on the device; set it to none or use the per-image loader")
        self.size, self.aug, self.mean, self.std = size, aug, mean, std
        self.colour = any(aug.color_jitter.model_dump().values())

    def __call__(self, images: torch.Tensor, generator: torch.Generator) -> torch.Tensor:
        shape = tuple(images.shape)
        if images.dtype != torch.uint8 or len(shape) != 4 or shape[1] != 3 or shape[2] != shape[3]:
            raise ValueError(f"expected uint8 images (N, 3, S, S), got {images.dtype} {shape}")
        n = len(images)

        def uniform(lo: float, hi: float) -> torch.Tensor:
            return torch.empty(n, device=images.device).uniform_(lo, hi, generator=generator)

        grid = F.affine_grid(self._theta(n, uniform), [n, 3, self.size, self.size], align_corners=False)
        x = F.grid_sample(images.float(), grid, mode="bilinear", padding_mode="zeros", align_corners=False)
        if self.colour:
            x = self._colour(x.mul_(1.0 / 255.0), uniform)
        x = _normalized(x, self.mean, self.std, 1.0 if self.colour else 255.0)
        return self._erase(x, uniform) if self.aug.erasing else x

    def _theta(self, n: int, uniform) -> torch.Tensor:
        """Per-image 2x3 map from output to source coordinates: rotate, then flip, then crop.

        RandomResizedCrop's area share and log-uniform aspect ratio, with width and height (shares of
        the side) clamped to 1 instead of redrawn, and the centre uniform over the positions that
        keep the crop inside the image. Rotation pads with black, as RandomRotation's fill 0.
        """
        aug = self.aug
        area = uniform(*aug.crop_scale)
        ratio = uniform(*map(math.log, aug.crop_ratio)).exp_()
        width = (area * ratio).sqrt_().clamp_(max=1.0)
        height = (area / ratio).sqrt_().clamp_(max=1.0)
        centre_x = uniform(-1.0, 1.0) * (1.0 - width)
        centre_y = uniform(-1.0, 1.0) * (1.0 - height)
        if aug.hflip:
            width = width * torch.where(uniform(0.0, 1.0) < aug.hflip, -1.0, 1.0)
        if aug.vflip:
            height = height * torch.where(uniform(0.0, 1.0) < aug.vflip, -1.0, 1.0)
        if aug.rotation:
            angle = uniform(-aug.rotation, aug.rotation).deg2rad_()
            cos, sin = angle.cos(), angle.sin()
        else:
            cos, sin = torch.ones_like(area), torch.zeros_like(area)
        rows = [width * cos, -width * sin, centre_x, height * sin, height * cos, centre_y]
        return torch.stack(rows, 1).view(n, 2, 3)

    def _colour(self, x: torch.Tensor, uniform) -> torch.Tensor:
        """ColorJitter with per-image factors, on [0, 1] floats; switched-off properties are skipped.

        The order is fixed (brightness, contrast, saturation, hue) rather than ColorJitter's random
        one: the first three commute apart from clamping, so only hue's place differs.
        """
        jitter, n = self.aug.color_jitter, len(x)

        def factor(amount: float) -> torch.Tensor:
            return uniform(max(0.0, 1.0 - amount), 1.0 + amount).view(n, 1, 1, 1)

        if jitter.brightness:
            x = x.mul_(factor(jitter.brightness)).clamp_(0.0, 1.0)
        if jitter.contrast:
            x = _blend(x, _gray(x).mean((2, 3), keepdim=True), factor(jitter.contrast))
        if jitter.saturation:
            x = _blend(x, _gray(x), factor(jitter.saturation))
        if jitter.hue:
            x = _shift_hue(x, uniform(-jitter.hue, jitter.hue).view(n, 1, 1))
        return x

    def _erase(self, x: torch.Tensor, uniform) -> torch.Tensor:
        """RandomErasing per image: a rectangle set to 0 (the mean colour) after normalization.

        Its height and width are clamped below the side instead of redrawn, and each image's mask
        compares coordinate grids with its own bounds.
        """
        size = self.size
        area = uniform(*ERASE_SCALE)
        ratio = uniform(*map(math.log, ERASE_RATIO)).exp_()
        height = (size * (area * ratio).sqrt()).round_().clamp_(max=size - 1)
        width = (size * (area / ratio).sqrt()).round_().clamp_(max=size - 1)
        top = (uniform(0.0, 1.0) * (size - height + 1)).floor_()
        left = (uniform(0.0, 1.0) * (size - width + 1)).floor_()
        erase = uniform(0.0, 1.0) < self.aug.erasing
        pos = torch.arange(size, device=x.device, dtype=torch.float32)
        rows = (pos >= top[:, None]) & (pos < (top + height)[:, None]) & erase[:, None]
        cols = (pos >= left[:, None]) & (pos < (left + width)[:, None])
        return x.masked_fill_((rows[:, :, None] & cols[:, None, :]).unsqueeze(1), 0.0)
