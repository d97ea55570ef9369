"""Monitor stage: Evidently drift report of the service's logged traffic against the validation images.

Reads the model bundle (models/), the split manifests (data/split/val.csv, test.csv) and the
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
import math
import warnings
from pathlib import Path

import pandas as pd
from evidently import DataDefinition, Dataset, Report, Run
from evidently.presets import DataDriftPreset
from tqdm import tqdm

from tasks.bundle import Bundle, load_bundle
from tasks.cli import run_stage
from tasks.config import Params, UserError
from tasks.features import FEATURE_COLUMNS, PREDICTION_COLUMNS, profile_images
from tasks.images import open_rgb
from tasks.train import MODEL_DIR, pick_device, read_split

REPORT_DIR = Path("reports/monitor")
REFERENCE_CSV = REPORT_DIR / "reference.csv"
CURRENT_CSV = REPORT_DIR / "current.csv"
DRIFT_HTML = REPORT_DIR / "drift.html"
DRIFT_JSON = REPORT_DIR / "drift.json"
DRIFT_RAW_JSON = REPORT_DIR / "drift_raw.json"
BATCH_SIZE = 64

# Confidence is compared too: a falling confidence is often the first sign of unfamiliar inputs.
NUMERICAL_COLUMNS = FEATURE_COLUMNS + ["confidence"]
CATEGORICAL_COLUMNS = ["prediction"]
DRIFT_COLUMNS = NUMERICAL_COLUMNS + CATEGORICAL_COLUMNS
LOGGED_COLUMNS = FEATURE_COLUMNS + PREDICTION_COLUMNS


def open_split_image(workdir: Path, file: str):
    """Decode one listed image; a file that vanished since the split means the manifests are stale."""
    path = workdir / file
    if not path.is_file():
        raise UserError(f"{file} is listed in data/split but missing; re-run the pipeline (dvc repro)")
    return open_rgb(path)


def profile_split(bundle: Bundle, workdir: Path, split: pd.DataFrame, desc: str) -> pd.DataFrame:
    """Feature rows of every image of a split, computed in batches exactly as the service does."""
    rows = []
    with tqdm(total=len(split), desc=desc, unit="img", leave=False, disable=None) as bar:
        for start in range(0, len(split), BATCH_SIZE):
            files = split["file"].iloc[start:start + BATCH_SIZE].tolist()
            rows.extend(profile_images(bundle, [open_split_image(workdir, f) for f in files]))
            bar.update(len(files))
    profile = pd.DataFrame(rows, columns=LOGGED_COLUMNS)
    return profile.assign(label=split["label"].to_numpy(), file=split["file"].to_numpy())


def traffic_files(traffic_dir: Path) -> list[Path]:
    """Data logs below traffic_dir, rotated ones (`data.0.log.2024-05-01`) included.

    `bentoml.monitor` also writes `<name>/schema/schema.N.log`, which describes columns and holds
    no rows, so schema folders are left out.
    """
    if not traffic_dir.is_dir():
        return []
    return sorted(
        path
        for path in traffic_dir.rglob("*")
        if path.is_file() and (path.suffix == ".log" or ".log." in path.name) and "schema" not in path.parts
    )


def parse_traffic_line(line: str) -> dict | None:
    """One logged image as a row of LOGGED_COLUMNS, or None when the line is not a usable record."""
    try:
        record = json.loads(line)
    except ValueError:
        return None
    if not isinstance(record, dict) or any(col not in record for col in LOGGED_COLUMNS):
        return None
    row = {}
    for col in FEATURE_COLUMNS + ["confidence"]:
        value = record[col]
        if isinstance(value, bool) or not isinstance(value, (int, float)) or not math.isfinite(value):
            return None
        row[col] = float(value)
    if record["prediction"] in (None, ""):
        return None
    row["prediction"] = str(record["prediction"])
    return row


def read_traffic(traffic_dir: Path) -> tuple[pd.DataFrame, int]:
    """All logged rows below traffic_dir, and the number of lines that were skipped as unusable."""
    rows, skipped = [], 0
    for path in traffic_files(traffic_dir):
        with path.open(encoding="utf-8", errors="replace") as lines:
            for line in lines:
                if not line.strip():
                    continue
                row = parse_traffic_line(line)
                if row is None:
                    skipped += 1
                else:
                    rows.append(row)
    return pd.DataFrame(rows, columns=LOGGED_COLUMNS), skipped


def drift_snapshot(reference: pd.DataFrame, current: pd.DataFrame, drift_share: float) -> Run:
    """Run Evidently's DataDriftPreset on the drift columns, with its per-column and dataset tests."""
    definition = DataDefinition(numerical_columns=NUMERICAL_COLUMNS, categorical_columns=CATEGORICAL_COLUMNS)
    report = Report([DataDriftPreset(columns=DRIFT_COLUMNS, drift_share=drift_share)], include_tests=True)
    with warnings.catch_warnings():
        # Constant columns (every image the same width) make numpy warn while Evidently plots them.
        warnings.simplefilter("ignore", RuntimeWarning)
        return report.run(
            Dataset.from_pandas(current[DRIFT_COLUMNS], data_definition=definition),
            Dataset.from_pandas(reference[DRIFT_COLUMNS], data_definition=definition),
        )


