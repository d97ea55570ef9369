"""The images a model was trained and validated on, by content hash, kept next to it in the model store.

    trained_on.json   {"train": [sha256, ...], "val": [sha256, ...]}   (sorted; 66 bytes an image)

The package stage writes it from data/split/{train,val}.csv; the gate reads it back for the
production model, so that neither model is graded on an image it learned from or was chosen on.
A model packaged before the file existed has its split's DVC hash in its lineage: the lists are
recovered from DVC's cache or remote when that split is still there.
"""
from __future__ import annotations

import json
from pathlib import Path

import pandas as pd

from tasks.common.paths import split_csv
from tasks.data.splits import stored_split

TRAINED_ON_FILE = "trained_on.json"
FITTED_SPLITS = ("train", "val")


def current_training_images(workdir: Path) -> dict[str, list[str]]:
    """The content hashes of today's train and val splits (what the model trained now learned from)."""
    return {name: sorted(set(pd.read_csv(workdir / split_csv(name), dtype=str, keep_default_na=False)["sha256"]))
            for name in FITTED_SPLITS}


def write_training_images(images: dict[str, list[str]], path: Path) -> None:
    path.write_text(json.dumps(images, separators=(",", ":")) + "\n")


def training_images(model_dir: Path, lineage: dict | None, workdir: Path) -> tuple[dict[str, set[str]] | None, str]:
    """A stored model's train and val hashes and where they came from; (None, why) when they are lost."""
    path = model_dir / TRAINED_ON_FILE
    if path.is_file():
        return {name: set(hashes) for name, hashes in json.loads(path.read_text()).items()}, "the model store"
    split_hash = (lineage or {}).get("split_hash", "unknown")
    if split_hash == "unknown":
        return None, "the model has no list of its training images and no split hash in its lineage to recover it from"
    rows = stored_split(workdir, split_hash)
    if rows is None:
        return None, (f"the model has no list of its training images, and its split {split_hash} is in neither the "
                      "DVC cache nor the remote (dvc pull it, or push it from the machine that trained the model)")
    return ({name: set(rows.loc[rows["split"] == name, "sha256"]) for name in FITTED_SPLITS},
            f"its split {split_hash}, recovered from DVC")
