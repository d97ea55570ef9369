"""Classifying a list of image files with a bundle, in batches, as the evaluate and gate stages do."""
from __future__ import annotations

from pathlib import Path

import numpy as np
import pandas as pd
from PIL import Image, ImageStat

from tasks.data.images import open_rgb
from tasks.model.bundle import Bundle


def predict_files(bundle: Bundle, files: list[Path], batch_size: int, without_tta: bool = False
                  ) -> tuple[np.ndarray, np.ndarray | None, pd.DataFrame]:
    """Uncalibrated logits (N, C) of image files, in batches; with `without_tta`, also the logits
    without the bundle's test-time augmentation (from the same decoded images); and each image's
    brightness and size."""
    logits, plain, properties = [], [], []
    for start in range(0, len(files), batch_size):
        images = [open_rgb(f) for f in files[start:start + batch_size]]
        batch = bundle.preprocess(images)
        logits.append(bundle.logits_and_features(batch)[0].numpy())
        if without_tta:
            plain.append(bundle.logits_and_features(batch, tta="none")[0].numpy())
        properties += [image_properties(img) for img in images]
    return np.concatenate(logits), np.concatenate(plain) if without_tta else None, pd.DataFrame(properties)


def image_properties(img: Image.Image) -> dict:
    """Mean luminance (0-255) and shorter side in pixels: the properties sliced on."""
    return {"brightness": round(ImageStat.Stat(img.convert("L")).mean[0], 1), "short_side": min(img.size)}
