"""Which packaged model is in production: the pointer file, and the BentoML model store it names.

    deploy/production.json   {"current": <entry> | null, "previous": [<entry> | null, ...]}

An entry names a BentoML model and the Bento that serves it, with the evidence it was promoted on.
Promotion and rollback (tasks/production.py) write the pointer; the gate and the service read it.
"""
from __future__ import annotations

import json
import os
from pathlib import Path

from tasks.common.config import UserError
from tasks.common.files import write_text_atomic


def read_pointer(path: Path) -> dict:
    """The pointer file; a missing file means no production model yet."""
    if not path.is_file():
        return {"current": None, "previous": []}
    try:
        pointer = json.loads(path.read_text())
    except ValueError:
        raise UserError(f"{path} is not valid JSON; restore it from git (git checkout -- {path})") from None
    if not isinstance(pointer, dict) or set(pointer) != {"current", "previous"}:
        raise UserError(f"{path} must hold exactly 'current' and 'previous'; restore it from git")
    return pointer


def write_pointer(path: Path, pointer: dict) -> None:
    write_text_atomic(path, json.dumps(pointer, indent=2) + "\n")


def current_model(path: Path) -> str | None:
    """The production model's tag, or None."""
    entry = read_pointer(path)["current"]
    return entry["model"] if entry else None


def check_in_store(tag: str, home: str | None = None) -> None:
    """The model is in the BentoML store at `home` (default: $BENTOML_HOME, else ~/bentoml).

    Read from the store's folder layout (<home>/models/<name>/<version>/model.yaml) rather than
    through BentoML, which fixes its home once per process.
    """
    home = Path(home or os.environ.get("BENTOML_HOME") or "~/bentoml").expanduser()
    name, _, version = tag.partition(":")
    if not (home / "models" / name / version / "model.yaml").is_file():
        raise UserError(f"model {tag} is not in the BentoML model store under {home}; "
                        "bring it over with bentoml models export / import")
