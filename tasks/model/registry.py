"""Which packaged model is in production: the pointer file, and the BentoML model store it names.

    deploy/production.json   {"current": <entry> | null, "previous": [<entry> | null, ...]}

An entry names a BentoML model and the Bento that serves it, with the evidence it was promoted on.
Promotion and rollback (tasks/production.py) write the pointer; the gate and the service read it.
The store is read from its folder layout (<home>/models/<name>/<version>/model.yaml) rather than
through BentoML, which fixes its home once per process.
"""
from __future__ import annotations

import json
import os
from pathlib import Path

import yaml

from tasks.common.config import UserError
from tasks.common.files import write_text_atomic

# Set to the pointer's path, the service serves the production model it names and switches to each
# new one (service/service.py); `python -m tasks.production serve` sets it.
FOLLOW_ENV = "IMAGE_CLASSIFIER_FOLLOW"


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


def store_home(home: str | Path | None = None) -> Path:
    """The BentoML home: `home`, else $BENTOML_HOME, else ~/bentoml."""
    return Path(home or os.environ.get("BENTOML_HOME") or "~/bentoml").expanduser()


def model_dir(tag: str, home: str | Path | None = None) -> Path:
    """Where the store keeps model `tag`'s files (the bundle's weights and sidecar, model.yaml)."""
    name, _, version = tag.partition(":")
    return store_home(home) / "models" / name / version


def _model_yaml(tag: str, home: str | Path | None) -> Path:
    return model_dir(tag, home) / "model.yaml"


def check_in_store(tag: str, home: str | Path | None = None) -> None:
    """The model is in the BentoML store at `home` (default: $BENTOML_HOME, else ~/bentoml)."""
    if not _model_yaml(tag, home).is_file():
        raise UserError(f"model {tag} is not in the BentoML model store under {store_home(home)}; "
                        "bring it over with bentoml models export / import")


def model_metadata(tag: str, home: str | Path | None = None) -> dict | None:
    """The metadata the model was saved with (e.g. metrics, lineage); None when it is not in the store."""
    path = _model_yaml(tag, home)
    if not path.is_file():
        return None
    info = yaml.safe_load(path.read_text()) or {}
    return info.get("metadata") or {}
