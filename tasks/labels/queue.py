"""The service's review queues: served images kept for a person to label, of two kinds.

    uncertain   the images the model was least sure of: top-two probability margin below
                service.uncertain.margin; what a new model learns most from
    audit       a random share (service.audit.share) of every served image, sure or not: the only
                unbiased sample of traffic, so the only one that measures accuracy on it
                (tasks/monitoring/live_accuracy.py)

Everything else the service logs as features only (tasks/monitoring/traffic.py). A kept image lies
under <monitor.traffic_dir>/<kind>/<day>/ as the RGB PNG the model classified, beside a JSON file
with the kind, model version, prediction, probabilities, margin and the time it was served. An
image drawn for the audit is kept there only. Each queue is bounded by its own section's days and
max_mb: older files go, then the oldest until it fits.
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
AUDIT_DIR = "audit"


def queue_dir(traffic_dir: Path) -> Path:
    return traffic_dir / QUEUE_DIR


def audit_dir(traffic_dir: Path) -> Path:
    return traffic_dir / AUDIT_DIR


def draw_audit(count: int, share: float, rng: np.random.Generator) -> np.ndarray:
    """Which of `count` served images go to the audit: each independently with probability `share`."""
    return rng.random(count) < share


def keep_uncertain(folder: Path, images: list[Image.Image], probs: np.ndarray, labels: list[str], model: str,
                   names: list[str], below: float, now: datetime | None = None) -> list[Path]:
    """Write the images whose margin is below `below` (with their JSON); returns the PNG paths."""
    return keep(folder, images, probs, labels, model, names, margin(probs) < below, QUEUE_DIR, now)


def keep(folder: Path, images: list[Image.Image], probs: np.ndarray, labels: list[str], model: str,
         names: list[str], chosen: np.ndarray, kind: str, now: datetime | None = None) -> list[Path]:
    """Write the `chosen` images as `kind` (with their JSON); returns the PNG paths."""
    margins = margin(probs)
    now = now or datetime.now(timezone.utc)
    written = []
    for image, p, m, name, wanted in zip(images, probs, margins, names, chosen):
        if not wanted:
            continue
        stem = folder / now.strftime("%Y-%m-%d") / f"{now.strftime('%H%M%S')}-{uuid.uuid4().hex[:12]}"
        record = {
            "image": stem.name + ".png", "kind": kind, "filename": name, "model": model, "time": now.isoformat(),
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
    columns = ["image", "kind", "filename", "model", "time", "prediction", "margin", "probabilities"]
    frame = pd.DataFrame(rows, columns=columns).fillna({"kind": folder.name})
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
