"""RGB images -> the normalized float batch (N, 3, S, S) a model is evaluated and served on.

Resize the short side to S / crop_pct (bilinear, antialiased), centre-crop S x S, scale to [0, 1],
normalize with the backbone's mean and std: torchvision's `eval_transform` (tasks/model/transforms.py),
computed with Pillow and NumPy so that the service's API workers need no PyTorch. Pillow's resampling
is the one torchvision's antialiased kernel was written to match; the two round differently, by at
most two intensity levels in a pixel (tests/test_preprocess.py). Evaluation, monitoring and the service all
preprocess here, so they see identical numbers.
"""
from __future__ import annotations

import numpy as np
from PIL import Image


def resized_size(width: int, height: int, short: int) -> tuple[int, int]:
    """(width, height) with the shorter side `short`, the longer one scaled and truncated as torchvision does."""
    if width <= height:
        return short, int(short * height / width)
    return int(short * width / height), short


def preprocess_array(images: list[Image.Image], image_size: int, mean, std, crop_pct: float) -> np.ndarray:
    """RGB PIL images -> float32 (N, 3, S, S), normalized."""
    short = round(image_size / crop_pct)
    out = np.empty((len(images), image_size, image_size, 3), dtype=np.uint8)
    for i, img in enumerate(images):
        width, height = resized_size(*img.size, short)
        if (width, height) != img.size:
            img = img.resize((width, height), Image.BILINEAR)
        left, top = round((width - image_size) / 2), round((height - image_size) / 2)  # as CenterCrop
        out[i] = np.asarray(img)[top:top + image_size, left:left + image_size]
    scale = 1 / (255 * np.asarray(std, dtype=np.float32))
    batch = (out.astype(np.float32) * scale - np.asarray(mean, dtype=np.float32) / np.asarray(std, dtype=np.float32))
    return np.ascontiguousarray(batch.transpose(0, 3, 1, 2))
