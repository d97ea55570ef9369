"""Per-image features that the service logs and that drift monitoring compares with a reference.

One row per image: image properties (brightness, contrast, sharpness, size), the model's embedding
projected to a few dimensions, and its prediction. The service and the monitor stage both build rows
here, so live traffic and the reference profile are computed identically.
"""
from __future__ import annotations

import numpy as np
from PIL import Image

from tasks.data.images import image_stats
from tasks.model.bundle import EMBEDDING_DIMS, Bundle

STAT_COLUMNS = ["brightness", "contrast", "sharpness", "width", "height"]
EMBEDDING_COLUMNS = [f"emb_{i}" for i in range(EMBEDDING_DIMS)]
FEATURE_COLUMNS = STAT_COLUMNS + EMBEDDING_COLUMNS
PREDICTION_COLUMNS = ["prediction", "confidence"]
LOGGED_COLUMNS = FEATURE_COLUMNS + PREDICTION_COLUMNS  # one logged image, as the monitor stage reads it


def feature_rows(images: list[Image.Image], probs: np.ndarray, embeddings: np.ndarray, labels: list[str]) -> list[dict]:
    """Rows for images whose class probabilities and projected embeddings are already computed."""
    rows = []
    for img, p, emb in zip(images, probs, embeddings):
        row = image_stats(img)
        row.update({col: float(v) for col, v in zip(EMBEDDING_COLUMNS, emb)})
        row["prediction"] = labels[int(np.argmax(p))]
        row["confidence"] = float(np.max(p))
        rows.append(row)
    return rows


def profile_images(bundle: Bundle, images: list[Image.Image]) -> list[dict]:
    """Run the model on RGB images and return their feature rows."""
    logits, features = bundle.logits_and_features(bundle.preprocess(images))
    probs = bundle.probabilities(logits)  # calibrated, as the service logs them
    return feature_rows(images, probs, bundle.project(features), bundle.labels)
