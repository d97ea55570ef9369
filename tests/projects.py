"""Scratch projects laid out like this one (code, dvc.yaml, params.yaml, a tiny image folder), and the
one trained project that the end-to-end tests share.

The trained project is the real flow run once over the real dvc.yaml (one epoch on 30 16 px images):
built once per test session, read-only. A test that changes it works on `copy_trained(...)`, a copy of
the repo, its BentoML store and its DVC remote that costs a second.
"""
from __future__ import annotations

import shutil
import subprocess
import sys
from dataclasses import dataclass, replace
from pathlib import Path

import yaml

from tasks.common.paths import POINTER
from tasks.model.registry import write_pointer
from tests.conftest import PROJECT_ROOT, write_image_set

CLASSES = {"cat": 10, "dog": 10, "fox": 10}  # conftest colours: red, green, blue


def new_project(root: Path, classes: dict[str, int] = CLASSES, code: tuple[str, ...] = ("tasks", "service"),
                git: bool = False, **sections: dict) -> Path:
    """A DVC project at `root` reading `images/`: the given code folders, dvc.yaml, params.yaml with
    one training epoch (two label-quality folds of one epoch) and `sections` merged in (one level deep), no production model yet.

    With `git`, a git repo too (the project's .gitignore files), with nothing committed yet.
    """
    root.mkdir(parents=True)
    for folder in code:
        shutil.copytree(PROJECT_ROOT / folder, root / folder, ignore=shutil.ignore_patterns("__pycache__"))
    for file in ("dvc.yaml", ".dvcignore", ".gitignore", "deploy/.gitignore"):
        (root / file).parent.mkdir(parents=True, exist_ok=True)
        shutil.copy(PROJECT_ROOT / file, root / file)
    write_pointer(root / POINTER, {"current": None, "previous": []})  # whatever this checkout's says
    raw = yaml.safe_load((PROJECT_ROOT / "params.yaml").read_text())
    raw["data"]["root"] = "images"
    raw["train"].update({"epochs": 1, "batch_size": 16})
    # Two one-epoch folds over 30 noisy images flag many honest labels: never a reason to stop here.
    raw["labels"].update({"folds": 2, "epochs": 1, "max_share": 1.0})
    for name, values in sections.items():
        raw[name] = {**raw[name], **values}
    (root / "params.yaml").write_text(yaml.safe_dump(raw, sort_keys=False))
    (root / "data/traffic").mkdir(parents=True)
    (root / "data/traffic/.gitkeep").touch()
    write_image_set(root / "images", classes)
    if git:
        subprocess.run(["git", "init", "-q"], cwd=root, check=True)
    subprocess.run([sys.executable, "-m", "dvc", "init", "-q", *([] if git else ["--no-scm"])], cwd=root, check=True)
    return root


def set_params(project: Path, section: str, **values) -> None:
    """Change keys of one params.yaml section, as a user editing the file would."""
    raw = yaml.safe_load((project / "params.yaml").read_text())
    raw[section].update(values)
    (project / "params.yaml").write_text(yaml.safe_dump(raw, sort_keys=False))


@dataclass(frozen=True)
class Trained:
    """A project the flow ran through: promoted, pushed, every stage in dvc.lock."""

    repo: Path  # the DVC project
    bentoml_home: Path  # its BentoML store (model and Bento of the package stage)
    remote: Path  # its default DVC remote, a local folder
    summary: dict  # what the flow returned
    flow_run_id: str

    @property
    def base(self) -> Path:
        return self.repo.parent


def copy_trained(trained: Trained, dest: Path) -> Trained:
    """A private copy (repo, BentoML store, remote) that a test may change; its remote is its own."""
    shutil.copytree(trained.base, dest, symlinks=True, ignore=shutil.ignore_patterns("tmp"))
    config = dest / "repo/.dvc/config"
    config.write_text(config.read_text().replace(str(trained.remote), str(dest / trained.remote.name)))
    return replace(trained, repo=dest / "repo", bentoml_home=dest / trained.bentoml_home.name,
                   remote=dest / trained.remote.name)


def under_git(repo: Path) -> Path:
    """Make a copied (DVC-only) project a git repo as well, nothing committed yet."""
    config = repo / ".dvc/config"
    config.write_text(config.read_text().replace("no_scm = True", "no_scm = False"))
    subprocess.run(["git", "init", "-q"], cwd=repo, check=True)
    return repo
