"""The split stays put as data grows: each duplicate group's split is a function of its own content."""
from __future__ import annotations

import hashlib
import json
import subprocess
import sys
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
import yaml

from tasks import split
from tasks.common import paths
from tasks.common.config import SplitParams, UserError
from tests.test_stages import prepare

pytestmark = pytest.mark.data

SHARES = SplitParams(val=0.15, test=0.15, seed=42)


def images(numbers, classes: int, rng: np.random.Generator, group_size: int = 1) -> pd.DataFrame:
    """Rows as the clean stage keeps them: every `group_size` consecutive numbers one duplicate group."""
    numbers = np.asarray(numbers)
    labels = rng.integers(0, classes, numbers.max() // group_size + 1)[numbers // group_size]  # a group: one class
    return pd.DataFrame({"path": [f"{lab}/img_{n:06d}.png" for n, lab in zip(numbers, labels)],
                         "label": [f"class{lab}" for lab in labels], "split": "",
                         "sha256": [hashlib.sha256(f"image {n}".encode()).hexdigest() for n in numbers],
                         "duplicate_group": numbers // group_size})


def assigned(rows: pd.DataFrame) -> pd.Series:
    rows = rows.sort_values("path").reset_index(drop=True)
    # Group ids are manifest row numbers, which shift as files come and go: renumber them as the stage would.
    rows["duplicate_group"] = rows["duplicate_group"].rank(method="dense").astype("int64") * 7
    return pd.Series(split.random_splits(rows, SHARES).to_numpy(), index=rows["sha256"])


@pytest.mark.parametrize("seed", range(8))
def test_growth_removal_and_relabelling_never_move_another_image(seed: int):
    rng = np.random.default_rng(seed)
    base = images(np.arange(1500), classes=5, rng=rng, group_size=int(rng.integers(1, 4)))
    before = assigned(base)
    gone = rng.choice(base["duplicate_group"].unique(), 40, replace=False)
    changed = base[~base["duplicate_group"].isin(gone)].copy()  # removals
    relabel = changed["duplicate_group"].isin(rng.choice(changed["duplicate_group"].unique(), 30, replace=False))
    changed.loc[relabel, "label"] = changed.loc[relabel, "label"].map(lambda lab: f"class{(int(lab[5:]) + 1) % 5}")
    grown = pd.concat([changed, images(np.arange(10_000, 10_000 + int(rng.integers(1, 600))), 5, rng)])
    after = assigned(grown)
    kept = before.index.intersection(after.index)
    assert len(kept) == len(changed)
    assert (after[kept] == before[kept]).all()  # relabelled images included: a relabel keeps the split
    shares = (after == "test").groupby(grown.sort_values("path")["label"].to_numpy()).mean()
    assert shares.between(0.15 - 0.07, 0.15 + 0.07).all(), shares  # ~350 images a class: 4 standard errors


def test_a_small_class_still_gets_a_group_in_val_and_test_and_one_for_training():
    rng = np.random.default_rng(1)
    for groups in range(3, 12):
        rows = images(np.arange(groups), classes=1, rng=rng)
        for seed in range(20):
            got = split.random_splits(rows, SplitParams(val=0.15, test=0.15, seed=seed))
            assert set(got) == {"train", "val", "test"}, (groups, seed, got.tolist())
    with pytest.raises(UserError, match=r"class 'class0' has 2 usable images in 2 distinct groups; it needs at least 3"):
        split.random_splits(images(np.arange(2), classes=1, rng=rng), SHARES)


def split_of(workdir: Path) -> dict[str, str]:
    return {row.path: name for name in paths.SPLITS
            for row in pd.read_csv(workdir / paths.split_csv(name)).itertuples()}


def test_the_first_split_under_this_rule_says_once_how_many_images_moved(tmp_path, image_root, capsys):
    params = prepare(tmp_path, image_root)
    capsys.readouterr()
    first = split_of(tmp_path)
    # An older split: every image in another split than now, and no record of the rule that made it.
    rotate = {"train": "val", "val": "test", "test": "train"}
    frames = [pd.read_csv(tmp_path / paths.split_csv(n)) for n in paths.SPLITS]
    for name, frame in zip(paths.SPLITS, frames):
        frame.to_csv(tmp_path / paths.split_csv(rotate[name]), index=False)
    (tmp_path / split.RULE_JSON).unlink()

    # Under dvc repro the old split is gone from the workspace: it is read back from DVC's cache.
    subprocess.run([sys.executable, "-m", "dvc", "init", "--no-scm", "-q"], cwd=tmp_path, check=True)
    subprocess.run([sys.executable, "-m", "dvc", "add", "-q", "data/split"], cwd=tmp_path, check=True)
    out_hash = json.dumps(yaml.safe_load((tmp_path / "data/split.dvc").read_text())["outs"][0]["md5"])
    (tmp_path / "dvc.lock").write_text(f"schema: '2.0'\nstages:\n  split:\n    outs:\n    - path: data/split\n"
                                       f"      md5: {out_hash}\n")
    (tmp_path / "data/split.dvc").unlink()
    for name in paths.SPLITS:
        (tmp_path / paths.split_csv(name)).unlink()

    result = split.run(params, tmp_path)
    line = capsys.readouterr().err.splitlines()
    moved = [text for text in line if text.startswith("split: ")]
    assert moved == [f"split: {len(first)} of {len(first)} images already split before changed split, once: each "
                     "duplicate group's split is now a fixed function of its own content, so adding, removing or "
                     "relabelling images never moves the others again (docs/data_quality.md)"]
    assert result["moved"] == moved[0] and split_of(tmp_path) == first

    split.run(params, tmp_path)  # this rule's own split before: nothing moved, nothing said
    assert not [text for text in capsys.readouterr().err.splitlines() if text.startswith("split: ")]
