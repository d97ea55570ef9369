"""Reading the split stage's manifests (data/split/<name>.csv) and turning labels into class indices."""
from __future__ import annotations

from pathlib import Path

import numpy as np
import pandas as pd

from tasks.common.config import UserError
from tasks.common.paths import split_csv


def read_split(workdir: Path, name: str) -> pd.DataFrame:
    """One split's rows (path, label, split, file, ...), every column a string; never empty."""
    path = workdir / split_csv(name)
    if not path.is_file():
        raise UserError(f"{split_csv(name)} not found; run the split stage first (dvc repro split)")
    frame = pd.read_csv(path, dtype=str, keep_default_na=False)
    if frame.empty:
        raise UserError(f"{split_csv(name)} is empty; add images or lower split.val / split.test")
    return frame


def class_indices(frame: pd.DataFrame, labels: list[str], split: str = "validation") -> np.ndarray:
    """Each row's label as its index in `labels` (int64); a label without training images is an error."""
    unknown = sorted(set(frame["label"]) - set(labels))
    if unknown:
        raise UserError(f"classes {unknown} have {split} images but no training images; add training images "
                        "and re-run dvc repro train")
    index = {label: i for i, label in enumerate(labels)}
    return np.array([index[label] for label in frame["label"]], dtype=np.int64)
