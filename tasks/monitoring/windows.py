"""Traffic windows of the monitor deployment: which stretch of logged traffic to judge next, and
the history of every window judged so far.

    <ops.home>/monitor/windows.jsonl          one JSON line per window, oldest first
    <ops.home>/monitor/windows/<end>/         the window's drift summary (drift.json) and, when it
                                              drifted, Evidently's self-contained report (drift.html)

The housekeeping deployment keeps the newest ops.retention.windows of them (prune_windows).

A window runs from the end of the previous one (or, with a window length, from that many minutes
ago) to now, so each logged image is judged once and a shift that started yesterday is not diluted
by months of normal traffic. A window with fewer than monitor.min_traffic images is recorded as
"not enough traffic", never as "no drift".
"""
from __future__ import annotations

import fcntl
import json
import shutil
from contextlib import contextmanager
from datetime import datetime, timedelta
from pathlib import Path

from tasks.common.files import write_text_atomic

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


@contextmanager
def _history_locked(ops_home: Path):
    """One writer of the history at a time: the monitor appending, housekeeping rewriting."""
    folder = history_file(ops_home).parent
    folder.mkdir(parents=True, exist_ok=True)
    with open(folder / ".windows.lock", "w") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)
        yield


def record_window(ops_home: Path, window: dict) -> None:
    """Append one window to the history (one line, so a crash cannot corrupt earlier windows)."""
    path = history_file(ops_home)
    with _history_locked(ops_home), path.open("a+b") as history:  # appends always go to the end, wherever the last read was
        torn = False
        if size := history.seek(0, 2):
            history.seek(size - 1)
            torn = history.read(1) != b"\n"
        line = json.dumps(window) + "\n"
        history.write((("\n" + line) if torn else line).encode())  # a torn line stays alone


def snapshot_id(window: dict) -> str | None:
    """The Evidently snapshot of a judged window: the last part of its dashboard address."""
    return window["dashboard"].rsplit("/", 1)[-1] if window.get("dashboard") else None


def prune_windows(ops_home: Path, keep: int) -> list[dict]:
    """Keep the newest `keep` windows: older ones leave the history, and every report folder older
    than the oldest kept window goes (also one a crash left behind). Returns the removed windows
    (their Evidently snapshots are the caller's to delete)."""
    with _history_locked(ops_home):
        windows = read_windows(ops_home)
        removed, kept = windows[:-keep], windows[-keep:]
        if removed:  # the history first: a crash after it leaves folders the next run removes
            write_text_atomic(history_file(ops_home), "".join(json.dumps(w) + "\n" for w in kept))
    if kept:
        oldest_kept = report_dir(ops_home, datetime.fromisoformat(kept[0]["end"]))
        for folder in oldest_kept.parent.glob("*"):  # names are UTC times, so they sort by age
            if folder.name < oldest_kept.name:
                shutil.rmtree(folder, ignore_errors=True)
    return removed
