"""Perceptual hashes and duplicate groups: exact copies and resized or re-encoded near-copies.

A 64-bit pHash (DCT of a 32x32 grey thumbnail, low frequencies against their median) changes by
0-4 bits when a photo is resized or re-encoded as JPEG, and by 18-40 between unrelated images.

Near-duplicate search is sub-quadratic by the pigeonhole principle: cut the 64 bits into
max_distance + 1 bands; two hashes within max_distance bits agree exactly on at least one band.
So only hashes that share a band value are compared, and identical hashes are merged first.
"""
from __future__ import annotations

import numpy as np
import pandas as pd
from PIL import Image

from tasks.data.images import to_8bit

HASH_SIZE = 32  # thumbnail side; the hash keeps its 8x8 lowest frequencies
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
    """HASH_SIZE-square 8-bit grey thumbnail; large images are box-reduced before converting."""
    img = to_8bit(img)
    if img.mode not in ("L", "RGB", "RGBA"):
        img = img.convert("L")
    factor = min(img.size) // HASH_SIZE
    if factor > 1:
        img = img.reduce(factor)  # a cheap box filter first: converting a full-size photo costs more
    img = img.convert("L")
    return img if img.size == (HASH_SIZE, HASH_SIZE) else img.resize((HASH_SIZE, HASH_SIZE), Image.Resampling.BOX)


def hash_thumbnail(img: Image.Image, orientation: int = 1) -> bytes | None:
    """The upright 32x32 grey thumbnail a pHash is computed from, or None for no hash.

    Two kinds of image get no hash and are matched only by their bytes: images smaller than the
    thumbnail (upscaled, their hashes collide between distinct images: 8 px digits do) and flat
    images (one colour has no structure, and all flat images would share one hash).
    """
    if min(img.size) < HASH_SIZE:
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


def perceptual_hash(img: Image.Image, orientation: int = 1) -> str:
    """pHash of one decoded image as 16 hex digits, as displayed ("" when it gets none)."""
    return perceptual_hashes([hash_thumbnail(img, orientation)])[0]


def hamming(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    """Bitwise distance of uint64 hashes (broadcasting)."""
    x = np.bitwise_xor(a, b)
    return np.unpackbits(x[..., None].view(np.uint8), axis=-1).sum(-1)


def near_duplicate_pairs(hashes: np.ndarray, max_distance: int) -> np.ndarray:
    """Index pairs (i, j), i < j, of uint64 hashes at most max_distance bits apart."""
    unique, inverse = np.unique(hashes, return_inverse=True)
    pairs = set()
    if max_distance > 0 and len(unique) > 1:
        bands = max_distance + 1
        edges = np.linspace(0, 64, bands + 1).astype(int)
        for lo, hi in zip(edges[:-1], edges[1:]):
            key = (unique >> np.uint64(lo)) & np.uint64((1 << (hi - lo)) - 1)
            order = np.argsort(key, kind="stable")
            starts = np.flatnonzero(np.r_[True, key[order][1:] != key[order][:-1]])
            for members in np.split(order, starts[1:]):
                if len(members) < 2:
                    continue
                dist = hamming(unique[members][:, None], unique[members][None, :])
                for a, b in zip(*np.nonzero(np.triu(dist <= max_distance, k=1))):
                    pairs.add((int(members[a]), int(members[b])))
    # Back from unique hashes to rows: rows with one hash are linked to its first row.
    first_row = np.full(len(unique), -1)
    rows = []
    for row, u in enumerate(inverse):
        if first_row[u] < 0:
            first_row[u] = row
        else:
            rows.append((first_row[u], row))
    rows += [(int(first_row[a]), int(first_row[b])) for a, b in pairs]
    return np.array(sorted((min(p), max(p)) for p in rows), dtype=np.int64).reshape(-1, 2)


def connected_groups(n: int, pairs: np.ndarray) -> np.ndarray:
    """Group id per item (the smallest index in its group), by union-find over the pairs."""
    parent = list(range(n))

    def find(i: int) -> int:
        while parent[i] != i:
            parent[i] = parent[parent[i]]
            i = parent[i]
        return i

    for a, b in pairs:
        ra, rb = find(a), find(b)
        if ra != rb:
            parent[max(ra, rb)] = min(ra, rb)
    return np.array([find(i) for i in range(n)])


def duplicate_groups(manifest: pd.DataFrame, max_distance: int) -> pd.Series:
    """Duplicate group of every decoded file: rows with the same bytes or pHashes within max_distance.

    The group id is the manifest row number of the group's first file; rows that did not decode
    get -1. A file with no copy is a group of one.
    """
    decoded = manifest.index[manifest["decodes"].to_numpy()]
    groups = pd.Series(-1, index=manifest.index, dtype="int64")
    if len(decoded) == 0:
        return groups
    hashed = np.flatnonzero(manifest.loc[decoded, "phash"].to_numpy() != "")  # positions in decoded
    pairs = np.empty((0, 2), dtype=np.int64)
    if max_distance >= 0 and len(hashed):
        hashes = np.array([int(h, 16) for h in manifest.loc[decoded[hashed], "phash"]], dtype=np.uint64)
        pairs = hashed[near_duplicate_pairs(hashes, max_distance)]
    same_bytes = manifest.loc[decoded].groupby("sha256").ngroup().to_numpy()
    exact = near_duplicate_pairs(same_bytes.astype(np.uint64), 0)
    ids = connected_groups(len(decoded), np.concatenate([pairs, exact]))
    groups[decoded] = decoded.to_numpy()[ids]
    return groups
