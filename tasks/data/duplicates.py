"""Perceptual hashes and duplicate groups: exact copies and resized or re-encoded near-copies.

Candidates. Two images are candidates when their 64-bit pHashes (DCT of a 32x32 grey thumbnail, low
frequencies against their median) are within validate.near_duplicate_distance bits (resized or
re-encoded photos: 0-4 bits; unrelated photos: 18-40), or SMALL_CANDIDATE_BITS when either is under
32 px (small images' copies drift further in the hash). Images under 16 px and flat images get no
hash: only identical bytes match them. The search is sub-quadratic by the pigeonhole principle:
cut the 64 bits into max_distance + 1 bands; two hashes within max_distance bits agree exactly on
at least one band, so only hashes that share a band value are compared.

Confirmation. A hash cannot tell a copy from a look-alike: a coat with and without a logo, two
plain T-shirts, digits scans, all come within a few bits. So each candidate pair is compared at the
resolution both images really have: the smaller image's own size (at most COMPARE_MAX_SIDE), the
larger one reduced to it, both upright sRGB as Y, Cb, Cr. Three differences are measured, in
grey levels, and a copy must stay within every limit (LOCAL_LIMIT, COLOUR_LIMIT, UNEXPLAINED_LIMIT):
    local        the largest 3x3 mean of the signed brightness difference. Noise of resampling and
                 JPEG averages out there, a detail does not:
                 it separates a logo, a stripe, a pocket, a 2 px mark or an outline moved by 1.5 px
                 (look-alikes: 20-110 from 28 px on) from copies (JPEG 50-95, up- and downscales:
                 at most 18).
    colour       the largest local mean (Gaussian, sigma 2 px) of the Cb or Cr difference: a garment
                 in another colour, not JPEG's coarse half-resolution colour (copies of saturated
                 photos: at most 19 at quality 50; limit 30).
    unexplained  the largest local mean (Gaussian, sigma 2 px) of how far each pixel falls outside
                 the range of the other image's 3x3 neighbourhood. Softened, ringing or slightly
                 shifted edges stay inside that range; a texture present in one image only does not:
                 it separates a 4-6 px checker of +-25-45 levels (11 and more from 28 px on) from
                 copies (at most 9 at JPEG 60-95, 10-13 for a few JPEG 50 copies).
The limits were set on benchmarks/near_duplicates.py's look-alikes and digits (docs/data_quality.md).
From 28 px on they are 20 and 9.5. Below, JPEG noise grows as large as a detail: at 16 px a JPEG of
quality 50-70 moves pixels as much as the texture does, so the limits shrink to 10 and 4 there
(linear between). What these limits would miss there, JPEGs of quality 50-80, is compared again
with the other image encoded with the JPEG's own tables (rescore_jpegs): that reproduces a copy's
noise exactly, and within REENCODED_LIMIT (4 and 2 levels; look-alikes stay 9 and more) it is the
same picture.

Groups. Near copies join the most alike pair first, and only when the two groups' largest images
are the same picture too (a downscaled copy can match two look-alikes that do not match each
other), never putting two classes together without a direct confirmation (link_groups).
"""
from __future__ import annotations

import io
from functools import partial
from pathlib import Path
from typing import NamedTuple

import numpy as np
import pandas as pd
from PIL import Image, JpegImagePlugin
from scipy.ndimage import gaussian_filter, maximum_filter, minimum_filter, uniform_filter

from tasks.common.parallel import map_chunks
from tasks.data.images import to_8bit, to_rgb

HASH_SIZE = 32  # thumbnail side; the hash keeps its 8x8 lowest frequencies
HASH_MIN_SIDE = 16  # smaller images get no hash (8 px digits upscaled 4x have too little to tell apart)
SMALL_CANDIDATE_BITS = 8  # a pair with a small image is a candidate within this many bits, then confirmed
COMPARE_MAX_SIDE = 128  # larger pairs are compared at this size (detail a person judges a copy by)
# Grey levels a copy may differ by (module docstring), at the compared sides LIMIT_SIDES (linear between).
LIMIT_SIDES, LOCAL_LIMIT, UNEXPLAINED_LIMIT = (16, 28), (10.0, 20.0), (4.0, 9.5)
COLOUR_LIMIT = 30.0  # Cb/Cr levels at every size
REENCODED_LIMIT = (4.0, 2.0)  # local, unexplained after re-encoding like the JPEG (rescore_jpegs)
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


