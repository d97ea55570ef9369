"""Lineage: what a packaged model was made from, so any model in the store can be traced back.

    data_root, data_root_hash   params.yaml `data.root` and its DVC hash (validate stage's dep in dvc.lock)
    split_hash                  DVC hash of data/split (split stage's out in dvc.lock)
    git_commit                  `git rev-parse HEAD`, with "-dirty" when tracked files differ from it
    params_sha256               SHA-256 of params.yaml's bytes
    trigger                     why the run happened: $IMGCLF_TRIGGER (schedule, drift, new data, manual)
    created_at                  UTC time, ISO 8601

The hashes come from dvc.lock rather than being recomputed: they are the ids DVC itself uses, so
`dvc` can fetch or check out exactly that data again. Anything that cannot be read (no dvc.lock, no
git) is "unknown" rather than an error: lineage describes a model, it never stops one being packaged.
"""
from __future__ import annotations

import os
import subprocess
from datetime import datetime, timezone
from pathlib import Path

from tasks.common.config import Params
from tasks.common.dvc_store import DVC_LOCK, locked_hash, read_lock
from tasks.common.files import sha256
from tasks.common.paths import POINTER, SPLIT_DIR

TRIGGER_ENV = "IMGCLF_TRIGGER"  # set by whoever starts a run (the retrain flow); unset: a person did
DEFAULT_TRIGGER = "manual"
UNKNOWN = "unknown"
PARAMS_YAML = Path("params.yaml")
# Files the pipeline itself rewrites during a run: a change to them alone does not make the code dirty.
PIPELINE_WRITTEN = (DVC_LOCK, POINTER)
KEYS = ("data_root", "data_root_hash", "split_hash", "git_commit", "params_sha256", "trigger", "created_at")


def collect_lineage(workdir: Path, params: Params) -> dict[str, str]:
    """The lineage of a run in `workdir` (the project root) with `params`; every value a string."""
    lock = read_lock(workdir)
    root = params.data.root
    params_file = workdir / PARAMS_YAML
    return {
        "data_root": str(root),
        "data_root_hash": locked_hash(lock, "validate", "deps", root, workdir) or UNKNOWN,
        "split_hash": locked_hash(lock, "split", "outs", SPLIT_DIR, workdir) or UNKNOWN,
        "git_commit": git_commit(workdir),
        "params_sha256": sha256(params_file) if params_file.is_file() else UNKNOWN,
        "trigger": trigger(),
        "created_at": datetime.now(timezone.utc).isoformat(timespec="seconds"),
    }


def trigger() -> str:
    """Why this run happened, from $IMGCLF_TRIGGER; "manual" when unset or blank."""
    return " ".join(os.environ.get(TRIGGER_ENV, "").split()) or DEFAULT_TRIGGER


def git_commit(workdir: Path) -> str:
    """HEAD's commit, + "-dirty" when tracked files (other than PIPELINE_WRITTEN) differ; else "unknown"."""
    excludes = [f":(exclude){p.as_posix()}" for p in PIPELINE_WRITTEN]
    head = _git(workdir, "rev-parse", "--verify", "HEAD")
    changes = _git(workdir, "status", "--porcelain", "--untracked-files=no", "--", *excludes)
    if head is None or changes is None:
        return UNKNOWN
    return head + ("-dirty" if changes else "")


def bento_labels(lineage: dict, metrics: dict) -> dict[str, str]:
    """Bento labels: one per lineage field, plus the headline test metrics (test_accuracy, test_macro_f1).

    BentoML accepts any string as a label value (bentoml._internal.utils.validate_labels); values are
    kept on one line so that they read well in `bentoml get` and pass through `--label key=value`.
    """
    labels = {key: lineage.get(key, UNKNOWN) for key in KEYS}
    labels.update({f"test_{name}": metrics[name] for name in ("accuracy", "macro_f1") if name in metrics})
    return {key: " ".join(str(value).split()) or UNKNOWN for key, value in labels.items()}


def format_lineage(lineage: dict | None, indent: str = "    ") -> list[str]:
    """Readable `key: value` lines (lineage recorded by this module's keys first, any others after)."""
    if not lineage:
        return [f"{indent}(no lineage recorded: packaged before lineage was recorded)"]
    keys = [k for k in KEYS if k in lineage] + sorted(k for k in lineage if k not in KEYS)
    width = max(len(k) for k in keys) + 1
    return [f"{indent}{k + ':':<{width}} {lineage[k]}" for k in keys]


def _git(workdir: Path, *args: str) -> str | None:
    """A git command's stripped stdout, or None when git is missing or fails (e.g. not a repository)."""
    try:
        done = subprocess.run(["git", *args], cwd=workdir, capture_output=True, text=True, timeout=30)
    except (OSError, subprocess.TimeoutExpired):
        return None
    return done.stdout.strip() if done.returncode == 0 else None
