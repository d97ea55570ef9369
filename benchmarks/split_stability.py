"""How many already-split images move to another split when the data grows, under the split stage's
rule and under the rule it replaced (each class's groups shuffled with split.seed, shares filled in
turn, so every group's place depended on all the others).

A set of 10 classes x 180 images (split.val = split.test = 0.15, seed 42), each image its own group
(as after the clean stage), grown by 1, 50 and 500 new images of random classes. For each:

    moved            images already split that are in another split after the growth
    trained_in_test  images that were in train or val (what a model trained on) and are in test after
    test_share       the smallest and largest share of a class's images in test after the growth

    python benchmarks/split_stability.py [--per-class 180] [--added 1 50 500]

Prints one JSON line per rule and growth.
"""
from __future__ import annotations

import argparse
import hashlib
import json
import sys
from pathlib import Path

import numpy as np
import pandas as pd

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
from tasks.common.config import SplitParams  # noqa: E402
from tasks.split import random_splits  # noqa: E402


def shuffled_rule(kept: pd.DataFrame, cfg: SplitParams) -> pd.Series:
    """The replaced rule: per class, a seeded permutation of its groups fills test, then val, then train."""
    rng, parts = np.random.default_rng(cfg.seed), []
    for _, rows in kept.groupby("label", sort=True):
        groups = rows["duplicate_group"].unique()[rng.permutation(rows["duplicate_group"].nunique())]
        names = ["test"] * round(len(rows) * cfg.test) + ["val"] * round(len(rows) * cfg.val)
        parts.append(rows["duplicate_group"].map(dict(zip(groups, names))).fillna("train"))
    return pd.concat(parts).reindex(kept.index)


def images(start: int, count: int, classes: int, rng: np.random.Generator) -> pd.DataFrame:
    numbers = np.arange(start, start + count)
    labels = rng.integers(0, classes, count) if start else numbers % classes
    return pd.DataFrame({
        "path": [f"{label}/img_{n:05d}.png" for n, label in zip(numbers, labels)],
        "label": [str(label) for label in labels], "split": "",
        "sha256": [hashlib.sha256(f"image {n}".encode()).hexdigest() for n in numbers],
        "duplicate_group": numbers})  # group ids are manifest row numbers: sorted by path, as the stage does


def measure(rule, base: pd.DataFrame, added: int, cfg: SplitParams, classes: int) -> dict:
    grown = pd.concat([base, images(len(base), added, classes, np.random.default_rng(added))], ignore_index=True)
    grown = grown.sort_values("path").reset_index(drop=True)
    grown["duplicate_group"] = np.arange(len(grown))
    before = pd.Series(rule(base, cfg).to_numpy(), index=base["sha256"])
    after = pd.Series(rule(grown, cfg).to_numpy(), index=grown["sha256"])
    old = after[before.index]
    shares = (after == "test").groupby(grown["label"].to_numpy()).mean()
    return {"added": added, "moved": int((old != before).sum()),
            "trained_in_test": int(((before != "test") & (old == "test")).sum()),
            "test_images": int((after == "test").sum()),
            "test_share": [round(float(shares.min()), 3), round(float(shares.max()), 3)]}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--per-class", type=int, default=180)
    parser.add_argument("--classes", type=int, default=10)
    parser.add_argument("--added", type=int, nargs="+", default=[1, 50, 500])
    args = parser.parse_args()
    cfg = SplitParams(val=0.15, test=0.15, seed=42)
    base = images(0, args.per_class * args.classes, args.classes, np.random.default_rng(0))
    for name, rule in (("replaced: shuffled groups", shuffled_rule), ("split stage: group position", random_splits)):
        for added in args.added:
            print(json.dumps({"rule": name, **measure(rule, base, added, cfg, args.classes)}))


if __name__ == "__main__":
    main()
