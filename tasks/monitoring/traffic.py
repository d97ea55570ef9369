"""The service's logged traffic: JSON lines written by `bentoml.monitor`, read back as feature rows."""
from __future__ import annotations

import json
import math
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
