"""The service's logged traffic: JSON lines written by `bentoml.monitor`, read back as feature rows."""
from __future__ import annotations

import json
import math
from datetime import datetime, timedelta
from pathlib import Path

import pandas as pd

from tasks.monitoring.features import FEATURE_COLUMNS, LOGGED_COLUMNS


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
    return parse_record(record)


def parse_record(record) -> dict | None:
    """A decoded log record as a row of LOGGED_COLUMNS, or None when it is not a usable record."""
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


def logged_at(record: dict) -> datetime | None:
    """When a record was logged, time-zone aware. BentoML writes the server's local time without a
    zone, so a naive timestamp is read as this machine's local time."""
    try:
        return datetime.fromisoformat(str(record["timestamp"])).astimezone()
    except (KeyError, ValueError):
        return None


def read_traffic(traffic_dir: Path, since: datetime | None = None, until: datetime | None = None
                 ) -> tuple[pd.DataFrame, int]:
    """Logged rows below traffic_dir, logged after `since` and up to `until` when given, and the
    number of lines skipped as unusable (a record without a readable time counts as unusable once
    a window is asked for)."""
    windowed = since is not None or until is not None
    rows, skipped = [], 0
    for path in traffic_files(traffic_dir):
        if since is not None and last_written(path) < since - timedelta(minutes=1):
            continue  # last written well before the window (a margin for coarse file times): none of its lines is in it
        with path.open(encoding="utf-8", errors="replace") as lines:
            for line in lines:
                if not line.strip():
                    continue
                try:
                    record = json.loads(line)
                except ValueError:
                    record = None
                row = parse_record(record)
                when = logged_at(record) if windowed and row is not None else None
                if row is None or (windowed and when is None):
                    skipped += 1
                elif not windowed or ((since is None or when > since) and (until is None or when <= until)):
                    rows.append(row)
    return pd.DataFrame(rows, columns=LOGGED_COLUMNS), skipped


def last_written(path: Path) -> datetime:
    """When a log file was last appended to: no line in it was logged later."""
    return datetime.fromtimestamp(path.stat().st_mtime).astimezone()


def prune_traffic(traffic_dir: Path, before: datetime) -> list[Path]:
    """Delete the rotated log files (`data.0.log.2024-05-01`) last written before `before`. A live
    `*.log` file is never deleted, however old: the service may still hold it open and write to it."""
    removed = [path for path in traffic_files(traffic_dir) if ".log." in path.name and last_written(path) < before]
    for path in removed:
        path.unlink(missing_ok=True)
    return removed
