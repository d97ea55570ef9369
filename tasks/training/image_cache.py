"""Decode each dataset version once into a uint8 array at training resolution, memory-mapped from disk.

Decoding PNG/JPEG files is what starves a GPU (and most of a CPU epoch); a cached epoch is a gather
from one array. An image is stored as evaluation sees it before the final crop: short side resized
to `side`, centre-cropped square, RGB, (side, side, 3) uint8. The cache file is named by a digest of
the file list (path, size, mtime) and the side, so a changed dataset or resolution builds a new one;
only the KEEP most recently used files stay, and `.cache/images` can be deleted at any time.
"""
from __future__ import annotations

import hashlib
import os
from functools import partial
from pathlib import Path
from typing import Sequence

import numpy as np
from torchvision.transforms import v2

from tasks.common.config import UserError
from tasks.common.files import atomic_path
from tasks.common.parallel import map_chunks
from tasks.common.paths import CACHE_DIR as CACHE_ROOT
from tasks.data.images import open_rgb

CACHE_DIR = CACHE_ROOT / "images"
CACHE_VERSION = 1  # bump when the stored pixels change, so old caches are ignored
KEEP = 6  # most recently used cache files kept: train and val of the last three dataset versions


def cache_side(image_size: int, crop_pct: float) -> int:
    """The stored side: evaluation centre-crops image_size out of it, training crops at random."""
    return round(image_size / crop_pct)


def square_pixels(path: str | Path, side: int) -> np.ndarray:
    """One image as (side, side, 3) uint8: short side resized (antialiased), centre crop."""
    img = v2.functional.center_crop(v2.functional.resize(open_rgb(path), side, antialias=True), [side, side])
    return np.array(img, dtype=np.uint8)  # a writable copy


def cache_key(files: Sequence[Path], side: int) -> str:
    digest = hashlib.sha256(f"v{CACHE_VERSION} side {side}\n".encode())
    for file in files:
        try:
            stat = os.stat(file)
        except OSError:
            raise UserError(f"{file} is listed in the split but missing; re-run the clean stage (dvc repro clean)") from None
        digest.update(f"{file}\0{stat.st_size}\0{stat.st_mtime_ns}\n".encode())
    return digest.hexdigest()[:20]


def _fill(path: Path, shape: tuple[int, ...], side: int, chunk: Sequence[tuple[int, Path]]) -> list[int]:
    """Decode a chunk of (row, file) straight into the shared file: no pixels travel between processes."""
    array = np.memmap(path, dtype=np.uint8, mode="r+", shape=shape)
    for row, file in chunk:
        array[row] = square_pixels(file, side)
    array.flush()
    return [row for row, _ in chunk]


def image_cache(files: Sequence[Path], side: int, cache_dir: Path, desc: str = "caching") -> np.ndarray:
    """The (N, side, side, 3) uint8 pixels of `files`, decoded on every core the first time.

    Opened copy-on-write: pages load from disk as they are touched, the file is never written.
    """
    if not files:
        raise UserError("no images to cache: the split is empty; re-run the split stage (dvc repro split)")
    shape = (len(files), side, side, 3)
    path = cache_dir / f"{cache_key(files, side)}_{side}px.u8"
    if not path.is_file():
        with atomic_path(path) as partial_path:  # a killed build never looks complete
            np.memmap(partial_path, dtype=np.uint8, mode="w+", shape=shape).flush()
            map_chunks(partial(_fill, partial_path, shape, side), list(enumerate(files)), desc=desc)
        prune(cache_dir, "*.u8", KEEP)
    os.utime(path)  # marks it used
    return np.memmap(path, dtype=np.uint8, mode="c", shape=shape)


def prune(directory: Path, pattern: str, keep: int) -> None:
    """Delete all but the `keep` most recently used files matching `pattern`."""
    files = sorted(directory.glob(pattern), key=lambda f: f.stat().st_mtime, reverse=True)
    for stale in files[keep:]:
        stale.unlink(missing_ok=True)
