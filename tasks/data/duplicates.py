"""Perceptual hashes and duplicate groups: exact copies and resized or re-encoded near-copies.

Two images are near-copies when their 64-bit pHashes (DCT of a 32x32 grey thumbnail, low
frequencies against their median) are within validate.near_duplicate_distance bits (resized or
re-encoded photos: 0-4 bits; unrelated photos: 18-40) and a second, pixel-level check on a common
blurred 16x16 thumbnail agrees (`same_pictures`). The hash finds candidates fast; the check keeps
apart distinct images whose hashes are close anyway, as low-detail images' are: distinct digits
scans come within 2-4 bits of each other at any size.

Small images (16 to 31 px on the shorter side) are hashed too, upscaled to the thumbnail; their
copies drift further in the hash, so a pair with a small image is a candidate within
SMALL_CANDIDATE_BITS. Images under 16 px and flat images get no hash: only identical bytes match them.

The candidate search is sub-quadratic by the pigeonhole principle: cut the 64 bits into
max_distance + 1 bands; two hashes within max_distance bits agree exactly on at least one band.
So only hashes that share a band value are compared.
"""
from __future__ import annotations

from functools import partial
from pathlib import Path

import numpy as np
import pandas as pd
from PIL import Image
from scipy.sparse import coo_matrix
from scipy.sparse.csgraph import connected_components

from tasks.common.parallel import map_chunks
from tasks.data.images import to_8bit

HASH_SIZE = 32  # thumbnail side; the hash keeps its 8x8 lowest frequencies
HASH_MIN_SIDE = 16  # smaller images get no hash (8 px digits upscaled 4x have too little to tell apart)
SMALL_CANDIDATE_BITS = 8  # a pair with a small image is a candidate within this many bits, then confirmed
CONFIRM_SIZE = 16  # side of the common thumbnail the pixel check compares
_BLUR = np.array([1.0, 4.0, 6.0, 4.0, 1.0]) / 16.0  # binomial blur: resampling and JPEG noise matter less
_k = np.arange(HASH_SIZE)
_DCT = np.sqrt(2 / HASH_SIZE) * np.cos(np.pi * (2 * _k[None, :] + 1) * _k[:, None] / (2 * HASH_SIZE))
_DCT[0] /= np.sqrt(2)
_LOW = np.ascontiguousarray(_DCT[:8], dtype=np.float32)  # only the 8 lowest frequencies are kept


# EXIF orientation -> the transpose that undoes it (as in PIL.ImageOps.exif_transpose).
UNDO_ORIENTATION = {
    2: Image.Transpose.FLIP_LEFT_RIGHT, 3: Image.Transpose.ROTATE_180, 4: Image.Transpose.FLIP_TOP_BOTTOM,
    5: Image.Transpose.TRANSPOSE, 6: Image.Transpose.ROTATE_270, 7: Image.Transpose.TRANSVERSE,
    8: Image.Transpose.ROTATE_90,
}


def grey_thumbnail(img: Image.Image) -> Image.Image:
    """HASH_SIZE-square 8-bit grey thumbnail: a cheap box reduce by a whole factor down to at least
    twice the side, then bilinear (enlarging small images smoothly; a box filter all the way down
    misaligns sizes that are not multiples of 32 and pushes their resized copies apart)."""
    img = to_8bit(img)
    if img.mode not in ("L", "RGB", "RGBA"):
        img = img.convert("L")
    factor = min(img.size) // (2 * HASH_SIZE)
    if factor > 1:
        img = img.reduce(factor)
    return img.convert("L").resize((HASH_SIZE, HASH_SIZE), Image.Resampling.BILINEAR)


def hash_thumbnail(img: Image.Image, orientation: int = 1) -> bytes | None:
    """The upright 32x32 grey thumbnail a pHash is computed from, or None for no hash.

    Two kinds of image get no hash and are matched only by their bytes: images under
    HASH_MIN_SIDE and flat images (one colour has no structure, and all flat images would share
    one hash).
    """
    if min(img.size) < HASH_MIN_SIDE:
        return None
    thumb = grey_thumbnail(img)
    lo, hi = thumb.getextrema()
    if hi - lo < 2:
        return None
    if orientation in UNDO_ORIENTATION:
        thumb = thumb.transpose(UNDO_ORIENTATION[orientation])
    return thumb.tobytes()


