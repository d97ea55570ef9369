"""Validate stage: a manifest of every file under data.root, checked with Great Expectations.

Reads data.root (never writes there) and writes:
  data/manifest.csv                        one row per file (tasks/data/manifest.py), with duplicate groups
  reports/validate/validation.json         result per expectation and images per class
  reports/validate/summary.html            self-contained page for people (no external assets), with
                                           thumbnails of every duplicate group read from data.root
  reports/validate/data_docs/index.html    Great Expectations Data Docs (self-contained: tasks/data/data_docs_offline.py)

Every expectation comes from params.yaml (tasks/data/expectations.py). One that fails stops the
pipeline with a one-screen summary once the reports are written (tasks/data/validation_report.py),
unless it is listed in validate.warn_only.
"""
from __future__ import annotations

import sys
import time
from pathlib import Path

import pandas as pd

from tasks.common.cli import run_stage
from tasks.common.config import Params, UserError
from tasks.common.paths import MANIFEST_CSV
from tasks.data.duplicates import duplicate_groups
from tasks.data.expectations import run_expectations
from tasks.data.layout import check_layout, check_outputs_outside, resolve_root
from tasks.data.manifest import NOT_FOLLOWED, build_manifest, class_counts, write_manifest
from tasks.data.validation_report import build_report, console_summary, failure_message, write_reports

PARAMS = ["data.root", "validate"]

REPORT_DIR = Path("reports/validate")


def file_table(manifest: pd.DataFrame) -> pd.DataFrame:
    """The rows the file expectations judge, with derived columns.

    Hidden files and symlinks that are not followed are left out: they are recorded in the
    manifest and quarantined by the clean stage, but are not part of the data set's quality.
    """
    rows = manifest[~manifest["hidden"] & ~manifest["problem"].isin(NOT_FOLLOWED)].copy()
    rows["aspect_ratio"] = (rows["width"] / rows["height"]).astype("float64").round(4)
    labelled = rows[rows["decodes"] & (rows["label"] != "")]
    classes = labelled.groupby("duplicate_group")["label"].agg(lambda s: ", ".join(sorted(set(s))))
    rows["group_classes"] = rows["duplicate_group"].map(classes).fillna("")
    rows["classes_in_group"] = rows["group_classes"].map(lambda c: len(c.split(", ")) if c else 0)
    # Within a group, the first file by path is the original; every other file is a copy.
    in_group = rows[rows["duplicate_group"] >= 0]
    rows["is_copy"] = in_group.duplicated("duplicate_group").reindex(rows.index, fill_value=False)
    rows["original"] = rows["duplicate_group"].map(in_group.groupby("duplicate_group")["path"].first())
    return rows.reset_index(drop=True)


def class_table(counts: pd.DataFrame) -> pd.DataFrame:
    """Class counts with the imbalance of each class: largest class / this class (empty: null)."""
    images = counts["images"].astype("float64")
    return counts.assign(imbalance=(images.max() / images.where(images > 0)).round(3))


def run(params: Params, workdir: Path = Path(".")) -> dict:
    """Build the manifest, run the expectations, write the reports; raise on blocking failures."""
    start, p = time.perf_counter(), params.validate_
    root = resolve_root(params, workdir)
    manifest_path, out_dir = workdir / MANIFEST_CSV, workdir / REPORT_DIR
    entries, classes = check_layout(root)
    check_outputs_outside(root, [manifest_path, out_dir])

    manifest, stats = build_manifest(root, entries, p.max_pixels, workdir)
    manifest["duplicate_group"] = duplicate_groups(manifest, p.near_duplicate_distance, root)
    write_manifest(manifest, manifest_path)
    files, counts = file_table(manifest), class_table(class_counts(manifest, classes))

    results = run_expectations(files, counts, p, out_dir / "data_docs")
    report = build_report(params, manifest, files, counts, results, out_dir / "data_docs")
    write_reports(out_dir, report, manifest, files, root)

    print(console_summary(report, stats, time.perf_counter() - start), file=sys.stderr)
    if report["failed_blocking"]:
        raise UserError(failure_message(report, REPORT_DIR / "summary.html"))
    keys = ["files", "classes", "decodable_share", "duplicate_groups", "failed_blocking", "failed_warning"]
    return {**{key: report[key] for key in keys}, "read": stats["read"], "cached": stats["cached"]}


if __name__ == "__main__":
    run_stage("validate", run)
