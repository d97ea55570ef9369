"""The review queue the service fills: only the images below the margin are kept, with their record;
the queue stays within its age and size limits without losing a record's image."""
from __future__ import annotations

import os
import time
from datetime import datetime, timedelta, timezone

import numpy as np
import pytest
from PIL import Image

from tasks.labels.queue import keep_uncertain, kept, prune, queue_dir
from tasks.labels.review import uncertain_items
from tasks.labels.uncertainty import margin, most_uncertain
from tests.conftest import make_params

pytestmark = pytest.mark.labelling

LABELS = ["cat", "dog", "fox"]
PROBS = np.array([[0.50, 0.45, 0.05],   # margin 0.05: kept
                  [0.90, 0.05, 0.05],   # 0.85: not kept
                  [0.30, 0.32, 0.38]])  # 0.06: kept


def images(count: int, side: int = 16) -> list[Image.Image]:
    rng = np.random.default_rng(0)
    return [Image.fromarray(rng.integers(0, 256, (side, side, 3), dtype=np.uint8)) for _ in range(count)]


def test_margin_is_top_one_minus_top_two_and_orders_the_least_sure_first():
    assert margin(PROBS) == pytest.approx([0.05, 0.85, 0.06])
    assert list(most_uncertain(PROBS, 2)) == [0, 2]


def test_only_images_below_the_margin_are_kept_with_model_prediction_and_probabilities(tmp_path):
    pictures = images(3)
    when = datetime(2026, 5, 1, 12, 0, tzinfo=timezone.utc)
    written = keep_uncertain(tmp_path, pictures, PROBS, LABELS, "image-classifier:abc", ["a.png", "b.png", "c.jpg"],
                             below=0.2, now=when)
    assert len(written) == 2 and all(p.parent.name == "2026-05-01" for p in written)
    queue = kept(tmp_path)
    assert list(queue["filename"]) == ["a.png", "c.jpg"]  # least sure first
    first = queue.iloc[0]
    assert (first["model"], first["prediction"], first["margin"]) == ("image-classifier:abc", "cat", 0.05)
    assert first["probabilities"] == {"cat": 0.5, "dog": 0.45, "fox": 0.05}
    assert np.array_equal(np.asarray(Image.open(first["image"])), np.asarray(pictures[0]))  # lossless


def test_pruning_drops_old_images_then_the_oldest_beyond_the_cap_never_a_record_without_its_image(tmp_path):
    now = time.time()
    written = []
    for age_days in (100, 5, 3, 1, 0):  # one beyond the 90 days, four within
        [path] = keep_uncertain(tmp_path, images(1, side=64), PROBS[:1], LABELS, "m:1", ["x.png"], below=0.2)
        os.utime(path, (now - age_days * 86400,) * 2)
        written.append(path)
    per_image = written[1].stat().st_size + written[1].with_suffix(".json").stat().st_size
    cap_mb = 2.5 * per_image / 1024 / 1024  # room for two of them
    assert prune(tmp_path, max_mb=cap_mb, days=90, now=now) == 3
    assert sorted(kept(tmp_path)["image"]) == sorted(written[3:])  # the newest two
    assert all(p.with_suffix(".png").is_file() for p in tmp_path.glob("*/*.json"))
    assert prune(tmp_path, max_mb=cap_mb, days=90, now=now) == 0


def test_a_half_written_record_is_skipped(tmp_path):
    [path] = keep_uncertain(tmp_path, images(1), PROBS[:1], LABELS, "m:1", ["x.png"], below=0.2)
    path.with_suffix(".json").write_text("{not json")
    assert kept(tmp_path).empty


def test_a_drifted_window_asks_for_its_own_least_sure_images_only(tmp_path):
    """What the monitor sends for review on drift: images kept since the window started, least sure first."""
    params = make_params()
    queue = queue_dir(tmp_path / params.monitor.traffic_dir)
    before, start = datetime(2026, 5, 1, 9, tzinfo=timezone.utc), datetime(2026, 5, 1, 10, tzinfo=timezone.utc)
    keep_uncertain(queue, images(1), PROBS[:1], LABELS, "m:1", ["old.png"], below=0.2, now=before)
    keep_uncertain(queue, images(3), PROBS, LABELS, "m:2", ["a.png", "b.png", "c.png"], below=0.2,
                   now=start + timedelta(minutes=5))
    items = uncertain_items(tmp_path, params, since=start, limit=1)
    assert [(i["kind"], i["prediction"], i["model_version"], i["score"]) for i in items] == [("uncertain", "cat", "m:2", 0.5)]
    assert items[0]["image"].startswith("data/traffic/uncertain/2026-05-01/")
    assert len(uncertain_items(tmp_path, params)) == 3  # a.png and c.png, and the older one