def upright_sides(files: pd.DataFrame) -> np.ndarray:
    """(w, h) per file as displayed: EXIF orientations 5-8 swap the sides."""
    sides = files[["width", "height"]].to_numpy(dtype="int64", na_value=0)
    turned = files["orientation"].to_numpy(dtype="int64", na_value=1) >= 5
    return np.where(turned[:, None], sides[:, ::-1], sides)


def compare_sizes(sides: np.ndarray, pairs: np.ndarray) -> np.ndarray:
    """(w, h) per pair at which it is compared: the smaller image's own size (the detail both images
    really have), shrunk to fit COMPARE_MAX_SIDE."""
    a, b = sides[pairs[:, 0]], sides[pairs[:, 1]]
    smaller = np.where((a.prod(1) <= b.prod(1))[:, None], a, b)
    scale = np.minimum(1.0, COMPARE_MAX_SIDE / smaller.max(1))
    return np.maximum(1, np.round(smaller * scale[:, None])).astype(np.int64)


class Decoded(NamedTuple):
    """An image as compared: upright sRGB, shrunk to fit COMPARE_MAX_SIDE, and, for a JPEG kept at
    its stored size and orientation, the encoder settings to re-encode another image like it."""
    rgb: Image.Image
    jpeg: dict | None


def jpeg_settings(img: Image.Image) -> dict | None:
    """qtables and subsampling of a plain JPEG (grey or colour, upright), else None."""
    upright = "exif" not in img.info or int(img.getexif().get(0x0112, 1) or 1) == 1
    if img.format != "JPEG" or img.mode not in ("L", "RGB") or not upright or img.info.get("icc_profile"):
        return None
    settings = {"qtables": img.quantization}
    if img.mode == "RGB":
        settings["subsampling"] = JpegImagePlugin.get_sampling(img)
    return settings


def compare_image(path: Path, max_side: int = COMPARE_MAX_SIDE) -> Decoded | None:
    """The image as compared (Decoded); None when it no longer decodes."""
    try:
        with Image.open(path) as img:
            stored = img.size
            img.draft("RGB", (2 * max_side, 2 * max_side))  # a large JPEG decodes at a fraction of its size
            img.load()
            jpeg = jpeg_settings(img) if img.size == stored and max(stored) <= max_side else None
            rgb = to_rgb(img)
    except Exception:  # noqa: BLE001  it decoded when the manifest was made; now it is only not a match
        return None
    if max(rgb.size) > max_side:
        rgb.thumbnail((max_side, max_side), Image.Resampling.LANCZOS)
    return Decoded(rgb, jpeg)


def _decode_chunk(paths: list[str], root: Path) -> list[Decoded | None]:
    return [compare_image(root / path) for path in paths]