def summarize_drift(raw: dict) -> dict:
    """The verdicts Evidently reached, read from `Snapshot.dict()`: per column and for the dataset.

    Per-column drift comes from Evidently's own tests (a p-value below, or a distance above, the
    method's threshold), so the summary never re-implements a decision rule.
    """
    failed = {t["metric_config"]["metric_id"] for t in raw["tests"] if t["status"] == "FAIL"}
    columns, dataset = {}, None
    for metric in raw["metrics"]:
        config = metric["config"]
        if config["type"].endswith(":ValueDrift"):
            columns[config["column"]] = {
                "method": config["method"],
                "score": float(metric["value"]),
                "threshold": float(config["threshold"]),
                "drifted": metric["id"] in failed,
            }
        elif config["type"].endswith(":DriftedColumnsCount"):
            dataset = metric
    if dataset is None:
        raise RuntimeError("Evidently's DataDriftPreset returned no DriftedColumnsCount metric")
    return {
        "drifted_columns": [col for col, result in columns.items() if result["drifted"]],
        "drifted_count": int(dataset["value"]["count"]),
        "columns_checked": len(columns),
        "drift_share_observed": round(float(dataset["value"]["share"]), 4),
        "dataset_drift": dataset["id"] in failed,
        "columns": columns,
    }


def current_window(params: Params, workdir: Path, bundle: Bundle) -> tuple[pd.DataFrame, dict]:
    """Logged traffic when there is enough of it, else the test split profiled like the reference."""
    traffic, skipped = read_traffic(workdir / params.monitor.traffic_dir)
    info = {"traffic_rows": len(traffic), "skipped_lines": skipped}
    if len(traffic) >= params.monitor.min_traffic:
        return traffic, {"source": "traffic", **info}
    test = profile_split(bundle, workdir, read_split(workdir, "test"), "profile test")
    return test, {"source": "test_split", **info}


def write_reports(workdir: Path, snapshot: Run, summary: dict) -> None:
    """Evidently's HTML and raw JSON next to the compact summary."""
    snapshot.save_html(str(workdir / DRIFT_HTML))  # Evidently writes nothing unless given a str path
    (workdir / DRIFT_RAW_JSON).write_text(snapshot.json())
    (workdir / DRIFT_JSON).write_text(json.dumps(summary, indent=2))


def run(params: Params, workdir: Path = Path(".")) -> dict:
    """Profile the validation images, pick the current window, write the drift reports, return the verdict."""
    val = read_split(workdir, "val")
    bundle = load_bundle(workdir / MODEL_DIR, device=pick_device(params.train.device))
    (workdir / REPORT_DIR).mkdir(parents=True, exist_ok=True)

    reference = profile_split(bundle, workdir, val, "profile val")
    reference.to_csv(workdir / REFERENCE_CSV, index=False)
    current, window = current_window(params, workdir, bundle)
    current.to_csv(workdir / CURRENT_CSV, index=False)

    snapshot = drift_snapshot(reference, current, params.monitor.drift_share)
    drift = summarize_drift(snapshot.dict())
    summary = {
        **window,
        "reference_rows": len(reference),
        "current_rows": len(current),
        "drift_share_threshold": params.monitor.drift_share,
        **drift,
    }
    write_reports(workdir, snapshot, summary)
    return {key: summary[key] for key in (
        "source", "reference_rows", "current_rows", "skipped_lines",
        "dataset_drift", "drift_share_observed", "drifted_columns",
    )}


if __name__ == "__main__":
    run_stage("monitor", run)
