"""Where the stages leave what other stages, the flow or the service read, relative to the project root.

One module, so that a path is spelled once and a reader finds every hand-over between stages here.
A path that only its own stage uses stays in that stage.
"""
from __future__ import annotations

from pathlib import Path

# validate -> clean, split
MANIFEST_CSV = Path("data/manifest.csv")

# clean -> split
CLEAN_DIR = Path("data/clean")
KEPT_CSV = CLEAN_DIR / "kept.csv"
QUARANTINE_CSV = CLEAN_DIR / "quarantine.csv"
CLEAN_IMAGES_DIR = CLEAN_DIR / "images"

# split -> augment, train, evaluate, gate, package, monitor
SPLIT_DIR = Path("data/split")
SPLITS = ("train", "val", "test")

# label_quality -> the review sync (tasks/labels/), the flow
SUSPECTS_CSV = Path("reports/labels/suspects.csv")

# train -> evaluate, gate, package, monitor
MODEL_DIR = Path("models")
CURVES_PNG = Path("reports/train/curves.png")

# evaluate -> gate, package, the flow
EVALUATE_DIR = Path("reports/evaluate")
METRICS_JSON = EVALUATE_DIR / "metrics.json"
PREDICTIONS_CSV = EVALUATE_DIR / "predictions.csv"
REPORT_HTML = EVALUATE_DIR / "report.html"
RUNTIME_DIR = Path("runtime")  # the serving runtime the evaluate stage chose, and its ONNX file

# gate and package -> promotion (tasks/production.py), the flow
DECISION_JSON = Path("reports/gate/decision.json")
PACKAGE_JSON = Path("reports/package/bento.json")

# the production pointer: written by promotion, read by the gate and the service
POINTER = Path("deploy/production.json")
# every promoted model's Bento as an archive (DVC-tracked: deploy/store.dvc), so any machine that
# pulls finds production in its BentoML store (tasks/model/registry.py)
STORE_ARCHIVES = Path("deploy/store")

# caches that live beside the outputs, never versioned (.gitignore)
CACHE_DIR = Path(".cache")


def split_csv(name: str) -> Path:
    """data/split/<name>.csv: the rows of one split (name: train, val or test)."""
    return SPLIT_DIR / f"{name}.csv"
