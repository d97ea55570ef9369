"""Label-quality stage: labels that are probably wrong, found by cross-validated confident learning.

Reads data/split/{train,val,test}.csv and writes
    reports/labels/suspects.csv    suspect labels, most likely wrong first: file, given label,
                                   suggested label, label quality score (tasks/labels/issues.py)
    reports/labels/suspects.html   each suspect image with both labels (tasks/labels/page.py)
    reports/labels/summary.json    the share of suspect labels and the out-of-fold accuracy (dvc metrics)
Every image is judged by a model that never saw it (tasks/labels/folds.py). Labels are never
changed here: a person reviews the suspects (docs/labelling.md). A share of suspects above
labels.warn_share is a warning; above labels.max_share the stage stops the pipeline once the
reports are written, like a failed validation.
"""
from __future__ import annotations

import json
import sys
import time
from pathlib import Path

import numpy as np
import pandas as pd

from tasks.common.cli import run_stage
from tasks.common.config import Params, UserError
from tasks.common.paths import SPLITS, SUSPECTS_CSV, split_csv
from tasks.data.splits import class_indices, read_split
from tasks.labels.folds import out_of_fold
from tasks.labels.issues import suspects
from tasks.labels.page import suspects_html
from tasks.model.backbones import resolve_inputs

# Never labels.review_dir (the review flow's): editing it must not re-run five fine-tunes.
PARAMS = ["labels.folds", "labels.strategy", "labels.epochs", "labels.method", "labels.rank_by", "labels.warn_share",
          "labels.max_share", "labels.shown", "train"]

REPORT_DIR = SUSPECTS_CSV.parent
SUMMARY_JSON = REPORT_DIR / "summary.json"
PAGE = REPORT_DIR / "suspects.html"


def run(params: Params, workdir: Path = Path(".")) -> dict:
    start, p = time.perf_counter(), params.labels
    frames = {name: read_split(workdir, name).assign(split_name=name) for name in SPLITS}
    labels = sorted(frames["train"]["label"].unique())
    labelled = pd.concat([frames["train"], frames["val"]], ignore_index=True)
    test = frames["test"][frames["test"]["label"].isin(labels)].reset_index(drop=True)
    data_files = [workdir / split_csv(name) for name in frames]
    found = out_of_fold(resolve_inputs(params.train), p, workdir, labelled, test, labels, data_files)

    judged = pd.concat([labelled, test], ignore_index=True)
    probs = np.concatenate([found["oof"], found["test"]])
    table = suspects(judged, probs, labels, p)
    oof_correct = probs.argmax(1) == class_indices(judged, labels)
    summary = {
        "images": len(judged), "suspects": len(table), "suspect_share": round(len(table) / len(judged), 4),
        "suspects_per_split": {name: int((table["split"] == name).sum()) for name in frames},
        "oof_accuracy": round(float(oof_correct[:len(labelled)].mean()), 4),
        "test_accuracy_fold_mean": round(float(oof_correct[len(labelled):].mean()), 4) if len(test) else None,
        "folds": p.folds, "strategy": p.strategy, "epochs": p.epochs, "method": p.method, "rank_by": p.rank_by,
        "seconds": round(time.perf_counter() - start, 1),
    }
    out = workdir / REPORT_DIR
    out.mkdir(parents=True, exist_ok=True)
    table.to_csv(workdir / SUSPECTS_CSV, index=False)
    (workdir / PAGE).write_text(suspects_html(table, summary, found["folds"], workdir, p.shown, str(SUSPECTS_CSV)))
    (workdir / SUMMARY_JSON).write_text(json.dumps({**summary, "per_fold": found["folds"]}, indent=2))

    share = summary["suspect_share"]
    if share > p.max_share:
        raise UserError(f"{len(table)} of {len(judged)} labels ({share:.1%}) look wrong, above labels.max_share "
                        f"({p.max_share:.0%}); review {PAGE} (or raise labels.max_share if that is expected)")
    if share > p.warn_share:
        print(f"label_quality: warning: {share:.1%} of the labels look wrong (labels.warn_share {p.warn_share:.0%}); "
              f"the likeliest first in {PAGE}", file=sys.stderr)
    return summary


if __name__ == "__main__":
    run_stage("label_quality", run)
