"""Split stage: stratified train/val/test manifests with a fixed seed.

Every class is split on its own with the same shares, so rare classes appear in all three splits.
Writes data/split/{train,val,test}.csv (columns of data/clean/kept.csv) and
reports/split/counts.csv (images per class per split).
"""
from __future__ import annotations

from pathlib import Path

import numpy as np
import pandas as pd

from tasks.clean import KEPT_CSV
from tasks.cli import run_stage
from tasks.config import Params, SplitParams, UserError

SPLIT_DIR = Path("data/split")
SPLITS = ("train", "val", "test")
COUNTS_CSV = Path("reports/split/counts.csv")


def split_csv(name: str) -> Path:
    return SPLIT_DIR / f"{name}.csv"


def assign_splits(kept: pd.DataFrame, cfg: SplitParams) -> pd.Series:
    """Split name for every row: per class, shuffle by seed, take test, then val, the rest trains."""
    rng = np.random.default_rng(cfg.seed)
    assigned = pd.Series("train", index=kept.index)
    for label, group in kept.groupby("label", sort=True):
        if len(group) < 3:
            raise UserError(f"class {label!r} has {len(group)} usable images; each class needs at least 3 to split")
        order = rng.permutation(group.index.to_numpy())
        n_test = max(1, round(len(order) * cfg.test))
        n_val = max(1, round(len(order) * cfg.val))
        n_test, n_val = min(n_test, len(order) - 2), min(n_val, len(order) - 2)
        assigned[order[:n_test]] = "test"
        assigned[order[n_test:n_test + n_val]] = "val"
    return assigned


def run(params: Params, workdir: Path = Path(".")) -> dict:
    if not (workdir / KEPT_CSV).is_file():
        raise UserError(f"{KEPT_CSV} not found; run the clean stage first (dvc repro clean)")
    kept = pd.read_csv(workdir / KEPT_CSV, dtype=str, keep_default_na=False)
    kept = kept.sort_values("path", kind="stable").reset_index(drop=True)  # order-independent of the manifest
    splits = assign_splits(kept, params.split)
    (workdir / SPLIT_DIR).mkdir(parents=True, exist_ok=True)
    for name in SPLITS:
        kept[splits == name].to_csv(workdir / split_csv(name), index=False)
    counts = pd.crosstab(kept["label"], splits).reindex(columns=list(SPLITS), fill_value=0)
    (workdir / COUNTS_CSV).parent.mkdir(parents=True, exist_ok=True)
    counts.to_csv(workdir / COUNTS_CSV)
    return {name: int((splits == name).sum()) for name in SPLITS}


if __name__ == "__main__":
    run_stage("split", run)
