"""The manifest: one row per file under data.root, with what its bytes really are.

Built in parallel on every core and cached by (path, size, mtime), so re-validating an unchanged
or slightly changed folder reads only what changed. data.root is only ever read. Columns:

    path, label, split        where the file lies (see tasks/data/layout.py)
    hidden, symlink           recorded, never followed out of data.root
    bytes, sha256             identity of the content
    format, mode, bit_depth   as detected from the content (not the file name)
    width, height, frames, orientation (EXIF, 1 = upright)
    phash                     64-bit perceptual hash of decoded images ("" for flat ones; tasks/data/duplicates.py)
    decodes, problem, error   decodes fully, else a problem code and the exact error
    duplicate_group           added by the validate stage: files with the same or near-same content
"""
from __future__ import annotations

import contextlib
import hashlib
import io
import os
import warnings
from functools import partial
from pathlib import Path

import pandas as pd
from PIL import Image, UnidentifiedImageError

from tasks.common.files import atomic_path
from tasks.common.parallel import map_chunks
from tasks.common.paths import CACHE_DIR as CACHE_ROOT
from tasks.data.duplicates import hash_thumbnail, perceptual_hashes
from tasks.data.layout import Entry

CACHE_DIR = CACHE_ROOT / "manifest"
CACHE_VERSION = 7  # bump when inspect_file's output changes, so old caches are ignored

FILE_DTYPES = {
    "path": str, "label": str, "split": str, "hidden": bool, "symlink": str, "bytes": "int64",
    "sha256": str, "format": str, "mode": str, "bit_depth": "Int64", "width": "Int64",
    "height": "Int64", "frames": "Int64", "orientation": "Int64", "phash": str, "decodes": bool,
    "problem": str, "error": str,
}
MANIFEST_DTYPES = {**FILE_DTYPES, "duplicate_group": "int64"}
MANIFEST_COLUMNS = list(MANIFEST_DTYPES)
NULLABLE = [c for c, t in MANIFEST_DTYPES.items() if t == "Int64"]

# Problem codes of the `problem` column: empty, not_an_image, over_pixel_limit (never decoded),
# corrupt, unreadable, symlink_leaves_root, symlinked_folder, broken_symlink (never followed).
NOT_FOLLOWED = ("symlink_leaves_root", "symlinked_folder", "broken_symlink")  # symlinks never opened
MODE_BITS = {"1": 1, "I;16": 16, "I;16B": 16, "I;16L": 16, "I": 32, "F": 32}


def bit_depth(img: Image.Image, data: bytes) -> int:
    """Bits per channel as stored: PNG and TIFF say so in their headers, other formats by mode."""
    if img.format == "PNG" and data[12:16] == b"IHDR":
        return data[24]
    if img.format == "TIFF":
        bits = img.tag_v2.get(258)
        if bits:
            return int(max(bits if isinstance(bits, tuple) else (bits,)))
    return MODE_BITS.get(img.mode, 8)


def inspect_file(root: Path, entry: Entry, max_pixels: int) -> dict:
    """One manifest row: identity, content hash and what PIL makes of the bytes.

    Its "phash" holds the hash thumbnail (bytes) or ""; inspect_chunk turns thumbnails into hashes.
    """
    row = {
        **{k: getattr(entry, k) for k in ("path", "label", "split", "hidden", "symlink")},
        "bytes": entry.size, "sha256": "", "format": "", "mode": "", "bit_depth": None, "width": None,
        "height": None, "frames": None, "orientation": None, "phash": "", "decodes": False,
        "problem": "", "error": "",
    }
    link_problem = {"leaves_root": "symlink_leaves_root", "folder": "symlinked_folder", "broken": "broken_symlink"}
    if entry.symlink in link_problem:
        target = os.readlink(root / entry.path)
        return {**row, "problem": link_problem[entry.symlink], "error": f"symlink to {target}; not followed"}
    if not entry.regular:
        return {**row, "problem": "unreadable", "error": "not a regular file (FIFO, socket or device)"}
    try:
        data = (root / entry.path).read_bytes()
    except OSError as err:
        return {**row, "problem": "unreadable", "error": f"{type(err).__name__}: {err.strerror or err}"}
    row.update(bytes=len(data), sha256=hashlib.sha256(data).hexdigest())
    if not data:
        return {**row, "problem": "empty", "error": "zero-byte file"}
    try:
        with Image.open(io.BytesIO(data)) as img:
            # Header facts first: a truncated or oversized file still tells its format and size.
            row.update(format=img.format or "", mode=img.mode, width=img.width, height=img.height,
                       bit_depth=bit_depth(img, data))
            if img.width * img.height > max_pixels:
                return {**row, "problem": "over_pixel_limit", "error": (
                    f"{img.width}x{img.height} = {img.width * img.height / 1e6:,.0f} Mpx, over the "
                    f"{max_pixels / 1e6:g} Mpx limit (validate.max_pixels); not decoded"
                )}
            row["frames"] = getattr(img, "n_frames", 1)
            img.load()
            # Parsing EXIF costs as much as decoding a small PNG: only when the file has it.
            orientation = int(img.getexif().get(0x0112, 1) or 1) if "exif" in img.info else 1
            row.update(decodes=True, orientation=orientation, phash=hash_thumbnail(img, orientation))
    except UnidentifiedImageError:
        row.update(problem="not_an_image", error="not an image format PIL can identify")
    except Exception as err:  # noqa: BLE001  a corrupt file can make a PIL plugin raise almost anything
        detail = str(err).splitlines()[0][:100] if str(err) else ""
        row.update(decodes=False, phash="", problem="corrupt", error=f"{type(err).__name__}: {detail}".rstrip(": "))
    return row


