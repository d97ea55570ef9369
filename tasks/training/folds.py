"""K-fold cross-validation over a frame: the label folds and the tuning trials split train and val alike."""
from __future__ import annotations

from collections.abc import Iterator

import pandas as pd

from tasks.data.splits import assign_folds


def kfold(frame: pd.DataFrame, k: int, seed: int, setting: str) -> Iterator[tuple[int, pd.DataFrame, pd.DataFrame]]:
    """(fold, rows to fit on, rows held out) for each of k stratified folds, duplicate groups kept
    whole (tasks/data/splits.py). Too few images per class for k folds is a UserError naming
    `setting`, raised here rather than at the first fold, so before anything trains."""
    fold_of = assign_folds(frame, k, seed, setting=setting)
    return ((fold, frame[fold_of != fold], frame[fold_of == fold]) for fold in range(k))