def perceptual_hashes(thumbnails: list[bytes | None]) -> list[str]:
    """pHashes (16 hex digits, "" for None) of many thumbnails in one vectorized pass.

    Batched because per-image NumPy calls would cost as much as decoding a small PNG.
    """
    present = [i for i, t in enumerate(thumbnails) if t is not None]
    hashes = [""] * len(thumbnails)
    if present:
        pixels = np.frombuffer(b"".join(thumbnails[i] for i in present), dtype=np.uint8)
        pixels = pixels.reshape(-1, HASH_SIZE, HASH_SIZE).astype(np.float32)
        low = (_LOW @ pixels @ _LOW.T).reshape(len(present), 64)
        median = np.partition(low[:, 1:], 31, axis=1)[:, 31:32]  # of the 63 AC terms: DC is brightness
        packed = np.packbits(low > median, axis=1)
        for i, row in zip(present, packed):
            hashes[i] = row.tobytes().hex()
    return hashes


def pairs_within(hashes: np.ndarray, max_distance: int, among: np.ndarray | None = None) -> np.ndarray:
    """Index pairs (i, j), i < j, of uint64 hashes at most max_distance bits apart; with `among`
    (a boolean mask), only pairs with at least one member in it."""
    among = np.ones(len(hashes), dtype=bool) if among is None else among
    edges = np.linspace(0, 64, max_distance + 2).astype(int)
    found = [np.empty((0, 2), dtype=np.int64)]
    for lo, hi in zip(edges[:-1], edges[1:]):
        key = (hashes >> np.uint64(lo)) & np.uint64((1 << (hi - lo)) - 1)
        order = np.argsort(key, kind="stable")
        starts = np.flatnonzero(np.r_[True, key[order][1:] != key[order][:-1]])
        for members in np.split(order, starts[1:]):
            queries = members[among[members]]
            if len(members) < 2 or len(queries) == 0:
                continue
            close = np.bitwise_count(hashes[queries][:, None] ^ hashes[members][None, :]) <= max_distance
            a, b = queries[np.nonzero(close)[0]], members[np.nonzero(close)[1]]
            found.append(np.stack([np.minimum(a, b), np.maximum(a, b)], 1)[a != b])
    return np.unique(np.concatenate(found), axis=0)


def confirm_thumbnail(path: Path, orientation: int = 1) -> np.ndarray | None:
    """The blurred CONFIRM_SIZE-square grey thumbnail (float64) the pixel check compares, upright;
    None when the file no longer decodes."""
    try:
        with Image.open(path) as img:
            img.draft("L", (4 * CONFIRM_SIZE, 4 * CONFIRM_SIZE))  # a large JPEG decodes at a fraction of its size
            img.load()
            grey = to_8bit(img).convert("L")
    except Exception:  # noqa: BLE001  it decoded when the manifest was made; now it is only not a match
        return None
    if orientation in UNDO_ORIENTATION:
        grey = grey.transpose(UNDO_ORIENTATION[orientation])
    if grey.size != (CONFIRM_SIZE, CONFIRM_SIZE):
        grey = grey.resize((CONFIRM_SIZE, CONFIRM_SIZE), Image.Resampling.BICUBIC)
    x = np.pad(np.asarray(grey, dtype=np.float64), 2, mode="edge")
    x = sum(w * x[:, i:i + CONFIRM_SIZE] for i, w in enumerate(_BLUR))
    return sum(w * x[i:i + CONFIRM_SIZE] for i, w in enumerate(_BLUR))


def _confirm_chunk(jobs: list[tuple[str, int]], root: Path) -> list[np.ndarray | None]:
    return [confirm_thumbnail(root / path, orientation) for path, orientation in jobs]


