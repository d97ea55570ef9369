"""Reading the split stage's manifests (data/split/<name>.csv), now or as an earlier run stored them in
DVC, turning labels into class indices, and folds over them (duplicate groups kept whole) for
cross-validation."""
from __future__ import annotations

import io
from pathlib import Path

import numpy as np
import pandas as pd
from sklearn.model_selection import StratifiedGroupKFold

from tasks.common.config import UserError
from tasks.common.dvc_store import read_directory
from tasks.common.paths import SPLITS, split_csv


def read_split(workdir: Path, name: str) -> pd.DataFrame:
    """One split's rows (path, label, split, file, ...), every column a string; never empty."""
    path = workdir / split_csv(name)
    if not path.is_file():
        raise UserError(f"{split_csv(name)} not found; run the split stage first (dvc repro split)")
    frame = pd.read_csv(path, dtype=str, keep_default_na=False)
    if frame.empty:
        raise UserError(f"{split_csv(name)} is empty; add images or lower split.val / split.test")
    return frame


def stored_split(workdir: Path, split_hash: str) -> pd.DataFrame | None:
    """Every row of the split DVC stored as `split_hash` (a data/split `.dir` hash, as dvc.lock and a model's
    lineage record it), with its split in the "split" column; None when neither the cache nor the remote has it."""
    files = read_directory(workdir, split_hash) if split_hash.endswith(".dir") else None
    return None if files is None else split_rows(files)


def split_rows(files: dict[str, bytes]) -> pd.DataFrame | None:
    """The rows of a stored data/split folder's CSVs (`read_directory`), with their split in "split"."""
    frames = [pd.read_csv(io.BytesIO(files[f"{name}.csv"]), dtype=str, keep_default_na=False).assign(split=name)
              for name in SPLITS if f"{name}.csv" in files]
    return pd.concat(frames, ignore_index=True) if frames else None


def class_indices(frame: pd.DataFrame, labels: list[str], split: str = "validation") -> np.ndarray:
    """Each row's label as its index in `labels` (int64); a label without training images is an error."""
    unknown = sorted(set(frame["label"]) - set(labels))
    if unknown:
        raise UserError(f"classes {unknown} have {split} images but no training images; add training images "
                        "and re-run dvc repro train")
    index = {label: i for i, label in enumerate(labels)}
    return np.array([index[label] for label in frame["label"]], dtype=np.int64)


def assign_folds(frame: pd.DataFrame, folds: int, seed: int, setting: str) -> np.ndarray:
    """Fold number (0..folds-1) of each row, stratified by label, duplicate groups whole; `setting`
    names the params.yaml key that asked for the folds, in the error."""
    per_class = frame["label"].value_counts()
    if per_class.min() < folds:
        raise UserError(f"{setting}: {folds} folds need at least {folds} labelled images per class, and class "
                        f"{per_class.idxmin()!r} has {per_class.min()}; lower {setting} or add images")
    groups = frame["duplicate_group"].astype(int).to_numpy() if "duplicate_group" in frame else np.full(len(frame), -1)
    alone = groups < 0  # not in any group: a group of its own
    groups = np.where(alone, -1 - np.arange(len(frame)), groups)
    splitter = StratifiedGroupKFold(n_splits=folds, shuffle=True, random_state=seed)
    fold_of = np.empty(len(frame), dtype=np.int64)
    for fold, (_, held_out) in enumerate(splitter.split(frame, frame["label"], groups)):
        fold_of[held_out] = fold
    return fold_of
