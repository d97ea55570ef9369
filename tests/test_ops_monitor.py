"""The monitor deployment's flow on a real Prefect server: one traffic window at a time, recorded,
added to the Evidently workspace, and a drift event only when the window drifted."""
from __future__ import annotations

import json
import time
from datetime import datetime, timezone
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
import yaml
from evidently.ui.workspace import Workspace
from PIL import Image
from prefect.client.orchestration import get_client
from prefect.events.worker import EventsWorker

from flows.events import DRIFT_EVENT
from flows.monitor import monitor
from tasks.data.images import open_rgb
from tasks.model.served import load_classifier
from tasks.monitoring.features import profile_images
from tasks.monitoring.windows import read_windows
from tests.conftest import PROJECT_ROOT, write_image_set
from tests.test_monitor import write_bundle, write_split

pytestmark = [pytest.mark.ops, pytest.mark.slow(reason="a real Prefect server: schedules, automations, events")]

MIN_TRAFFIC = 20


@pytest.fixture(scope="module")
def project(tmp_path_factory, prefect_server) -> Path:
    """Validation split, a bundle (no production model yet) and the project's params."""
    root = tmp_path_factory.mktemp("monitored")
    val = write_split(root, "val", seed=1)
    write_bundle(root, val[::3])
    raw = yaml.safe_load((PROJECT_ROOT / "params.yaml").read_text())
    raw["monitor"]["min_traffic"] = MIN_TRAFFIC
    (root / "params.yaml").write_text(yaml.safe_dump(raw, sort_keys=False))
    return root


def log_traffic(root: Path, images: list[Image.Image]) -> None:
    """Append the images' feature rows to the traffic log as the service writes them (local time)."""
    rows = profile_images(load_classifier(root / "models"), images)
    log = root / "data/traffic/image_classifier/data/data.1.log"
    log.parent.mkdir(parents=True, exist_ok=True)
    stamp = datetime.now().isoformat()
    with log.open("a") as out:
        out.writelines(json.dumps({**row, "timestamp": stamp, "request_id": "r"}) + "\n" for row in rows)


def fresh_images(tmp_path: Path, seed: int, darken: float = 1.0) -> list[Image.Image]:
    paths = write_image_set(tmp_path / f"traffic{seed}", {"cat": 10, "dog": 10, "fox": 10}, seed=seed)
    return [Image.fromarray((np.asarray(open_rgb(p)) * darken).astype(np.uint8)) for p in paths]


def drift_events(project: Path, expected: int = 0) -> list[dict]:
    """Drift events the server has stored since the project was made (the server is the session's):
    polled, as the server writes events in batches."""
    EventsWorker.drain_all()
    deadline = time.monotonic() + (60 if expected else 6)  # a poll: returns as soon as they are there
    since = datetime.fromtimestamp((project / "params.yaml").stat().st_mtime, timezone.utc).isoformat()
    while True:
        with get_client(sync_client=True) as client:
            body = {"filter": {"event": {"name": [DRIFT_EVENT]}, "occurred": {"since": since}}, "limit": 50}
            events = client.request("POST", "/events/filter", json=body).json()["events"]
        if len(events) >= expected and (expected or time.monotonic() > deadline) or time.monotonic() > deadline:
            return events
        time.sleep(0.5)


def snapshots(root: Path) -> list:
    workspace = Workspace(str(root / ".ops/evidently"))
    (project,) = workspace.list_projects()
    return workspace.list_runs(project.id)


def test_a_window_below_min_traffic_is_recorded_as_not_enough_traffic(project: Path, tmp_path: Path):
    log_traffic(project, fresh_images(tmp_path, seed=7)[:5])
    window = monitor(repo_dir=str(project))
    assert window["status"] == "not enough traffic" and window["images"] == 5
    assert read_windows(project / ".ops") == [window]
    assert drift_events(project) == []


def test_clean_traffic_is_no_drift_and_starts_nothing(project: Path, tmp_path: Path):
    log_traffic(project, fresh_images(tmp_path, seed=8))
    window = monitor(repo_dir=str(project))
    assert window["images"] == 30  # only what was logged since the last window
    assert window["status"] == "no drift", window["drifted_columns"]
    assert set(window["prediction_mix"]) <= {"cat", "dog", "fox"} and 0 < window["mean_confidence"] <= 1
    assert Path(window["report"]).is_file() and len(snapshots(project)) == 1
    assert sorted(p.name for p in Path(window["report"]).parent.iterdir()) == ["drift.json"]  # no 4.5 MB report
    assert drift_events(project) == []


def test_a_drifted_window_is_recorded_and_emits_one_drift_event(project: Path, tmp_path: Path):
    log_traffic(project, fresh_images(tmp_path, seed=9, darken=0.25))
    window = monitor(repo_dir=str(project))
    assert window["status"] == "drift" and "brightness" in window["drifted_columns"]
    assert [w["status"] for w in read_windows(project / ".ops")] == ["not enough traffic", "no drift", "drift"]
    assert len(snapshots(project)) == 2
    (event,) = drift_events(project, expected=1)
    assert "brightness" in event["payload"]["summary"] and event["payload"]["end"] == window["end"]
    assert json.loads(Path(window["report"]).with_suffix(".json").read_text())["dataset_drift"] is True
    assert Path(window["report"]).name == "drift.html" and Path(window["report"]).stat().st_size > 1e6
    assert pd.read_csv(next((project / ".ops/monitor/reference").glob("*.csv"))).shape[0] == 45


def test_a_window_that_cannot_be_written_leaves_nothing_and_the_next_judges_its_traffic(project: Path, tmp_path: Path):
    """The history on a full disk (here /dev/full, whose writes fail with ENOSPC): the run fails in one
    line, no report or snapshot of it stays, and once there is room the next window has its images."""
    history = project / ".ops/monitor/windows.jsonl"
    kept = history.read_text()
    before = (sorted((project / ".ops/monitor/windows").iterdir()), len(snapshots(project)))
    log_traffic(project, fresh_images(tmp_path, seed=10))
    history.unlink()
    history.symlink_to("/dev/full")
    try:
        state = monitor(repo_dir=str(project), return_state=True)
    finally:
        history.unlink()
        history.write_text(kept)
    assert state.is_failed()
    assert state.message.startswith("the window could not be written under") and "No space left on device" in state.message
    assert (sorted((project / ".ops/monitor/windows").iterdir()), len(snapshots(project))) == before

    log_traffic(project, fresh_images(tmp_path, seed=11))
    window = monitor(repo_dir=str(project))
    assert window["images"] == 60 and len(read_windows(project / ".ops")) == 4  # both batches, judged once
