"""The data watcher: has the labelled data under data.root changed? `python -m flows.watch_data`.

`make ops` runs it beside the worker. It compares a listing of data.root (paths, sizes, times; no
image is opened) with the one it saw last, kept in <ops.home>/data/fingerprint.json, and emits an
imgclf.data.changed event when images were added, removed, modified or relabelled; the retrain
deployment's trigger starts a retrain from it. The first check only records what is there.

A process rather than a deployment: checking every minute as a flow run wrote 1,440 runs a day to
Prefect's database and started a Python process each time, to find nothing in almost every run
(docs/operations.md, "Housekeeping"). watchfiles polls the tree every ops.data_check_seconds (its
Rust poller: no Python per poll, and unlike inotify it sees writes from other machines on shared
storage and a data.root that `dvc checkout` replaced), and only a change wakes the check.
"""
from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

import watchfiles

import tasks  # noqa: F401  (switches telemetry off)
from flows.events import announce_data_change
from flows.settings import FlowParams
from tasks.common.config import UserError, load_params
from tasks.common.files import write_text_atomic
from tasks.data.changes import compare, describe, fingerprint


def check_data(root: Path, params: FlowParams) -> str:
    """Compare data.root with the last recorded listing, emit the event if it changed, record it."""
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
    write_text_atomic(state, json.dumps({"root": params.data.root, "files": now}))
    if change:
        return f"data.root {params.data.root} changed: {change}"
    if changes is None:
        return f"recorded {len(now)} files under {params.data.root}"
    return f"data.root {params.data.root} unchanged ({len(now)} files)"


def watched_folder(data_root: Path) -> Path:
    """data.root, or its nearest existing parent while it does not exist yet (watchfiles needs a folder)."""
    folder = data_root
    while not folder.is_dir() and folder != folder.parent:
        folder = folder.parent
    return folder


def watch(root: Path, params: FlowParams) -> None:
    """Check once (changes made while nothing watched), then after every change under data.root."""
    data_root = (root / params.data.root).resolve()
    print(check_data(root, params), flush=True)
    under_root = lambda _change, path: Path(path).is_relative_to(data_root) or data_root.is_relative_to(path)  # noqa: E731
    for _ in watchfiles.watch(watched_folder(data_root), watch_filter=under_root, force_polling=True,
                              poll_delay_ms=params.ops.data_check_seconds * 1000, debounce=2000, raise_interrupt=False):
        print(check_data(root, params), flush=True)


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(prog="python -m flows.watch_data", description=__doc__.split("\n")[0])
    parser.parse_args(argv)
    root = Path.cwd()
    try:
        watch(root, load_params(root / "params.yaml", FlowParams))
    except UserError as err:
        print(f"watch-data: error: {err}", file=sys.stderr)
        sys.exit(2)


if __name__ == "__main__":
    main()
