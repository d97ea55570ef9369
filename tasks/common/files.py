"""Writing files so that a crash never leaves half of one, and fingerprints of files and values."""
from __future__ import annotations

import contextlib
import hashlib
import json
import os
from pathlib import Path
from typing import Iterator


@contextlib.contextmanager
def atomic_path(path: Path) -> Iterator[Path]:
    """A temporary path beside `path` to write to; it replaces `path` only when the block succeeds.

    A reader sees the old file or the new one, never a partial one, and a killed writer leaves
    at most a hidden `.<name>.partial<pid>` behind.
    """
    path.parent.mkdir(parents=True, exist_ok=True)
    partial = path.with_name(f".{path.name}.partial{os.getpid()}")
    try:
        yield partial
        partial.replace(path)
    finally:
        partial.unlink(missing_ok=True)


def write_text_atomic(path: Path, text: str) -> None:
    with atomic_path(path) as partial:
        partial.write_text(text)


def sha256(path: Path) -> str:
    """A file's SHA-256 hex digest, read in pieces (weights files can be large)."""
    with open(path, "rb") as f:
        return hashlib.file_digest(f, "sha256").hexdigest()


def digest(values: list) -> str:
    """A stable SHA-256 hex digest of JSON-able values."""
    return hashlib.sha256(json.dumps(values, sort_keys=True, default=str).encode()).hexdigest()
