"""The monitor deployment's flow: drift of one window of the service's logged traffic.

Each run judges the traffic logged since the previous window (or the last ops.monitor.window_minutes)
against the validation images, profiled by the production model that served the traffic:
    too few images (monitor.min_traffic)  ->  recorded as "not enough traffic", nothing else
    otherwise                             ->  Evidently report of the window, a snapshot in the
                                              Evidently workspace (dashboard), and on dataset drift
                                              an imgclf.drift.detected event that starts a retrain
A drifted window's least sure images (kept by the service) are sent to Label Studio for review at once.
Every window goes to <ops.home>/monitor/windows.jsonl and to the `monitor-window` artifact.
"""
from __future__ import annotations

import json
import shutil
from datetime import datetime, timezone
from pathlib import Path

import pandas as pd
from prefect import flow, get_run_logger
from prefect.artifacts import create_markdown_artifact
from prefect.states import Failed

from flows.events import announce_drift
from flows.review import send_for_review
from flows.settings import FlowParams
from tasks.common.config import UserError, load_params
from tasks.common.files import sha256
from tasks.common.paths import MODEL_DIR, POINTER, STORE_ARCHIVES, split_csv
from tasks.data.splits import read_split
from tasks.model.registry import check_in_store, model_dir, read_pointer
from tasks.model.served import load_classifier
from tasks.monitoring.drift import drift_snapshot, summarize_drift
from tasks.monitoring.features import profile_split
from tasks.monitoring.traffic import read_traffic
from tasks.monitoring.windows import (
    DRIFT,
    NO_DRIFT,
    NOT_ENOUGH_TRAFFIC,
    next_window,
    record_window,
    report_dir,
    snapshot_id,
)
from tasks.monitoring.workspace import add_window, remove_windows

WINDOW_KEYS = ("verdict", "drifted_columns", "drifted_count", "columns_checked", "drift_share_observed", "dataset_drift",
               "mean_confidence", "prediction_mix")


def serving_model(root: Path) -> tuple[str, Path]:
    """The production model's tag and bundle folder in the BentoML store (it logged the traffic),
    else the pipeline's latest bundle when nothing has been promoted yet."""
    entry = read_pointer(root / POINTER)["current"]
    if entry is None:
        return str(MODEL_DIR), root / MODEL_DIR
    check_in_store(entry["model"], archives=root / STORE_ARCHIVES)
    return entry["model"], model_dir(entry["model"])


def reference_profile(root: Path, ops_home: Path, model: str, bundle_dir: Path) -> pd.DataFrame:
    """Feature rows of the validation images under this model, computed once per model and split
    (the model is loaded only then)."""
    val_csv = root / split_csv("val")
    if not val_csv.is_file():
        raise UserError(f"{val_csv} not found; run the pipeline (retrain) before monitoring")
    name = f"{model.replace(':', '-').replace('/', '-')}-{sha256(val_csv)[:12]}.csv"
    cache = ops_home / "monitor" / "reference" / name
    if cache.is_file():  # labels stay text: digits' "7" must not come back as the number 7
        return pd.read_csv(cache, dtype={"prediction": str})
    classifier = load_classifier(bundle_dir)
    if classifier.fallback:
        get_run_logger().warning("monitor: %s: %s", model, classifier.fallback)
    profile = profile_split(classifier, root, read_split(root, "val"), "profile val")
    cache.parent.mkdir(parents=True, exist_ok=True)
    profile.to_csv(cache, index=False)
    return profile


