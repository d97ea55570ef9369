"""The housekeeping flow on its own real Prefect server: it removes exactly what ops.retention lets go.

Its own server, because pruning deletes every old run but retrains, and other modules' runs on the
session server are theirs to read.
"""
from __future__ import annotations

import os
import subprocess
import sys
import time
from datetime import datetime, timedelta, timezone
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
import yaml
from prefect import flow
from prefect.client.orchestration import get_client
from prefect.client.schemas.filters import LogFilter, LogFilterFlowRunId
from prefect.exceptions import ObjectNotFound

from flows.housekeeping import housekeeping
from flows.settings import FlowParams
from tasks.common.config import load_params
from tasks.common.paths import POINTER, STORE_ARCHIVES
from tasks.model.registry import archive_path, write_pointer
from tasks.monitoring.drift import drift_snapshot
from tasks.monitoring.features import FEATURE_COLUMNS
from tasks.monitoring.windows import read_windows, record_window, report_dir
from tasks.monitoring.workspace import add_window, open_project
from tests.conftest import PROJECT_ROOT, running_prefect_server

pytestmark = [pytest.mark.ops, pytest.mark.slow(reason="its own Prefect server, Evidently snapshots and dvc add")]

DAY = timedelta(days=1)


@flow(name="monitor", flow_run_name="monitor-window")
def a_monitor_run():
    return "judged"


@flow(name="review-sync", flow_run_name="review-sync")
def a_review_run():
    return "synced"


@flow(name="image-classification-pipeline")
def a_pipeline_run():
    return "trained"


@flow(name="retrain", flow_run_name="retrain-by-schedule")
def a_retrain_run():
    return a_pipeline_run()


def run_id(flow_fn) -> str:
    return flow_fn(return_state=True).state_details.flow_run_id


def exists(flow_run_id) -> bool:
    with get_client(sync_client=True) as client:
        try:
            client.read_flow_run(flow_run_id)
            return True
        except ObjectNotFound:
            return False


def written(path: Path, when: datetime) -> Path:
    """A file last written at `when`."""
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text("{}\n")
    os.utime(path, (when.timestamp(), when.timestamp()))
    return path


def features(rows: int, seed: int) -> pd.DataFrame:
    rng = np.random.default_rng(seed)
    frame = pd.DataFrame(rng.normal(size=(rows, len(FEATURE_COLUMNS))), columns=FEATURE_COLUMNS)
    return frame.assign(confidence=rng.uniform(0.5, 1, rows), prediction=rng.choice(["cat", "dog"], rows))


def judged_window(ops_home: Path, end: datetime, reference: pd.DataFrame, params) -> dict:
    """A window as the monitor leaves it: report folder, Evidently snapshot, history line."""
    snapshot = drift_snapshot(reference, features(40, int(end.timestamp())), params.monitor, timestamp=end)
    folder = report_dir(ops_home, end)
    folder.mkdir(parents=True)
    (folder / "drift.json").write_text("{}")
    shown_at = add_window(ops_home / "evidently", snapshot)
    window = {"start": None, "end": end.isoformat(), "status": "no drift", "dashboard": f"http://h:1{shown_at}"}
    record_window(ops_home, window)
    return window


def entry(tag: str) -> dict:
    return {"model": tag, "bento": tag.replace("image-classifier", "image_classifier")}


@pytest.fixture(scope="module")
def project(tmp_path_factory):
    root = tmp_path_factory.mktemp("kept")
    raw = yaml.safe_load((PROJECT_ROOT / "params.yaml").read_text())
    raw["ops"]["retention"].update(flow_run_days=30, traffic_days=14, windows=2, promotions=1)
    (root / "params.yaml").write_text(yaml.safe_dump(raw, sort_keys=False))
    subprocess.run(["git", "init", "-q"], cwd=root, check=True)
    subprocess.run([sys.executable, "-m", "dvc", "init", "-q"], cwd=root, check=True)
    with running_prefect_server(tmp_path_factory.mktemp("prefect")):
        yield root