def same_pictures(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    """Per pair of confirm thumbnails (N, 16, 16): the same picture, resized or re-encoded?

    Pearson correlation of the pixels of at least 0.997, or at least 0.95 with a mean absolute
    difference of at most 3 grey levels (low-contrast copies, whose JPEG noise lowers the
    correlation). Measured on the digits upscaled to 16-56 px: every resized or re-encoded copy
    passes, and no pair of distinct digits does (docs/data_quality.md).
    """
    a, b = a.reshape(len(a), -1), b.reshape(len(b), -1)
    da, db = a - a.mean(1, keepdims=True), b - b.mean(1, keepdims=True)
    spread = np.sqrt((da * da).sum(1) * (db * db).sum(1))
    r = np.where(spread > 0, (da * db).sum(1) / np.where(spread > 0, spread, 1.0), 0.0)
    return (r >= 0.997) | ((r >= 0.95) & (np.abs(a - b).mean(1) <= 3.0))


def confirmed(pairs: np.ndarray, files: pd.DataFrame, root: Path) -> np.ndarray:
    """The pairs whose two images pass the pixel check; each image is decoded once, on every core."""
    if len(pairs) == 0:
        return pairs
    rows = np.unique(pairs)
    jobs = list(zip(files["path"].to_numpy()[rows], files["orientation"].to_numpy(dtype="int64", na_value=1)[rows]))
    thumbs = map_chunks(partial(_confirm_chunk, root=root), jobs, desc="validate: confirming near-duplicate candidates")
    blank = np.full((CONFIRM_SIZE, CONFIRM_SIZE), np.nan)
    stack = np.stack([blank if t is None else t for t in thumbs])
    position = np.searchsorted(rows, pairs)
    return pairs[same_pictures(stack[position[:, 0]], stack[position[:, 1]])]


def connected_groups(n: int, pairs: np.ndarray) -> np.ndarray:
    """Group id per item, the smallest index in its group: connected components of the pairs."""
    graph = coo_matrix((np.ones(len(pairs), dtype=np.int8), (pairs[:, 0], pairs[:, 1])), shape=(n, n))
    _, component = connected_components(graph, directed=False)
    smallest = np.full(component.max() + 1 if n else 0, n)
    np.minimum.at(smallest, component, np.arange(n))
    return smallest[component]


def near_duplicate_pairs(files: pd.DataFrame, max_distance: int, root: Path) -> np.ndarray:
    """Row pairs of decoded files that are near-copies: hashes within max_distance bits (within
    SMALL_CANDIDATE_BITS when either image is under HASH_SIZE px), confirmed pixel by pixel."""
    hashed = np.flatnonzero(files["phash"].to_numpy() != "")
    if max_distance < 0 or len(hashed) == 0:
        return np.empty((0, 2), dtype=np.int64)
    hashes = np.array([int(h, 16) for h in files["phash"].to_numpy()[hashed]], dtype=np.uint64)
    sides = files[["width", "height"]].to_numpy(dtype="int64", na_value=0)[hashed]
    small = sides.min(1) < HASH_SIZE
    candidates = hashed[np.unique(np.concatenate([
        pairs_within(hashes, max_distance),
        pairs_within(hashes, max(max_distance, SMALL_CANDIDATE_BITS), among=small),
    ]), axis=0)]
    sha = files["sha256"].to_numpy()
    different_bytes = sha[candidates[:, 0]] != sha[candidates[:, 1]]  # identical files are linked anyway
    return confirmed(candidates[different_bytes], files, root)


def duplicate_groups(manifest: pd.DataFrame, max_distance: int, root: Path) -> pd.Series:
    """Duplicate group of every decoded file: rows with the same bytes, or near-copies (see
    near_duplicate_pairs; max_distance -1 switches near-copies off).

    The group id is the manifest row number of the group's first file; rows that did not decode
    get -1. A file with no copy is a group of one.
    """
    decoded = manifest.index[manifest["decodes"].to_numpy()]
    groups = pd.Series(-1, index=manifest.index, dtype="int64")
    if len(decoded) == 0:
        return groups
    files = manifest.loc[decoded].reset_index(drop=True)
    same_bytes = files.groupby("sha256").ngroup().to_numpy()
    first = pd.Series(np.arange(len(files))).groupby(same_bytes).transform("min").to_numpy()
    exact = np.stack([first, np.arange(len(files))], 1)[first != np.arange(len(files))]
    near = near_duplicate_pairs(files, max_distance, root)
    ids = connected_groups(len(files), np.concatenate([exact, near]).astype(np.int64))
    groups[decoded] = decoded.to_numpy()[ids]
    return groups
