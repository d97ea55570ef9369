"""Split stage: leakage-safe, stratified train/val/test manifests with a fixed seed.

A duplicate group (exact or near copies, see tasks/data/duplicates.py) always lands in one split, so
no test image has a copy in training. Without split folders every class is split on its own with
the same shares. With data.root/{train,val,test}/ folders the user's split is honoured: a missing
val or test split is carved out of train, and duplicates found across the user's folders are
reported (and, if the clean stage kept several copies, only the first split's copy is used).

Writes data/split/{train,val,test}.csv (the columns of data/clean/kept.csv) and
    reports/split/counts.csv                  images per class per split
    reports/split/cross_split_duplicates.csv  duplicate groups that span the user's split folders
"""
from __future__ import annotations

import sys
from pathlib import Path

import numpy as np
import pandas as pd

from tasks.common.cli import run_stage
from tasks.common.config import Params, SplitParams, UserError
from tasks.common.paths import KEPT_CSV, MANIFEST_CSV, QUARANTINE_CSV, SPLIT_DIR, SPLITS, split_csv
from tasks.data.manifest import read_manifest

PARAMS = ["split"]

COUNTS_CSV = Path("reports/split/counts.csv")
CROSS_SPLIT_CSV = Path("reports/split/cross_split_duplicates.csv")


def carve(rows: pd.DataFrame, shares: dict[str, float], rng: np.random.Generator) -> pd.Series:
    """Split one class's rows by whole duplicate groups: shuffle the groups, fill each share in turn.

    Every named split gets at least one group and the rest stays in "train".
    """
    sizes = rows.groupby("duplicate_group").size()
    groups = sizes.index.to_numpy()[rng.permutation(len(sizes))]
    if len(groups) < len(shares) + 1:
        label = rows["label"].iloc[0]
        raise UserError(
            f"class {label!r} has {len(rows)} usable images in {len(groups)} distinct groups; "
            f"it needs at least {len(shares) + 1} to split; add images or drop the class"
        )
    assigned, taken = {}, 0
    for name, share in shares.items():
        target, got = max(1, round(len(rows) * share)), 0
        while got < target and taken < len(groups) - 1:  # always leave one group for training
            assigned[groups[taken]] = name
            got += sizes[groups[taken]]
            taken += 1
    return rows["duplicate_group"].map(assigned).fillna("train")


def random_splits(kept: pd.DataFrame, cfg: SplitParams) -> pd.Series:
    rng = np.random.default_rng(cfg.seed)
    shares = {"test": cfg.test, "val": cfg.val}
    parts = [carve(group, shares, rng) for _, group in kept.groupby("label", sort=True)]
    return pd.concat(parts).reindex(kept.index)


def honoured_splits(kept: pd.DataFrame, cfg: SplitParams) -> pd.Series:
    """The user's folders; a missing val or test split is carved out of train, class by class."""
    splits = kept["split"].copy()
    missing = {name: getattr(cfg, name) for name in ("test", "val") if not (splits == name).any()}
    if missing:
        rng = np.random.default_rng(cfg.seed)
        train = kept[splits == "train"]
        for _, group in train.groupby("label", sort=True):
            splits[group.index] = carve(group, missing, rng)
    return splits


def cross_split_duplicates(manifest: pd.DataFrame, quarantine: pd.DataFrame, kept_splits: pd.Series) -> pd.DataFrame:
    """Every file of a duplicate group found in more than one of the user's split folders."""
    files = manifest[(manifest["split"] != "") & (manifest["duplicate_group"] >= 0)]
    spanning = files.groupby("duplicate_group")["split"].transform("nunique") > 1
    report = files.loc[spanning, ["duplicate_group", "path", "label", "split"]]
    reasons = quarantine.set_index("path")["reason"]
    status = [
        f"quarantined ({reasons[p]})" if p in reasons.index
        else f"used in {kept_splits.get(p, '-')}" if kept_splits.get(p, "") else "dropped: copy in an earlier split"
        for p in report["path"]
    ]
    return report.assign(status=status).sort_values(["duplicate_group", "path"])


def run(params: Params, workdir: Path = Path(".")) -> dict:
    for needed in (KEPT_CSV, QUARANTINE_CSV, MANIFEST_CSV):
        if not (workdir / needed).is_file():
            raise UserError(f"{needed} not found; run the validate and clean stages first (dvc repro clean)")
    kept = pd.read_csv(workdir / KEPT_CSV, dtype=str, keep_default_na=False)
    kept["duplicate_group"] = kept["duplicate_group"].astype("int64")
    kept = kept.sort_values("path", kind="stable").reset_index(drop=True)  # independent of the manifest order
    honour = (kept["split"] != "").any()
    splits = (honoured_splits if honour else random_splits)(kept, params.split).rename("split")

    # A group the clean stage kept several copies of stays in its first split (train, val, test).
    order = splits.map({name: i for i, name in enumerate(SPLITS)})
    first = order.groupby(kept["duplicate_group"]).transform("min")
    splits[order > first] = ""
    if (splits[splits != ""].groupby(kept["duplicate_group"]).nunique() > 1).any():
        raise AssertionError("a duplicate group spans two splits")  # an invariant, not a user error

    (workdir / SPLIT_DIR).mkdir(parents=True, exist_ok=True)
    for name in SPLITS:
        kept[splits == name].to_csv(workdir / split_csv(name), index=False)
    used = splits != ""
    counts = pd.crosstab(kept.loc[used, "label"], splits[used]).reindex(columns=list(SPLITS), fill_value=0)
    counts["total"] = counts.sum(axis=1)
    counts.columns.name = None
    (workdir / COUNTS_CSV).parent.mkdir(parents=True, exist_ok=True)
    counts.to_csv(workdir / COUNTS_CSV)
    print(f"images per class and split:\n{counts.to_string()}", file=sys.stderr)
    by_path = pd.Series(splits.to_numpy(), index=kept["path"])
    quarantine = pd.read_csv(workdir / QUARANTINE_CSV, dtype=str, keep_default_na=False)
    cross = cross_split_duplicates(read_manifest(workdir / MANIFEST_CSV), quarantine, by_path)
    cross.to_csv(workdir / CROSS_SPLIT_CSV, index=False)
    return {
        "mode": "user folders" if honour else "seeded random",
        **{name: int((splits == name).sum()) for name in SPLITS},
        "cross_split_duplicate_groups": int(cross["duplicate_group"].nunique()),
    }


if __name__ == "__main__":
    run_stage("split", run)
