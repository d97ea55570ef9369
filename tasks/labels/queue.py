"""The service's review queue: the served images the model was least sure of, kept for a person to label.

Everything else the service logs as features only (tasks/monitoring/traffic.py). An image whose
top-two probability margin is below service.uncertain.margin is kept under
<monitor.traffic_dir>/uncertain/<day>/ as the RGB PNG the model classified, beside a JSON file with
the model version, prediction, probabilities and margin. The queue is bounded: files older than
service.uncertain.days go, then the oldest until it holds at most service.uncertain.max_mb.
"""
from __future__ import annotations

import json
import os
import time
import uuid
from datetime import datetime, timezone
from pathlib import Path

import numpy as np
import pandas as pd
from PIL import Image

from tasks.common.files import atomic_path
from tasks.labels.uncertainty import margin

QUEUE_DIR = "uncertain"  # under the traffic folder


def queue_dir(traffic_dir: Path) -> Path:
    return traffic_dir / QUEUE_DIR


def keep_uncertain(folder: Path, images: list[Image.Image], probs: np.ndarray, labels: list[str], model: str,
                   names: list[str], below: float, now: datetime | None = None) -> list[Path]:
    """Write the images whose margin is below `below` (with their JSON); returns the PNG paths."""
    margins = margin(probs)
    now = now or datetime.now(timezone.utc)
    written = []
    for image, p, m, name in zip(images, probs, margins, names):
        if m >= below:
            continue
        stem = folder / now.strftime("%Y-%m-%d") / f"{now.strftime('%H%M%S')}-{uuid.uuid4().hex[:12]}"
        record = {
            "image": stem.name + ".png", "filename": name, "model": model, "time": now.isoformat(),
            "prediction": labels[int(np.argmax(p))], "margin": round(float(m), 6),
            "probabilities": {label: round(float(v), 6) for label, v in zip(labels, p)},
        }
        stem.parent.mkdir(parents=True, exist_ok=True)
        with atomic_path(stem.with_suffix(".png")) as partial:
            image.save(partial, "PNG")
        with atomic_path(stem.with_suffix(".json")) as partial:  # last: a record always has its image
            partial.write_text(json.dumps(record))
        written.append(stem.with_suffix(".png"))
    return written


def kept(folder: Path) -> pd.DataFrame:
    """Every kept image with its record, least sure first: image (path), model, prediction, margin, ..."""
    rows = []
    for record_path in sorted(folder.glob("*/*.json")):
        try:
            record = json.loads(record_path.read_text())
        except (OSError, ValueError):  # being pruned or half-written by another worker
            continue
        image = record_path.with_suffix(".png")
        if image.is_file():
            rows.append({**record, "image": image})
    frame = pd.DataFrame(rows, columns=["image", "filename", "model", "time", "prediction", "margin", "probabilities"])
    return frame.sort_values(["margin", "time"], kind="stable").reset_index(drop=True)


def prune(folder: Path, max_mb: float, days: float, now: float | None = None) -> int:
    """Delete kept images older than `days`, then the oldest until the queue holds at most `max_mb`;
    returns how many were deleted. Safe beside other workers that write or prune at the same time."""
    now = now or time.time()
    entries = []
    for image in folder.glob("*/*.png"):
        try:
            stat = image.stat()
        except FileNotFoundError:
            continue
        record = image.with_suffix(".json")
        size = stat.st_size + (record.stat().st_size if record.exists() else 0)
        entries.append((stat.st_mtime, size, image))
    entries.sort()
    total, deleted = sum(size for _, size, _ in entries), 0
    for mtime, size, image in entries:
        if now - mtime <= days * 86400 and total <= max_mb * 1024 * 1024:
            break
        for path in (image.with_suffix(".json"), image):  # the record first: never a record without its image
            try:
                os.unlink(path)
            except FileNotFoundError:
                pass
        total -= size
        deleted += 1
    for day in folder.glob("*"):
        try:
            day.rmdir()  # only an empty day folder goes
        except OSError:
            pass
    return deleted
