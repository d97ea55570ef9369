"""Which packaged model is in production: the pointer file, and the BentoML model store it names.

    deploy/production.json   {"current": <entry> | null, "previous": [<entry> | null, ...]}

An entry names a BentoML model and the Bento that serves it, with the evidence it was promoted on.
Promotion and rollback (tasks/production.py) write the pointer; the gate and the service read it.
The store is read from its folder layout (<home>/models/<name>/<version>/model.yaml) rather than
through BentoML, which fixes its home once per process.

A BentoML store belongs to one machine, so promotion also exports the model's Bento (which carries the
model) to deploy/store/<model name>-<version>.bento.tar.gz, a folder DVC tracks and pushes. On another
machine, after `git pull` and `dvc pull`, whatever needs a production model that its store lacks
(the gate, `tasks.production show` and serve, the service, the monitor) imports it from there.
"""
from __future__ import annotations

import json
import os
import subprocess
import sys
import time
from pathlib import Path

import yaml
from filelock import FileLock

from tasks.common.config import UserError
from tasks.common.files import write_text_atomic
from tasks.common.paths import STORE_ARCHIVES

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


def archive_path(tag: str, archives: Path = STORE_ARCHIVES) -> Path:
    """Where promotion leaves the Bento that serves model `tag`, for other machines."""
    name, _, version = tag.partition(":")
    return archives / f"{name}-{version}.bento.tar.gz"  # gzip: the weights hardly compress, xz is slow


def check_in_store(tag: str, home: str | Path | None = None, archives: Path = STORE_ARCHIVES) -> None:
    """Model `tag` is in the BentoML store at `home` (default: $BENTOML_HOME, else ~/bentoml), imported
    from its archive under `archives` (with its Bento) when this machine's store lacks it."""
    if _model_yaml(tag, home).is_file():
        return
    archive = archive_path(tag, archives)
    if not archive.is_file():
        raise UserError(f"model {tag} is not in the BentoML model store under {store_home(home)}, nor archived "
                        f"as {archive}; run dvc pull (it brings {archives}), or roll back")
    store_home(home).mkdir(parents=True, exist_ok=True)
    with FileLock(store_home(home) / ".import.lock"):  # the service's workers may all ask at once
        if not _model_yaml(tag, home).is_file():
            _bentoml(["import", str(archive.resolve())], home, f"importing {archive}")
    if not _model_yaml(tag, home).is_file():
        raise UserError(f"{archive} does not hold model {tag}; restore it with dvc checkout {archives}")


def archive_bento(tag: str, bento: str, home: str | Path | None = None, archives: Path = STORE_ARCHIVES) -> Path:
    """Export the Bento `bento` (with model `tag` inside) to the archive folder, once per model."""
    target = archive_path(tag, archives)
    if not target.is_file():
        partial = target.with_name(f".partial{os.getpid()}-{target.name}")  # same suffix: BentoML reads it
        target.parent.mkdir(parents=True, exist_ok=True)
        try:  # a half-written archive never looks finished
            _bentoml(["export", bento, str(partial.resolve())], home, f"exporting {bento}")
            partial.replace(target)
        finally:
            partial.unlink(missing_ok=True)
    return target


def prune_archives(pointer: dict, keep: int, archives: Path = STORE_ARCHIVES, min_age_hours: float = 24) -> list[Path]:
    """Delete archived Bentos that serve neither production nor one of the last `keep` models before
    it (what a rollback reaches). One written in the last `min_age_hours` stays: a promotion may be
    exporting it before it names it in the pointer. Older versions stay in DVC's cache and remote."""
    entries = [pointer["current"], *[entry for entry in pointer["previous"] if entry][:keep]]
    wanted = {archive_path(entry["model"], archives).name for entry in entries if entry}
    young = time.time() - min_age_hours * 3600
    removed = [path for path in sorted(archives.glob("*.bento.tar.gz"))
               if path.name not in wanted and path.stat().st_mtime < young]
    for path in removed:
        path.unlink(missing_ok=True)
    return removed


def _bentoml(args: list[str], home: str | Path | None, doing: str) -> None:
    """The bentoml command line on the store at `home` (a child process: BentoML fixes its home once
    per process, and the caller's may be another)."""
    env = {**os.environ, "BENTOML_HOME": str(store_home(home)), "BENTOML_DO_NOT_TRACK": "True"}
    done = subprocess.run([sys.executable, "-m", "bentoml", *args], env=env, capture_output=True, text=True)
    if done.returncode != 0:
        last = (done.stderr.strip() or done.stdout.strip() or "no output").splitlines()[-1]
        raise UserError(f"{doing} failed: {last}")


def model_metadata(tag: str, home: str | Path | None = None) -> dict | None:
    """The metadata the model was saved with (e.g. metrics, lineage); None when it is not in the store."""
    path = _model_yaml(tag, home)
    if not path.is_file():
        return None
    info = yaml.safe_load(path.read_text()) or {}
    return info.get("metadata") or {}