def test_housekeeping_removes_exactly_what_retention_lets_go(project: Path):
    params = load_params(project / "params.yaml", FlowParams)
    now = datetime.now(timezone.utc)
    ops_home = project / params.ops.home

    old_monitor, old_review, old_retrain = run_id(a_monitor_run), run_id(a_review_run), run_id(a_retrain_run)
    time.sleep(0.5)
    cutoff = datetime.now(timezone.utc)  # housekeeping "30 days later" deletes what ended before this
    time.sleep(0.5)
    new_monitor = run_id(a_monitor_run)
    with get_client(sync_client=True) as client:  # the retrain's pipeline subflow: its lineage
        subflows = [r.id for r in client.read_flow_runs(limit=50, offset=0, sort="START_TIME_DESC")
                    if r.parent_task_run_id is not None]
    assert len(subflows) == 1

    # Traffic: the service's folders as bentoml.monitor writes them.
    logs = project / params.monitor.traffic_dir / "image_classifier"
    schema = written(logs / "schema" / "schema.0.log", now - 40 * DAY)
    rotated_old = written(logs / "data" / "data.0.log.2026-10-01_00-00-00", now - 20 * DAY)
    live_old = written(logs / "data" / "data.1.log", now - 20 * DAY)  # a quiet worker's live file: never deleted

    # Windows: four judged ones (keep two), a folder a crash left behind, one being written now.
    reference = features(200, 0)
    open_project(ops_home / "evidently")
    ends = [now - timedelta(hours=h) for h in (5, 4, 3, 2)]
    windows = [judged_window(ops_home, end, reference, params) for end in ends]
    # Rotated, over traffic_days old by as_of, but written after the last window: the next one reads it.
    rotated_needed = written(logs / "data" / "data.0.log.2026-11-30_00-00-00", ends[-1] + timedelta(minutes=5))
    leftover = report_dir(ops_home, now - timedelta(hours=6))
    leftover.mkdir(parents=True)
    in_progress = report_dir(ops_home, now)
    in_progress.mkdir(parents=True)

    # deploy/store: production, two predecessors (keep one), an unknown archive, one being exported.
    write_pointer(project / POINTER, {"current": entry("image-classifier:c"),
                                      "previous": [entry("image-classifier:p1"), entry("image-classifier:p2"), None]})
    archives = {tag: archive_path(f"image-classifier:{tag}", project / STORE_ARCHIVES) for tag in
                ("c", "p1", "p2", "stray", "exporting")}
    for tag, path in archives.items():
        written(path, now if tag == "exporting" else now - 3 * DAY)

    result = housekeeping(repo_dir=str(project), as_of=cutoff + 30 * DAY)

    assert result == {"flow runs": 2, "traffic logs": 1, "monitor windows": 2, "archived Bentos": 2}
    assert not exists(old_monitor) and not exists(old_review)
    assert exists(old_retrain) and exists(subflows[0]) and exists(new_monitor)
    assert not rotated_old.exists() and rotated_needed.exists() and live_old.exists() and schema.exists()

    assert read_windows(ops_home) == windows[2:]
    reports = sorted(p.name for p in (ops_home / "monitor" / "windows").iterdir())
    assert reports == sorted([report_dir(ops_home, e).name for e in ends[2:]] + [in_progress.name])
    snapshots = sorted(p.stem for p in (ops_home / "evidently").glob("*/snapshots/*.json"))
    assert snapshots == sorted(w["dashboard"].rsplit("/", 1)[-1] for w in windows[2:])

    assert sorted(p for p in archives if archives[p].exists()) == ["c", "exporting", "p1"]
    tracked = yaml.safe_load((project / "deploy" / "store.dvc").read_text())
    assert tracked["outs"][0]["nfiles"] == 3  # dvc add-ed again: the pruned folder is what DVC versions

    deadline = time.monotonic() + 30  # the deleted runs' logs go with them (a server task)
    with get_client(sync_client=True) as client:
        while client.read_logs(LogFilter(flow_run_id=LogFilterFlowRunId(any_=[old_monitor]))):
            assert time.monotonic() < deadline, "the deleted run's logs stayed"
            time.sleep(0.5)

    assert housekeeping(repo_dir=str(project), as_of=cutoff + 30 * DAY) == {
        "flow runs": 0, "traffic logs": 0, "monitor windows": 0, "archived Bentos": 0}  # nothing more to do
