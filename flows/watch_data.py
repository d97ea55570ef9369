"""The watch-data deployment's flow: has the labelled data under data.root changed?

Runs every ops.data_check_seconds. It compares a listing of data.root (paths, sizes, times; no
image is opened) with the one it saw last, kept in <ops.home>/data/fingerprint.json, and emits an
imgclf.data.changed event when images were added, removed, modified or relabelled; the retrain
deployment's trigger starts a retrain from it. The first check only records what is there.
"""
from __future__ import annotations

import json
from pathlib import Path

from prefect import flow, get_run_logger
from prefect.states import Failed

from flows.events import announce_data_change
from tasks.common.config import UserError, load_params
from tasks.common.files import write_text_atomic
from tasks.data.changes import compare, describe, fingerprint


@flow(name="watch-data", flow_run_name="watch-data")
def watch_data(repo_dir: str = ".") -> str:
    root, logger = Path(repo_dir).resolve(), get_run_logger()
    try:
        params = load_params(root / "params.yaml")
    except UserError as err:
        return Failed(message=str(err))
    data_root = root / params.data.root
    state = root / params.ops.home / "data" / "fingerprint.json"
    seen = json.loads(state.read_text()) if state.is_file() else None
    now = fingerprint(data_root)
    if seen is None:  # the first check: what is there now is the baseline
        changes, change = None, ""
    elif seen["root"] != params.data.root:
        changes = {"added": sorted(now)}
        change = f"data.root moved from {seen['root']} to {params.data.root} ({len(now)} files)"
    else:
        changes = compare(seen["files"], now)
        change = describe(changes)
    if change:
        announce_data_change(params.data.root, changes, change)
    state.parent.mkdir(parents=True, exist_ok=True)
    write_text_atomic(state, json.dumps({"root": params.data.root, "files": now}))
    result = (f"data.root {params.data.root} changed: {change}" if change
              else f"recorded {len(now)} files under {params.data.root}" if changes is None
              else f"data.root {params.data.root} unchanged ({len(now)} files)")
    logger.info(result)
    return result
