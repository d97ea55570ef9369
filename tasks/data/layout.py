"""What lies under data.root: every entry, its class label, and user-made train/val/test folders.

Two layouts are understood:
    data.root/<class>/**/<image>                    the pipeline splits the images itself
    data.root/{train,val,test}/<class>/**/<image>   the user's splits are honoured
Nested sub-folders belong to their top class folder. Symlinks are not followed out of data.root,
and nothing here reads file contents.
"""
from __future__ import annotations

import os
import stat
from pathlib import Path
from typing import NamedTuple

from tasks.common.config import Params, UserError

SPLIT_FOLDERS = ("train", "val", "test")


class Entry(NamedTuple):
    """One file or symlink under data.root (a named tuple: cheap to build for 100k files)."""

    path: str  # relative to data.root, POSIX separators
    label: str  # class folder ("" for a file outside any class folder)
    split: str  # "train" | "val" | "test" from the user's folders, else ""
    hidden: bool  # a path component starts with "."
    symlink: str  # "" | "to_file" (inside data.root, read) | "leaves_root" | "folder" | "broken"
    regular: bool  # False for FIFOs, sockets and devices: never opened
    size: int
    mtime_ns: int


def resolve_root(params: Params, workdir: Path) -> Path:
    # pathlib keeps an absolute data.root as it is and joins a relative one to workdir.
    return workdir / params.data.root


def has_split_folders(root: Path) -> bool:
    """True when data.root holds only train/val/test folders (train and at least one other)."""
    folders = {p.name for p in root.iterdir() if p.is_dir() and not p.name.startswith(".")}
    return "train" in folders and len(folders) >= 2 and folders <= set(SPLIT_FOLDERS)


def _symlink_kind(path: str, real_root: Path) -> str:
    target = Path(os.path.realpath(path))
    if not target.exists():
        return "broken"
    if not target.is_relative_to(real_root):
        return "leaves_root"
    return "folder" if target.is_dir() else "to_file"


def _scan(folder: str, prefix: str, found: list[tuple[str, os.DirEntry]]) -> None:
    """(relative path, entry) of everything under folder that is not a real sub-folder."""
    with os.scandir(folder) as it:
        for entry in it:
            if entry.is_dir(follow_symlinks=False):
                _scan(entry.path, f"{prefix}{entry.name}/", found)
            else:
                found.append((prefix + entry.name, entry))


def list_entries(root: Path) -> list[Entry]:
    """Every file and symlink under root, sorted by path. Symlinked folders are listed, not entered.

    os.scandir keeps this at a few microseconds per file, so listing 100k files takes well under
    a second: a cached re-validation costs little more than this listing.
    """
    real_root, split_layout = Path(os.path.realpath(root)), has_split_folders(root)
    found: list[tuple[str, os.DirEntry]] = []
    _scan(str(root), "", found)
    entries = []
    for rel, entry in sorted(found, key=lambda item: item[0]):
        parts = rel.split("/", 2 if split_layout else 1)
        label_parts = parts[1:] if split_layout else parts
        symlink = _symlink_kind(entry.path, real_root) if entry.is_symlink() else ""
        st = os.stat(entry.path) if symlink == "to_file" else entry.stat(follow_symlinks=False)
        entries.append(Entry(
            rel,
            label_parts[0] if len(label_parts) > 1 else "",
            parts[0] if split_layout else "",
            rel.startswith(".") or "/." in rel,
            symlink,
            symlink != "" or stat.S_ISREG(st.st_mode),
            st.st_size,
            st.st_mtime_ns,
        ))
    return entries


def class_folders(root: Path) -> list[str]:
    """Class names: the folders under data.root, or under each of its split folders."""
    parents = [root / s for s in SPLIT_FOLDERS if (root / s).is_dir()] if has_split_folders(root) else [root]
    return sorted({p.name for parent in parents for p in parent.iterdir()
                   if p.is_dir() and not p.name.startswith(".")})


def check_layout(root: Path) -> tuple[list[Entry], list[str]]:
    """Fail fast on a root that cannot hold a classification data set; return entries and classes."""
    if not root.exists():
        raise UserError(
            f"data.root {root} does not exist; set data.root in params.yaml to your image folder "
            "(the default data/sample is written by `python -m tasks.sample`)"
        )
    if not root.is_dir():
        raise UserError(f"data.root {root} is a file; point it at a folder of class sub-folders")
    entries = list_entries(root)
    if not entries:
        raise UserError(f"data.root {root} contains no files; put one folder of images per class in it")
    classes = class_folders(root)
    if not classes:
        raise UserError(
            f"data.root {root} has no class sub-folders; move the images into one folder per class "
            f"(e.g. {root}/cat/, {root}/dog/)"
        )
    if len(classes) == 1:
        raise UserError(
            f"data.root {root} has only one class folder ({classes[0]!r}); a classifier needs at least "
            "two: add another class folder, or point data.root at the folder that holds the classes"
        )
    return entries, classes


def check_outputs_outside(root: Path, outputs: list[Path]) -> None:
    """No stage writes under data.root, so stage outputs must not overlap that folder."""
    root = root.resolve()
    for out in outputs:
        out = out.resolve()
        if out.is_relative_to(root) or root.is_relative_to(out):
            raise UserError(
                f"data.root {root} overlaps the stage output {out}; keep the images in a folder "
                "of their own, e.g. data/images"
            )
