"""Traffic windows: which logged images a monitor window judges, and the window history."""
from __future__ import annotations

import json
from datetime import datetime, timedelta, timezone
from pathlib import Path

import pytest

from tasks.monitoring.features import LOGGED_COLUMNS
from tasks.monitoring.traffic import read_traffic
from tasks.monitoring.windows import next_window, read_windows, record_window

pytestmark = pytest.mark.monitoring

T0 = datetime(2026, 3, 2, 12, 0, tzinfo=timezone.utc)


def log_rows(traffic_dir: Path, stamps: list[str]) -> None:
    row = {col: 1.0 for col in LOGGED_COLUMNS} | {"prediction": "cat"}
    log = traffic_dir / "image_classifier/data/data.1.log"
    log.parent.mkdir(parents=True, exist_ok=True)
    with log.open("a") as out:
        out.writelines(json.dumps({**row, "timestamp": stamp, "request_id": "r"}) + "\n" for stamp in stamps)


def test_a_window_reads_only_what_was_logged_inside_it(tmp_path: Path):
    log_rows(tmp_path, ["2026-03-02T11:00:00+00:00", "2026-03-02T12:00:00+00:00", "2026-03-02T12:30:00+00:00",
                        "2026-03-02T13:00:01+00:00"])
    log_rows(tmp_path, ["not a time"])
    rows, skipped = read_traffic(tmp_path, since=T0, until=T0 + timedelta(hours=1))
    assert len(rows) == 1 and skipped == 1  # (12:00, 13:00]: only 12:30; the bad time is unusable
    rows, skipped = read_traffic(tmp_path)  # no window: every usable row, as the monitor stage reads
    assert len(rows) == 5 and skipped == 0


def test_a_naive_timestamp_is_this_machines_local_time(tmp_path: Path):
    local = datetime(2026, 3, 2, 12, 30).astimezone()  # what BentoML writes: local time, no zone
    log_rows(tmp_path, [local.replace(tzinfo=None).isoformat()])
    rows, _ = read_traffic(tmp_path, since=local - timedelta(minutes=1), until=local + timedelta(minutes=1))
    assert len(rows) == 1


def test_windows_follow_each_other_or_span_a_fixed_length(tmp_path: Path):
    assert next_window(tmp_path, T0, 0) == (None, T0)  # the first window: everything so far
    record_window(tmp_path, {"start": None, "end": T0.isoformat(), "status": "no drift"})
    later = T0 + timedelta(hours=1)
    assert next_window(tmp_path, later, 0) == (T0, later)  # from where the last one ended
    assert next_window(tmp_path, later, 15) == (later - timedelta(minutes=15), later)
    with (tmp_path / "monitor/windows.jsonl").open("a") as history:
        history.write('{"start": null, "end": "2026')  # a crash mid-write
    assert [w["status"] for w in read_windows(tmp_path)] == ["no drift"]
    record_window(tmp_path, {"start": T0.isoformat(), "end": later.isoformat(), "status": "drift"})
    assert [w["status"] for w in read_windows(tmp_path)] == ["no drift", "drift"]