def judge_window(params: FlowParams, root: Path, ops_home: Path, current: pd.DataFrame, window: dict) -> dict:
    """Evidently drift of the window against the reference: report files, workspace snapshot, verdict."""
    end = datetime.fromisoformat(window["end"])
    model, bundle_dir = serving_model(root)
    reference = reference_profile(root, ops_home, model, bundle_dir)
    snapshot = drift_snapshot(reference, current, params.monitor, timestamp=end)
    summary = summarize_drift(snapshot.dict())
    folder = report_dir(ops_home, end)
    partial = partial_report_dir(folder)  # renamed once complete: a full disk leaves no half report
    shutil.rmtree(partial, ignore_errors=True)  # left by a run killed while writing
    partial.mkdir(parents=True)
    (partial / "drift.json").write_text(json.dumps(summary, indent=2))
    # The self-contained report is 4.5 MB (Evidently's scripts in each): only for a drifted window, the
    # one a person opens from the alert; the UI draws every window's report from its snapshot.
    report = partial / ("drift.html" if summary["dataset_drift"] else "drift.json")
    if summary["dataset_drift"]:
        snapshot.save_html(str(report))  # Evidently writes nothing unless given a str path
    partial.rename(folder)
    shown_at = add_window(ops_home / "evidently", snapshot, name=f"window to {end:%Y-%m-%d %H:%M} UTC")
    return {
        **window,
        "status": DRIFT if summary["dataset_drift"] else NO_DRIFT,
        "model": model,
        "detector": params.monitor.detector,
        "reference_images": len(reference),
        **{key: summary[key] for key in WINDOW_KEYS if key in summary},
        "report": str(folder / report.name),
        "dashboard": f"http://{params.ops.host}:{params.ops.evidently_port}{shown_at}",
    }


def partial_report_dir(folder: Path) -> Path:
    return folder.with_name(f".{folder.name}.partial")


def discard_window(ops_home: Path, window: dict) -> None:
    """Remove whatever of a window was written before writing failed: report folder, snapshot."""
    folder = report_dir(ops_home, datetime.fromisoformat(window["end"]))
    for path in (folder, partial_report_dir(folder)):
        shutil.rmtree(path, ignore_errors=True)
    if sid := snapshot_id(window):
        remove_windows(ops_home / "evidently", [sid])


def publish_window(window: dict) -> None:
    lines = [f"### Monitor window: {window['status']}", "", "| | |", "|---|---|",
             *(f"| {key} | {value} |" for key, value in window.items())]
    create_markdown_artifact(key="monitor-window", markdown="\n".join(lines),
                             description=f"{window['status']}: {window['images']} images up to {window['end']}")


@flow(name="monitor", flow_run_name="monitor-window")
def monitor(repo_dir: str = ".", window_minutes: int | None = None):
    """Judge the next window of logged traffic; emit a drift event when it drifted."""
    root, logger = Path(repo_dir).resolve(), get_run_logger()
    window = None
    try:
        params = load_params(root / "params.yaml", FlowParams)
        ops_home = root / params.ops.home
        minutes = params.ops.monitor.window_minutes if window_minutes is None else window_minutes
        start, end = next_window(ops_home, datetime.now(timezone.utc), minutes)
        current, skipped = read_traffic(root / params.monitor.traffic_dir, since=start, until=end)
        window = {"start": start.isoformat() if start else None, "end": end.isoformat(),
                  "images": len(current), "skipped_lines": skipped}
        if len(current) < params.monitor.min_traffic:
            window = {**window, "status": NOT_ENOUGH_TRAFFIC, "min_traffic": params.monitor.min_traffic}
        else:
            window = judge_window(params, root, ops_home, current, window)
        record_window(ops_home, window)
    except UserError as err:
        logger.error("monitor: %s", err)
        return Failed(message=str(err))
    except OSError as err:  # a full disk, a read-only mount
        if window is not None:
            discard_window(ops_home, window)
        message = (f"the window could not be written under {ops_home} ({err.strerror or err}); nothing of it "
                   "was kept and the next window judges its traffic; free space there")
        logger.error("monitor: %s", message)
        return Failed(message=message)
    publish_window(window)
    logger.info("window %s .. %s: %d images, %s%s", window["start"] or "start", window["end"], window["images"],
                window["status"], f" ({', '.join(window['drifted_columns'])})" if window["status"] == DRIFT else "")
    if window["status"] == DRIFT:
        announce_drift(window)
        ask_for_labels(root, params, window, logger)
    return window


def ask_for_labels(root: Path, params: FlowParams, window: dict, logger) -> None:
    """A drifted window's least sure served images go to Label Studio at once: a retrain learns from
    drift only once people have labelled what drifted (flows/review.py)."""
    if params.ops.review.drift_images == 0:
        return
    since = datetime.fromisoformat(window["start"]) if window["start"] else None
    try:
        added = send_for_review(root, params, since=since, limit=params.ops.review.drift_images)
    except UserError as err:
        logger.warning("drift: the window's least sure images were not sent for review (%s); the review "
                       "deployment sends them on its next run", err)
        return
    logger.info("drift: %d of the window's least sure images sent for review in Label Studio", added)