@contextlib.contextmanager
def own_pixel_limit():
    """inspect_file checks header sizes against max_pixels itself, so PIL's own guard is off.

    Warnings (odd EXIF, truncated TIFF tags) are silenced: the row records what matters.
    """
    saved = Image.MAX_IMAGE_PIXELS
    Image.MAX_IMAGE_PIXELS = None
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            yield
    finally:
        Image.MAX_IMAGE_PIXELS = saved


def inspect_chunk(entries: list[Entry], root: Path, max_pixels: int) -> list[dict]:
    """Rows for a chunk of files; their perceptual hashes are computed together, in one pass."""
    with own_pixel_limit():
        rows = [inspect_file(root, e, max_pixels) for e in entries]
    for row, phash in zip(rows, perceptual_hashes([r["phash"] or None for r in rows])):
        row["phash"] = phash
    return rows


# --- cache --------------------------------------------------------------------------------------


def cache_file(workdir: Path, root: Path, max_pixels: int) -> Path:
    """One cache per data.root and pixel limit; the code version is part of the name."""
    key = f"{Path(os.path.realpath(root))}|{max_pixels}|v{CACHE_VERSION}"
    return workdir / CACHE_DIR / f"{hashlib.sha1(key.encode()).hexdigest()[:16]}.parquet"


def entry_frame(entries: list[Entry]) -> pd.DataFrame:
    return pd.DataFrame({
        "path": [e.path for e in entries], "cache_size": [e.size for e in entries],
        "cache_mtime_ns": [e.mtime_ns for e in entries],
    })


def read_cache(path: Path) -> pd.DataFrame:
    """Cached rows with their (cache_size, cache_mtime_ns); an unreadable cache is simply empty."""
    try:
        return pd.read_parquet(path)
    except Exception:  # noqa: BLE001  a missing or damaged cache only costs time
        return pd.DataFrame(columns=[*FILE_DTYPES, "cache_size", "cache_mtime_ns"])


def write_cache(path: Path, table: pd.DataFrame) -> None:
    with atomic_path(path) as partial:  # an interrupted run never leaves half a cache
        table.to_parquet(partial, index=False)


def file_frame(rows: list[dict]) -> pd.DataFrame:
    return pd.DataFrame(rows, columns=list(FILE_DTYPES)).astype(FILE_DTYPES)


def build_manifest(
    root: Path, entries: list[Entry], max_pixels: int, workdir: Path, workers: int | None = None
) -> tuple[pd.DataFrame, dict]:
    """Rows for every entry, reusing cached rows of files whose (path, size, mtime) are unchanged.

    Returns the file columns sorted by path (no duplicate_group yet) and {"files", "read", "cached"}.
    """
    cache_path = cache_file(workdir, root, max_pixels)
    keys, cache = entry_frame(entries), read_cache(cache_path)
    cached = keys.merge(cache, on=["path", "cache_size", "cache_mtime_ns"], how="inner")
    reuse = keys["path"].isin(cached["path"]).to_numpy()
    todo = [e for e, hit in zip(entries, reuse) if not hit]
    fresh = map_chunks(
        partial(inspect_chunk, root=root, max_pixels=max_pixels), todo,
        desc=f"validate: reading {len(todo)} new or changed files", workers=workers,
    )
    if todo:
        new = file_frame(fresh).merge(keys, on="path")
        table = pd.concat([cached.astype(new.dtypes.to_dict()), new]) if len(cached) else new
        table = table.sort_values("path", kind="stable").reset_index(drop=True)
    else:
        table = cached  # an inner merge keeps the order of `keys`: sorted by path already
    if todo or len(cache) != len(table):  # new, changed or deleted files
        write_cache(cache_path, table)
    stats = {"files": len(entries), "read": len(todo), "cached": len(entries) - len(todo)}
    return table[list(FILE_DTYPES)].astype(FILE_DTYPES, copy=False), stats


def write_manifest(manifest: pd.DataFrame, path: Path) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    manifest[MANIFEST_COLUMNS].to_csv(path, index=False)


def read_manifest(path: str | Path) -> pd.DataFrame:
    """Read data/manifest.csv with the dtypes it was written with (labels like "0" stay strings)."""
    return pd.read_csv(
        path, dtype=MANIFEST_DTYPES, keep_default_na=False, na_values={c: [""] for c in NULLABLE}
    )


def class_counts(manifest: pd.DataFrame, classes: list[str]) -> pd.DataFrame:
    """Files and decodable images per class folder (files outside class folders are in none)."""
    grouped = manifest[manifest["label"] != ""].groupby("label")
    counts = pd.DataFrame({"files": grouped.size(), "images": grouped["decodes"].sum()})
    counts = counts.reindex(classes, fill_value=0).astype("int64")
    return counts.rename_axis("label").reset_index()
