"""What DVC recorded: the hashes in dvc.lock, and the objects behind them in the cache or the remote.

Used to look back at an earlier version of an output that the workspace no longer holds (the split
a model was trained on, the split before this run). Nothing here writes: a hash that neither the
local cache nor the default remote has reads as None, and the caller says what that means.
"""
from __future__ import annotations

import json
from pathlib import Path

import yaml

DVC_LOCK = Path("dvc.lock")


def read_lock(workdir: Path) -> dict:
    """dvc.lock's stages ({} when there is no readable dvc.lock)."""
    path = workdir / DVC_LOCK
    if not path.is_file():
        return {}
    try:
        lock = yaml.safe_load(path.read_text())
    except yaml.YAMLError:
        return {}
    stages = lock.get("stages") if isinstance(lock, dict) else None
    return stages if isinstance(stages, dict) else {}


def locked_hash(stages: dict, stage: str, kind: str, path: str | Path, workdir: Path) -> str | None:
    """The md5 dvc.lock records for `path` among one stage's deps or outs; None if absent."""
    wanted = (workdir / path).resolve()
    entries = stages.get(stage, {}).get(kind) if isinstance(stages.get(stage), dict) else None
    for entry in entries if isinstance(entries, list) else []:
        if isinstance(entry, dict) and "path" in entry and (workdir / str(entry["path"])).resolve() == wanted:
            return str(entry["md5"]) if entry.get("md5") else None
    return None


def read_directory(workdir: Path, md5: str) -> dict[str, bytes] | None:
    """Every file of a directory output DVC stored as `md5` (`<hash>.dir`), by relative path, each from the
    local cache, else the default remote; None when any of them is in neither (or this is no DVC project)."""
    from dvc.exceptions import DvcException
    from dvc.repo import Repo  # imported here: only a look back needs DVC

    try:
        with Repo(str(workdir)) as repo:
            try:
                remote = repo.cloud.get_remote_odb()
            except DvcException:  # no default remote
                remote = None

            def read(oid: str) -> bytes | None:
                cache = Path(repo.cache.local.oid_to_path(oid))
                if cache.is_file():
                    return cache.read_bytes()
                path = remote.oid_to_path(oid) if remote is not None else None
                return remote.fs.cat_file(path) if path is not None and remote.fs.exists(path) else None

            listing = read(md5)
            if listing is None:
                return None
            files = {entry["relpath"]: read(entry["md5"]) for entry in json.loads(listing)}
    except (DvcException, OSError):
        return None
    return None if any(content is None for content in files.values()) else files
