"""Preprocessing a batch gives the same numbers as preprocessing each image alone."""
from __future__ import annotations

import numpy as np
import pytest
import torch
from PIL import Image

from tasks.model.bundle import preprocess
from tasks.model.transforms import eval_transform

pytestmark = pytest.mark.data

MEAN, STD = (0.485, 0.456, 0.406), (0.229, 0.224, 0.225)


def test_a_mixed_size_batch_matches_one_image_at_a_time_in_order():
    rng = np.random.default_rng(0)
    sizes = [(16, 16), (50, 70), (16, 16), (300, 200), (31, 33), (50, 70)]
    images = [Image.fromarray(rng.integers(0, 256, (h, w, 3), dtype=np.uint8)) for h, w in sizes]
    one_by_one = torch.stack([eval_transform(32, MEAN, STD, 0.875)(img) for img in images])

    batch = preprocess(images, 32, MEAN, STD, 0.875)

    assert batch.shape == (6, 3, 32, 32) and batch.dtype == torch.float32
    assert torch.equal(batch, one_by_one)
