"""Clean stage: decide which files of the manifest are usable, quarantine the rest with a reason.

Reads data/manifest.csv (validate stage) and writes
    data/clean/kept.csv        path, label, file, sha256    -- images the model may see
    data/clean/quarantine.csv  path, label, reason, detail  -- everything dropped, and why
Nothing under data.root is touched: dropped files stay where they are, listed here.
"""
from __future__ import annotations

from pathlib import Path

import pandas as pd

from tasks.cli import run_stage
from tasks.config import Params, UserError
from tasks.manifest import MANIFEST_FILE, read_manifest

KEPT_CSV = Path("data/clean/kept.csv")
QUARANTINE_CSV = Path("data/clean/quarantine.csv")


def quarantine_reasons(manifest: pd.DataFrame, drop_exact_duplicates: bool) -> pd.DataFrame:
    """One row per dropped file: (path, label, reason, detail). The first reason found wins."""
    decodes = manifest["decodes"]
    dropped = []
    for row in manifest[~decodes].itertuples():
        reason = "not_an_image" if not row.format else "undecodable"
        dropped.append((row.path, row.label, reason, row.error))
    for row in manifest[decodes & (manifest["label"] == "")].itertuples():
        dropped.append((row.path, row.label, "no_class_folder", "file lies directly under data.root"))
    if drop_exact_duplicates:
        usable = manifest[decodes & (manifest["label"] != "")]
        firsts = usable.drop_duplicates("sha256").set_index("sha256")["path"]
        for row in usable[usable.duplicated("sha256")].itertuples():
            dropped.append((row.path, row.label, "exact_duplicate", f"same bytes as {firsts[row.sha256]}"))
    return pd.DataFrame(dropped, columns=["path", "label", "reason", "detail"])


def run(params: Params, workdir: Path = Path(".")) -> dict:
    if not (workdir / MANIFEST_FILE).is_file():
        raise UserError(f"{MANIFEST_FILE} not found; run the validate stage first (dvc repro validate)")
    manifest = read_manifest(workdir / MANIFEST_FILE)
    quarantine = quarantine_reasons(manifest, params.clean.drop_exact_duplicates)
    kept = manifest[~manifest["path"].isin(quarantine["path"])]
    if kept["label"].nunique() < 2:
        raise UserError("fewer than two classes have usable images after cleaning; see data/clean/quarantine.csv")
    kept = kept.assign(file=[str(Path(params.data.root) / p) for p in kept["path"]])
    (workdir / KEPT_CSV).parent.mkdir(parents=True, exist_ok=True)
    kept[["path", "label", "file", "sha256"]].to_csv(workdir / KEPT_CSV, index=False)
    quarantine.to_csv(workdir / QUARANTINE_CSV, index=False)
    return {
        "kept": len(kept),
        "quarantined": len(quarantine),
        "reasons": quarantine["reason"].value_counts().to_dict(),
    }


if __name__ == "__main__":
    run_stage("clean", run)
