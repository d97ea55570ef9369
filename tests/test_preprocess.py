"""Preprocessing: a batch gives the numbers of each image alone, within a level of torchvision's transform."""
from __future__ import annotations

import subprocess
import sys

import numpy as np
import pytest
import torch
from PIL import Image

from tasks.model.bundle import preprocess
from tasks.model.transforms import eval_transform

pytestmark = pytest.mark.data

MEAN, STD = (0.485, 0.456, 0.406), (0.229, 0.224, 0.225)


def noise_images(sizes: list[tuple[int, int]]) -> list[Image.Image]:
    rng = np.random.default_rng(0)
    return [Image.fromarray(rng.integers(0, 256, (h, w, 3), dtype=np.uint8)) for h, w in sizes]


def test_a_mixed_size_batch_matches_one_image_at_a_time_in_order():
    images = noise_images([(16, 16), (50, 70), (16, 16), (300, 200), (31, 33), (50, 70)])
    one_by_one = torch.cat([preprocess([img], 32, MEAN, STD, 0.875) for img in images])

    batch = preprocess(images, 32, MEAN, STD, 0.875)

    assert batch.shape == (6, 3, 32, 32) and batch.dtype == torch.float32
    assert torch.equal(batch, one_by_one)


@pytest.mark.parametrize("size,crop_pct", [(32, 1.0), (32, 0.875), (224, 0.875), (17, 0.9)])
def test_pillow_preprocessing_is_within_two_levels_of_torchvisions_transform(size, crop_pct):
    images = noise_images([(16, 16), (50, 70), (300, 200), (31, 33), (401, 97), (224, 224)])
    expected = torch.stack([eval_transform(size, MEAN, STD, crop_pct)(img) for img in images])

    got = preprocess(images, size, MEAN, STD, crop_pct)

    assert got.shape == expected.shape
    levels = ((got - expected).abs() * torch.tensor(STD).view(1, 3, 1, 1) * 255).amax()
    assert levels <= 2.0 + 1e-3  # Pillow's and torchvision's antialiased bilinear round differently


def test_the_service_modules_import_no_pytorch():
    code = ("import sys, tasks.model.preprocess, tasks.model.served, tasks.monitoring.features, tasks.labels.queue, "
            "tasks.data.images; print(sorted(m for m in ('torch', 'torchvision', 'timm') if m in sys.modules))")
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert done.stdout.strip() == "[]"
