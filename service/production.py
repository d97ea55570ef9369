"""Following production: notice when deploy/production.json is rewritten, and which model it names.

Promotion and rollback replace the file atomically (tasks/model/registry.py), so a change of its
inode, size or modification time is a change of production; nothing is read while it stays put.
"""
from __future__ import annotations

import os
from pathlib import Path

from tasks.model.registry import current_model


class PointerWatch:
    def __init__(self, path: Path) -> None:
        self.path = path
        self.seen = self.signature()

    def signature(self) -> tuple[int, int, int] | None:
        try:
            stat = os.stat(self.path)
        except FileNotFoundError:
            return None
        return stat.st_ino, stat.st_size, stat.st_mtime_ns

    def changed(self) -> bool:
        """Whether the file changed since the last call (or since the watch began)."""
        now = self.signature()
        changed, self.seen = now != self.seen, now
        return changed

    def production_model(self) -> str | None:
        """The tag the pointer names now; None for no production model. UserError if unreadable."""
        return current_model(self.path)
