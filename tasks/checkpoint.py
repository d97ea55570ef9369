"""Training checkpoints: `checkpoints/last.pt` after every epoch, `checkpoints/best.pt` at the best.

last.pt holds everything a run needs to go on (weights, optimizer, schedule, EMA, early stopping,
history) and a fingerprint of what defines the run: train params and the split files. A run that
was killed resumes from it when started again with the same fingerprint; other params or data
start afresh. Random streams need no saving: each epoch seeds its own from (seed, epoch, process).
Files are plain tensors and lists, loaded with `weights_only=True`.
"""
from __future__ import annotations

import hashlib
import json
import os
from pathlib import Path

import torch

CHECKPOINT_DIR = Path("checkpoints")
LAST = "last.pt"
BEST = "best.pt"


def digest(values: list) -> str:
    """A stable hex digest of JSON-able values."""
    return hashlib.sha256(json.dumps(values, sort_keys=True, default=str).encode()).hexdigest()


def sha256(path: Path) -> str:
    """A file's SHA-256, read in 1 MiB pieces (weights files can be large)."""
    hasher = hashlib.sha256()
    with path.open("rb") as f:
        for chunk in iter(lambda: f.read(1 << 20), b""):
            hasher.update(chunk)
    return hasher.hexdigest()


CODE_DIR = Path(__file__).resolve().parent  # tasks/: a run resumed after a code change would mix two programs


def fingerprint(train_params: dict, split_files: list[Path]) -> str:
    """A digest of everything that makes two runs the same run: params, split files and the code."""
    code = [sha256(path) for path in sorted(CODE_DIR.glob("*.py"))]
    return digest([train_params] + [sha256(path) for path in split_files] + code)


def save(state: dict, directory: Path, name: str) -> None:
    """Write atomically: a run killed while saving leaves the previous checkpoint intact."""
    directory.mkdir(parents=True, exist_ok=True)
    partial = directory / f".{name}.partial{os.getpid()}"
    torch.save(state, partial)
    partial.replace(directory / name)


def resumable(directory: Path, run_fingerprint: str) -> dict | None:
    """The last state of a run with this fingerprint, or None.

    A finished one is returned too: a run killed while writing the bundle then only redoes that.
    """
    path = directory / LAST
    if not path.is_file():
        return None
    try:
        state = torch.load(path, map_location="cpu", weights_only=True)
    except Exception:  # truncated or from an incompatible version: start afresh
        return None
    if state.get("fingerprint") != run_fingerprint:
        return None
    return state
