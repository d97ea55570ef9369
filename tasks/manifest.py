"""The manifest: one row per file under data.root, with what its bytes really are.

Columns: path (relative to data.root), label (class folder), format (detected from content),
mode, width, height, bytes, sha256, decodes, error. The validate stage builds it; clean and later
stages read it with read_manifest. data.root is only ever read.
"""
from __future__ import annotations

import hashlib
import io
import warnings
from pathlib import Path

import pandas as pd
from PIL import Image, UnidentifiedImageError
from tqdm import tqdm

from tasks import images  # noqa: F401  (sets PIL's pixel limit that build_manifest enforces)
from tasks.config import Params, UserError

MANIFEST_FILE = Path("data/manifest.csv")
MANIFEST_COLUMNS = [
    "path", "label", "format", "mode", "width", "height", "bytes", "sha256", "decodes", "error",
]
MANIFEST_DTYPES = {
    "path": str, "label": str, "format": str, "mode": str, "width": "Int64", "height": "Int64",
    "bytes": "int64", "sha256": str, "decodes": bool, "error": str,
}

# --- data.root layout ---------------------------------------------------------------------------


def resolve_root(params: Params, workdir: Path) -> Path:
    # pathlib keeps an absolute data.root as it is and joins a relative one to workdir.
    return workdir / params.data.root


def check_layout(root: Path) -> tuple[list[Path], list[str]]:
    """Fail fast on a root that cannot hold a classification data set.

    Returns every file under root (hidden ones included, sorted by relative path) and the
    class names (its sub-folders).
    """
    if not root.exists():
        raise UserError(
            f"data.root {root} does not exist; set data.root in params.yaml to your image folder "
            "(the default data/sample is written by `python -m tasks.sample`)"
        )
    if not root.is_dir():
        raise UserError(f"data.root {root} is a file; point it at a folder of class sub-folders")
    files = sorted(
        (p for p in root.rglob("*") if p.is_file()), key=lambda p: p.relative_to(root).as_posix()
    )
    if not files:
        raise UserError(f"data.root {root} contains no files; put one folder of images per class in it")
    classes = sorted(p.name for p in root.iterdir() if p.is_dir())
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
    return files, classes


def check_outputs_outside(root: Path, outputs: list[Path]) -> None:
    """The stage never writes under data.root, so its outputs must not overlap that folder."""
    root = root.resolve()
    for out in outputs:
        out = out.resolve()
        if out.is_relative_to(root) or root.is_relative_to(out):
            raise UserError(
                f"data.root {root} overlaps the stage output {out}; keep the images in a folder "
                "of their own, e.g. data/images"
            )


def check_classes_have_images(manifest: pd.DataFrame, classes: list[str]) -> None:
    """Each class folder needs at least one file that is an image by its content."""
    with_images = set(manifest.loc[manifest["format"] != "", "label"])
    empty = [label for label in classes if label not in with_images]
    if empty:
        names = ", ".join(repr(label) for label in empty[:5]) + (" ..." if len(empty) > 5 else "")
        raise UserError(
            f"class folder(s) {names} under data.root contain no image files; add images or "
            "remove the folder"
        )


# --- manifest -----------------------------------------------------------------------------------


def failure_reason(err: Exception) -> str:
    """A short reason for the manifest's error column."""
    name = type(err).__name__
    if isinstance(err, (Image.DecompressionBombError, Image.DecompressionBombWarning)):
        return f"too many pixels ({name})"
    if isinstance(err, UnidentifiedImageError):
        return f"not an image ({name})"
    detail = str(err).splitlines()[0][:80] if str(err) else ""
    return f"truncated or corrupt ({name}: {detail})" if detail else f"truncated or corrupt ({name})"


def inspect_file(path: Path, root: Path) -> dict:
    """One manifest row: identity, content hash and what PIL makes of the bytes."""
    rel = path.relative_to(root).as_posix()
    row = {
        "path": rel, "label": rel.split("/")[0] if "/" in rel else "", "format": "", "mode": "",
        "width": None, "height": None, "bytes": 0, "sha256": "", "decodes": False, "error": "",
    }
    try:
        data = path.read_bytes()
    except OSError as err:
        return {**row, "bytes": path.stat().st_size, "error": f"cannot read ({type(err).__name__})"}
    row.update(bytes=len(data), sha256=hashlib.sha256(data).hexdigest())
    if not data:
        return {**row, "error": "empty file"}
    try:
        with Image.open(io.BytesIO(data)) as img:
            # Header facts first: a truncated file still tells its format and size.
            row.update(format=img.format or "", mode=img.mode, width=img.width, height=img.height)
            img.load()
        row["decodes"] = True
    except Exception as err:  # noqa: BLE001  a corrupt file can make a PIL plugin raise almost anything
        row["error"] = failure_reason(err)
    return row


def build_manifest(root: Path, files: list[Path]) -> pd.DataFrame:
    """Inspect every file in order. An image over PIL's pixel limit is an error, not a warning."""
    with warnings.catch_warnings():
        warnings.simplefilter("error", Image.DecompressionBombWarning)
        rows = [inspect_file(p, root) for p in tqdm(files, desc="validate: reading files", unit="file", disable=None)]
    return pd.DataFrame(rows, columns=MANIFEST_COLUMNS).astype(MANIFEST_DTYPES)


def write_manifest(manifest: pd.DataFrame, path: Path) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    manifest.to_csv(path, index=False)


def read_manifest(path: str | Path) -> pd.DataFrame:
    """Read data/manifest.csv with the dtypes it was written with (labels like "0" stay strings)."""
    return pd.read_csv(
        path, dtype=MANIFEST_DTYPES, keep_default_na=False, na_values={"width": [""], "height": [""]}
    )


def class_counts(manifest: pd.DataFrame, classes: list[str]) -> pd.DataFrame:
    """Files and decodable images per class folder (files directly under data.root are in none)."""
    grouped = manifest[manifest["label"] != ""].groupby("label")
    counts = pd.DataFrame({"files": grouped.size(), "images": grouped["decodes"].sum()})
    counts = counts.reindex(classes, fill_value=0).astype("int64")
    return counts.rename_axis("label").reset_index()
