"""The model bundle's file names and its JSON sidecar: what code that never runs the network reads.

No PyTorch here: the service's API workers and the ONNX Runtime path import this, not bundle.py.
"""
from __future__ import annotations

import json
from pathlib import Path

from tasks.common.config import UserError

WEIGHTS_FILE = "model.safetensors"
META_FILE = "model.json"
PROJECTION_PREFIX = "embedding_projection."
EMBEDDING_DIMS = 8  # embedding columns logged by the service and compared by drift monitoring


def read_meta(bundle_dir: str | Path) -> dict:
    """The JSON sidecar alone (labels, input size, mean/std, crop), for code that never runs the model."""
    bundle_dir = Path(bundle_dir)
    if not (bundle_dir / META_FILE).is_file() or not (bundle_dir / WEIGHTS_FILE).is_file():
        raise UserError(f"no model bundle in {bundle_dir}; run the train stage first (dvc repro train)")
    try:
        meta = json.loads((bundle_dir / META_FILE).read_text())
    except ValueError:
        raise UserError(f"{bundle_dir / META_FILE} is not valid JSON; train again (dvc repro train)") from None
    meta.setdefault("crop_pct", 1.0)  # bundles from before the key resized straight to image_size
    meta.setdefault("background", [255, 255, 255])  # and composited transparency on white
    meta.setdefault("temperature", 1.0)  # and were not calibrated
    meta.setdefault("tta", "none")
    return meta
