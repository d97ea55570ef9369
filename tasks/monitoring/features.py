"""Per-image features that the service logs and that drift monitoring compares with a reference.

One row per image: image properties (brightness, contrast, sharpness, size), the model's embedding
projected to a few dimensions, and its prediction. The service and the monitor stage both build rows
here, so live traffic and the reference profile are computed identically.
"""
from __future__ import annotations

from pathlib import Path

import numpy as np
import pandas as pd
from PIL import Image
from tqdm import tqdm

from tasks.common.config import UserError
from tasks.data.images import image_stats, open_rgb
from tasks.model.meta import EMBEDDING_DIMS
from tasks.model.served import Classifier

STAT_COLUMNS = ["brightness", "contrast", "sharpness", "width", "height"]
EMBEDDING_COLUMNS = [f"emb_{i}" for i in range(EMBEDDING_DIMS)]
FEATURE_COLUMNS = STAT_COLUMNS + EMBEDDING_COLUMNS
PREDICTION_COLUMNS = ["prediction", "confidence"]
LOGGED_COLUMNS = FEATURE_COLUMNS + PREDICTION_COLUMNS  # one logged image, as the monitor stage reads it
BATCH_SIZE = 64


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


def profile_images(classifier: Classifier, images: list[Image.Image]) -> list[dict]:
    """Run the model, in its served runtime, on RGB images and return their feature rows."""
    probs, embeddings = classifier.predict(classifier.preprocess(images))  # calibrated, as the service logs them
    return feature_rows(images, probs, embeddings, classifier.labels)


def open_split_image(workdir: Path, file: str):
    """Decode one listed image; a file that vanished since the split means the manifests are stale."""
    path = workdir / file
    if not path.is_file():
        raise UserError(f"{file} is listed in data/split but missing; re-run the pipeline (dvc repro)")
    return open_rgb(path)


def profile_split(classifier: Classifier, workdir: Path, split: pd.DataFrame, desc: str) -> pd.DataFrame:
    """Feature rows of every image of a split, computed in batches exactly as the service does."""
    rows = []
    with tqdm(total=len(split), desc=desc, unit="img", leave=False, disable=None) as bar:
        for start in range(0, len(split), BATCH_SIZE):
            files = split["file"].iloc[start:start + BATCH_SIZE].tolist()
            rows.extend(profile_images(classifier, [open_split_image(workdir, f) for f in files]))
            bar.update(len(files))
    profile = pd.DataFrame(rows, columns=LOGGED_COLUMNS)
    return profile.assign(label=split["label"].to_numpy(), file=split["file"].to_numpy())