def tolerant_difference(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    """Per pixel, how far each image falls outside the range of the other's 3x3 neighbourhood.

    Resampling and JPEG noise move a pixel within the range its neighbours span (edges soften, ring
    or shift by a fraction of a pixel); a texture or a pattern present in only one image does not.
    Arrays are (pairs, H, W).
    """
    out = np.zeros_like(a)
    for x, y in ((a, b), (b, a)):
        low, high = minimum_filter(y, (1, 3, 3), mode="nearest"), maximum_filter(y, (1, 3, 3), mode="nearest")
        out = np.maximum(out, np.maximum(x - high, low - x))
    return out


def pair_differences(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    """(local, colour, unexplained) per pair of same-size images (pairs, H, W, 3 as Y, Cb, Cr); see
    the module docstring.

    local: the largest 3x3 mean of the signed difference in brightness. Noise averages out there;
    a mark, a logo, a stripe or an outline moved by a pixel does not.
    colour: the largest local mean (Gaussian, sigma 2 px) of the difference in Cb or Cr: JPEG
    keeps colour at half resolution and quantizes it coarsely, so only a change of colour over an
    area counts.
    unexplained: the largest local mean (Gaussian, sigma 2 px) of tolerant_difference on brightness.
    """
    local = np.abs(uniform_filter(a[..., 0] - b[..., 0], (1, 3, 3), mode="nearest")).max((1, 2))
    colour = np.abs(gaussian_filter(a[..., 1:] - b[..., 1:], (0, 2.0, 2.0, 0), mode="nearest")).max((1, 2, 3))
    unexplained = gaussian_filter(tolerant_difference(a[..., 0], b[..., 0]), (0, 2.0, 2.0), mode="nearest").max((1, 2))
    return np.stack([local, colour, unexplained], 1)


def limits(side: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """(local, unexplained) limits at the shorter side each pair is compared at."""
    return np.interp(side, LIMIT_SIDES, LOCAL_LIMIT), np.interp(side, LIMIT_SIDES, UNEXPLAINED_LIMIT)


def at_size(image: Decoded | None, size: tuple[int, int]) -> np.ndarray:
    """Y, Cb, Cr planes (H, W, 3) of a decoded image resized to `size`; NaN for none."""
    if image is None:
        return np.full((size[1], size[0], 3), np.nan, dtype=np.float32)  # never the same picture
    rgb = image.rgb if image.rgb.size == size else image.rgb.resize(size, Image.Resampling.LANCZOS)
    return np.asarray(rgb.convert("YCbCr"), dtype=np.float32)


def reencoded_scores(jpeg: Decoded, other: Decoded) -> np.ndarray:
    """pair_differences of a JPEG and the other image encoded with the JPEG's own tables.

    A copy saved as JPEG carries its encoder's noise; re-encoding its source the same way makes the
    same noise, so what is left is what differs in the pictures. It applies when the JPEG is
    compared at its stored size.
    """
    source = other.rgb if other.rgb.size == jpeg.rgb.size else other.rgb.resize(jpeg.rgb.size, Image.Resampling.LANCZOS)
    if "subsampling" not in jpeg.jpeg:
        source = source.convert("L")
    out = io.BytesIO()
    source.save(out, "JPEG", **jpeg.jpeg)
    with Image.open(out) as again:
        copy = np.asarray(again.convert("RGB").convert("YCbCr"), dtype=np.float32)
    return pair_differences(copy[None], np.asarray(jpeg.rgb.convert("YCbCr"), dtype=np.float32)[None])[0]


def rescore_jpegs(pairs: np.ndarray, scores: np.ndarray, images: dict, sizes: np.ndarray) -> None:
    """Replace the scores of near misses with a JPEG at its stored size by reencoded_scores when
    those are within REENCODED_LIMIT: the same picture, whatever the JPEG's quality."""
    local, unexplained = limits(scores[:, 3])
    near_miss = ~same_picture(scores) & (scores[:, 0] <= 3 * local) & (scores[:, 2] <= 3 * unexplained)
    for k in np.flatnonzero(near_miss):
        for x, y in (pairs[k], pairs[k][::-1]):
            jpeg, other = images[x], images[y]
            if jpeg is None or other is None or jpeg.jpeg is None or jpeg.rgb.size != tuple(sizes[k]):
                continue
            again = reencoded_scores(jpeg, other)
            if again[0] <= REENCODED_LIMIT[0] and again[1] <= COLOUR_LIMIT and again[2] <= REENCODED_LIMIT[1]:
                scores[k, :3] = again
                break


def decode_rows(rows: np.ndarray, files: pd.DataFrame, root: Path) -> dict[int, Image.Image | None]:
    """Compare images (compare_image) of the given rows, each decoded once, on every core."""
    decoded = map_chunks(partial(_decode_chunk, root=root), list(files["path"].to_numpy()[rows]),
                         desc="validate: confirming near-duplicate candidates")
    return dict(zip(rows.tolist(), decoded))


def score_pairs(pairs: np.ndarray, images: dict, sides: np.ndarray, batch: int = 2048) -> np.ndarray:
    """(local, colour, unexplained, compared side) per row pair; pairs compared at the same size
    are scored together."""
    scores = np.full((len(pairs), 4), np.inf)
    if len(pairs) == 0:
        return scores
    sizes = compare_sizes(sides, pairs)
    scores[:, 3] = sizes.min(1)
    for size in np.unique(sizes, axis=0):
        todo = np.flatnonzero((sizes == size).all(1))
        planes = {row: at_size(images[row], tuple(size)) for row in np.unique(pairs[todo])}  # once per image
        for part in np.array_split(todo, -(-len(todo) // batch)):
            a = np.stack([planes[i] for i in pairs[part, 0]])
            b = np.stack([planes[j] for j in pairs[part, 1]])
            with np.errstate(invalid="ignore"):
                scores[part, :3] = np.nan_to_num(pair_differences(a, b), nan=np.inf)
    rescore_jpegs(pairs, scores, images, sizes)
    return scores


def pair_scores(pairs: np.ndarray, files: pd.DataFrame, root: Path) -> np.ndarray:
    """score_pairs of row pairs of files under root."""
    images = decode_rows(np.unique(pairs), files, root) if len(pairs) else {}
    return score_pairs(pairs, images, upright_sides(files))


def same_picture(scores: np.ndarray) -> np.ndarray:
    """Per scored pair: the same picture, resized or re-encoded (thresholds: module docstring)?"""
    local, unexplained = limits(scores[:, 3])
    return (scores[:, 0] <= local) & (scores[:, 1] <= COLOUR_LIMIT) & (scores[:, 2] <= unexplained)


def link_groups(files: pd.DataFrame, pairs: np.ndarray, scores: np.ndarray, images: dict) -> np.ndarray:
    """Group id per row, the smallest row in its group: files with the same bytes, and near copies.

    Near copies join the most alike first, and two groups join only when their largest images are
    the same picture too (compared now if they were no candidates): a downscaled copy has lost the
    detail that tells two look-alikes apart and would otherwise chain them. Two groups never join
    when two of their files lie in different classes without having been confirmed as the same
    picture themselves: a label conflict needs direct evidence. `images` holds the decoded rows of
    every pair.
    """
    n, sha, labels = len(files), files["sha256"].to_numpy(), files["label"].to_numpy()
    sides = upright_sides(files)
    same = same_picture(scores)
    verdict = {(int(a), int(b)): bool(v) for (a, b), v in zip(pairs, same)}
    parent = files.groupby("sha256").ngroup().to_numpy()  # same bytes: one group from the start
    parent = pd.Series(np.arange(n)).groupby(parent).transform("min").to_numpy()
    members: dict[int, list[int]] = pd.Series(np.arange(n)).groupby(parent).agg(list).to_dict()

    def alike(x: int, y: int) -> bool:
        key = (min(x, y), max(x, y))
        if key not in verdict:
            verdict[key] = bool(same_picture(score_pairs(np.array([key]), images, sides))[0])
        return verdict[key]

    def allowed(x: int, y: int) -> bool:  # files of two classes: only when confirmed themselves
        return labels[x] == labels[y] or sha[x] == sha[y] or verdict.get((min(x, y), max(x, y))) is True

    def largest(root: int) -> int:
        return max((m for m in members[root] if m in images), key=lambda m: (sides[m].prod(), -m))

    local, unexplained = limits(scores[:, 3])
    worst = np.maximum.reduce([scores[:, 0] / local, scores[:, 1] / COLOUR_LIMIT, scores[:, 2] / unexplained])
    for a, b in pairs[same][np.argsort(worst[same], kind="stable")]:
        ra, rb = parent[a], parent[b]
        if ra == rb or not all(allowed(x, y) for x in members[ra] for y in members[rb]):
            continue
        if not alike(largest(ra), largest(rb)):
            continue
        keep, gone = min(ra, rb), max(ra, rb)
        parent[members[gone]] = keep
        members[keep] += members.pop(gone)
    return parent


def candidate_pairs(files: pd.DataFrame, max_distance: int) -> np.ndarray:
    """Row pairs of files with different bytes whose hashes are within max_distance bits (within
    SMALL_CANDIDATE_BITS when either image is under HASH_SIZE px)."""
    hashed = np.flatnonzero(files["phash"].to_numpy() != "")
    if max_distance < 0 or len(hashed) == 0:
        return np.empty((0, 2), dtype=np.int64)
    hashes = np.array([int(h, 16) for h in files["phash"].to_numpy()[hashed]], dtype=np.uint64)
    small = upright_sides(files)[hashed].min(1) < HASH_SIZE
    candidates = hashed[np.unique(np.concatenate([
        pairs_within(hashes, max_distance),
        pairs_within(hashes, max(max_distance, SMALL_CANDIDATE_BITS), among=small),
    ]), axis=0)]
    sha = files["sha256"].to_numpy()
    return candidates[sha[candidates[:, 0]] != sha[candidates[:, 1]]]  # identical files join anyway


def duplicate_groups(manifest: pd.DataFrame, max_distance: int, root: Path) -> pd.Series:
    """Duplicate group of every decoded file: rows with the same bytes, or near-copies (candidates
    by hash, confirmed pixel by pixel, joined by link_groups; max_distance -1 switches them off).

    The group id is the manifest row number of the group's first file; rows that did not decode
    get -1. A file with no copy is a group of one.
    """
    decoded = manifest.index[manifest["decodes"].to_numpy()]
    groups = pd.Series(-1, index=manifest.index, dtype="int64")
    if len(decoded) == 0:
        return groups
    files = manifest.loc[decoded].reset_index(drop=True)
    pairs = candidate_pairs(files, max_distance)
    images = decode_rows(np.unique(pairs), files, root) if len(pairs) else {}
    scores = score_pairs(pairs, images, upright_sides(files))
    groups[decoded] = decoded.to_numpy()[link_groups(files, pairs, scores, images)]
    return groups
