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

import hashlib
import json
import sys
from pathlib import Path

import numpy as np
import pandas as pd

from tasks.common.cli import run_stage
from tasks.common.config import Params, SplitParams, UserError
from tasks.common.dvc_store import locked_hash, read_directory, read_lock
from tasks.common.paths import KEPT_CSV, MANIFEST_CSV, QUARANTINE_CSV, SPLIT_DIR, SPLITS, split_csv
from tasks.data.manifest import read_manifest
from tasks.data.splits import split_rows

PARAMS = ["split"]

COUNTS_CSV = Path("reports/split/counts.csv")
CROSS_SPLIT_CSV = Path("reports/split/cross_split_duplicates.csv")
RULE_JSON = SPLIT_DIR / "rule.json"  # which rule made the split: an older split lacks it
RULE = "group position"


def positions(rows: pd.DataFrame, seed: int) -> pd.Series:
    """Each duplicate group's place in [0, 1): its smallest content hash, hashed with the seed.

    It depends on nothing but the group's own images, so other images coming, going or changing class
    never move it, and a relabelled image keeps its place.
    """
    keys = rows.groupby("duplicate_group")["sha256"].min()
    return keys.map(lambda key: int.from_bytes(hashlib.sha256(f"{seed}:{key}".encode()).digest()[:8], "big") / 2**64)


def carve(rows: pd.DataFrame, shares: dict[str, float], seed: int) -> pd.Series:
    """Split one class's rows by whole duplicate groups, each by its own position (see `positions`).

    The named splits take the positions below their cumulative shares (the first named split the
    lowest), the rest is "train". A class that this leaves with an empty split (a class of a few
    groups) is split by rank instead: its groups in position order fill each named split with at
    least one group, leaving one for training. Such a class's split can move as it grows, until
    every split holds a group by position alone.
    """
    place = positions(rows, seed).sort_values(kind="stable")
    if len(place) < len(shares) + 1:
        label = rows["label"].iloc[0]
        raise UserError(
            f"class {label!r} has {len(rows)} usable images in {len(place)} distinct groups; "
            f"it needs at least {len(shares) + 1} to split; add images or drop the class"
        )
    bounds = np.cumsum(list(shares.values()))
    names = np.array([*shares, "train"])
    assigned = pd.Series(names[np.searchsorted(bounds, place.to_numpy(), side="right")], index=place.index)
    if set(assigned) != set(names):
        assigned = by_rank(rows, place, shares)
    return rows["duplicate_group"].map(assigned)


def by_rank(rows: pd.DataFrame, place: pd.Series, shares: dict[str, float]) -> pd.Series:
    """A small class: groups in position order fill each share (at least one group), one left for train."""
    sizes = rows.groupby("duplicate_group").size()
    assigned, taken = pd.Series("train", index=place.index), 0
    for name, share in shares.items():
        target, got = max(1, round(len(rows) * share)), 0
        while got < target and taken < len(place) - 1:
            assigned[place.index[taken]] = name
            got += sizes[place.index[taken]]
            taken += 1
    return assigned


def random_splits(kept: pd.DataFrame, cfg: SplitParams) -> pd.Series:
    shares = {"test": cfg.test, "val": cfg.val}
    parts = [carve(group, shares, cfg.seed) for _, group in kept.groupby("label", sort=True)]
    return pd.concat(parts).reindex(kept.index)


def honoured_splits(kept: pd.DataFrame, cfg: SplitParams) -> pd.Series:
    """The user's folders; a missing val or test split is carved out of train, class by class."""
    splits = kept["split"].copy()
    missing = {name: getattr(cfg, name) for name in ("test", "val") if not (splits == name).any()}
    if missing:
        train = kept[splits == "train"]
        for _, group in train.groupby("label", sort=True):
            splits[group.index] = carve(group, missing, cfg.seed)
    return splits


def previous_split(workdir: Path) -> tuple[pd.DataFrame | None, bool]:
    """The split before this run (its rows, with "split") and whether this rule made it. Read from
    data/split when it is still there, else from DVC's cache or remote (dvc repro removes it first)."""
    if all((workdir / split_csv(name)).is_file() for name in SPLITS):
        frames = [pd.read_csv(workdir / split_csv(name), dtype=str, keep_default_na=False).assign(split=name)
                  for name in SPLITS]
        return pd.concat(frames, ignore_index=True), (workdir / RULE_JSON).is_file()
    split_hash = locked_hash(read_lock(workdir), "split", "outs", SPLIT_DIR, workdir)
    files = read_directory(workdir, split_hash) if split_hash else None
    before = split_rows(files) if files else None
    return (None, True) if before is None else (before, RULE_JSON.name in files)


def moved_notice(before: pd.DataFrame | None, same_rule: bool, kept: pd.DataFrame, splits: pd.Series) -> str | None:
    """One line on how many images already split before are in another split now (None: none moved)."""
    if before is None:
        return None
    was = before.drop_duplicates("sha256").set_index("sha256")["split"]
    now = pd.Series(splits.to_numpy(), index=kept["sha256"])
    now = now[(now != "") & ~now.index.duplicated()]
    common = now.index.intersection(was.index)
    moved = int((now[common] != was[common]).sum())
    if moved == 0:
        return None
    if not same_rule:
        return (f"split: {moved} of {len(common)} images already split before changed split, once: each duplicate "
                "group's split is now a fixed function of its own content, so adding, removing or relabelling "
                "images never moves the others again (docs/data_quality.md)")
    return (f"split: {moved} of {len(common)} images already split before changed split (split.seed, val or test "
            "changed, or a class of a few groups grew: see docs/data_quality.md)")


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
    before, same_rule = previous_split(workdir)
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
    (workdir / RULE_JSON).write_text(json.dumps({"rule": RULE, "seed": params.split.seed}) + "\n")
    notice = moved_notice(before, same_rule, kept, splits)
    if notice:
        print(notice, file=sys.stderr)
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
        "moved": notice,
    }


if __name__ == "__main__":
    run_stage("split", run)
