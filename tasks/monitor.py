"""Monitor stage: Evidently drift report of the service's logged traffic against the validation images.

Reads the model bundle (models/) in its serving runtime (runtime/), the split manifests (data/split/val.csv, test.csv) and the
service's request logs (monitor.traffic_dir, JSON lines written by `bentoml.monitor`), and writes
    reports/monitor/reference.csv   feature rows of every validation image (the reference profile)
    reports/monitor/current.csv     the rows compared with it (logged traffic, or the test split)
    reports/monitor/drift.html      Evidently's data drift report, self-contained, opens offline
    reports/monitor/drift.json      compact summary that flows read (source, drifted columns, ...)
    reports/monitor/drift_raw.json  Evidently's own metrics and tests, for anyone who wants more
With fewer than monitor.min_traffic logged images the test split stands in for traffic, so the
report always compares two real samples and a fresh deployment still gets a baseline report.
"""
from __future__ import annotations

import json
from pathlib import Path

import pandas as pd
from evidently import Run

from tasks.common.cli import run_stage
from tasks.common.config import Params
from tasks.common.paths import MODEL_DIR, RUNTIME_DIR
from tasks.data.splits import read_split
from tasks.model.device import pick_device
from tasks.model.served import Classifier, load_classifier
from tasks.monitoring.drift import drift_snapshot, summarize_drift
from tasks.monitoring.features import profile_split
from tasks.monitoring.traffic import read_traffic

PARAMS = ["monitor", "inference.device"]

REPORT_DIR = Path("reports/monitor")
REFERENCE_CSV = REPORT_DIR / "reference.csv"
CURRENT_CSV = REPORT_DIR / "current.csv"
DRIFT_HTML = REPORT_DIR / "drift.html"
DRIFT_JSON = REPORT_DIR / "drift.json"
DRIFT_RAW_JSON = REPORT_DIR / "drift_raw.json"


def current_window(params: Params, workdir: Path, classifier: Classifier) -> tuple[pd.DataFrame, dict]:
    """Logged traffic when there is enough of it, else the test split profiled like the reference."""
    traffic, skipped = read_traffic(workdir / params.monitor.traffic_dir)
    info = {"traffic_rows": len(traffic), "skipped_lines": skipped}
    if len(traffic) >= params.monitor.min_traffic:
        return traffic, {"source": "traffic", **info}
    test = profile_split(classifier, workdir, read_split(workdir, "test"), "profile test")
    return test, {"source": "test_split", **info}


def write_reports(workdir: Path, snapshot: Run, summary: dict) -> None:
    """Evidently's HTML and raw JSON next to the compact summary."""
    snapshot.save_html(str(workdir / DRIFT_HTML))  # Evidently writes nothing unless given a str path
    (workdir / DRIFT_RAW_JSON).write_text(snapshot.json())
    (workdir / DRIFT_JSON).write_text(json.dumps(summary, indent=2))


def run(params: Params, workdir: Path = Path(".")) -> dict:
    """Profile the validation images, pick the current window, write the drift reports, return the verdict."""
    val = read_split(workdir, "val")
    # In the runtime the model will be served with: int8 moves the embeddings the traffic log holds.
    device = pick_device(params.inference.device, setting="inference.device")
    classifier = load_classifier(workdir / MODEL_DIR, workdir / RUNTIME_DIR, device=str(device))
    (workdir / REPORT_DIR).mkdir(parents=True, exist_ok=True)

    reference = profile_split(classifier, workdir, val, "profile val")
    reference.to_csv(workdir / REFERENCE_CSV, index=False)
    current, window = current_window(params, workdir, classifier)
    current.to_csv(workdir / CURRENT_CSV, index=False)

    snapshot = drift_snapshot(reference, current, params.monitor)
    drift = summarize_drift(snapshot.dict())
    summary = {
        **window,
        "reference_rows": len(reference),
        "current_rows": len(current),
        "detector": params.monitor.detector,
        "runtime": classifier.runtime + (f": {classifier.fallback}" if classifier.fallback else ""),
        **drift,
    }
    write_reports(workdir, snapshot, summary)
    return {key: summary[key] for key in (
        "source", "runtime", "reference_rows", "current_rows", "skipped_lines",
        "dataset_drift", "verdict", "drifted_columns",
    )}


if __name__ == "__main__":
    run_stage("monitor", run)
