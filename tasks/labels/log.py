"""The review log, <labels.review_dir>/log.csv: one row per applied review, never rewritten.

    time, key, kind, file, old_label, new_label, action, reviewer, reviewed_at, model_version, score, note,
    prediction, served_at

`kind` is suspect (a labelled image questioned by label_quality) or a kind of served image
(TRAFFIC_KINDS); `file` is where the image is now, relative to the project. For a served image,
model_version, prediction and served_at are what the service answered and when: the join that
turns reviews into live accuracy (tasks/monitoring/live_accuracy.py). A log from before those two
columns gets them, empty, the next time reviews are appended.
"""
from __future__ import annotations

from pathlib import Path

import pandas as pd

from tasks.common.config import Params

LOG_NAME = "log.csv"
LOG_COLUMNS = ["time", "key", "kind", "file", "old_label", "new_label", "action", "reviewer", "reviewed_at",
               "model_version", "score", "note", "prediction", "served_at"]
TRAFFIC_KINDS = ("uncertain", "audit")  # served images: the least sure, and the random audit sample


def review_log(workdir: Path, params: Params) -> pd.DataFrame:
    path = workdir / params.labels.review_dir / LOG_NAME
    if not path.is_file():
        return pd.DataFrame(columns=LOG_COLUMNS)
    return pd.read_csv(path, dtype=str, keep_default_na=False)
