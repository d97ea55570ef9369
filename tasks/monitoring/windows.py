"""Traffic windows of the monitor deployment: which stretch of logged traffic to judge next, and
the history of every window judged so far.

    <ops.home>/monitor/windows.jsonl          one JSON line per window, oldest first
    <ops.home>/monitor/windows/<end>/         the window's Evidently report (drift.html, drift.json)

A window runs from the end of the previous one (or, with a window length, from that many minutes
ago) to now, so each logged image is judged once and a shift that started yesterday is not diluted
by months of normal traffic. A window with fewer than monitor.min_traffic images is recorded as
"not enough traffic", never as "no drift".
"""
from __future__ import annotations

import json
from datetime import datetime, timedelta
from pathlib import Path

NOT_ENOUGH_TRAFFIC = "not enough traffic"
DRIFT = "drift"
NO_DRIFT = "no drift"


def history_file(ops_home: Path) -> Path:
    return ops_home / "monitor" / "windows.jsonl"


def report_dir(ops_home: Path, end: datetime) -> Path:
    return ops_home / "monitor" / "windows" / end.strftime("%Y%m%dT%H%M%SZ")


def read_windows(ops_home: Path) -> list[dict]:
    """Every recorded window, oldest first; a torn last line (a crash mid-write) is ignored."""
    path = history_file(ops_home)
    if not path.is_file():
        return []
    windows = []
    for line in path.read_text().splitlines():
        try:
            windows.append(json.loads(line))
        except ValueError:
            continue
    return windows


def next_window(ops_home: Path, now: datetime, window_minutes: int) -> tuple[datetime | None, datetime]:
    """(start, end] of the window to judge now: the last `window_minutes`, or (0) everything since
    the previous window ended; None as start means since the first logged image."""
    if window_minutes > 0:
        return now - timedelta(minutes=window_minutes), now
    windows = read_windows(ops_home)
    start = datetime.fromisoformat(windows[-1]["end"]) if windows else None
    return start, now


def record_window(ops_home: Path, window: dict) -> None:
    """Append one window to the history (one line, so a crash cannot corrupt earlier windows)."""
    path = history_file(ops_home)
    path.parent.mkdir(parents=True, exist_ok=True)
    with path.open("a+b") as history:  # appends always go to the end, wherever the last read was
        torn = False
        if size := history.seek(0, 2):
            history.seek(size - 1)
            torn = history.read(1) != b"\n"
        line = json.dumps(window) + "\n"
        history.write((("\n" + line) if torn else line).encode())  # a torn line stays alone
