"""Precision and recall of near-duplicate grouping on small images, through the validate stage's code.

Two sets, each at 16, 28, 32 and 64 px:
    digits      each of scikit-learn's 1,797 digit scans upscaled (bicubic): an MNIST-like set
    lookalikes  garment-like silhouettes on black, seven look-alikes each: plain, and with a logo,
                a stripe, a pocket, a texture, a 2 px mark or an outline pulled out by 1.5-2.5 px,
                every detail drawn at 256 px and reduced, so it is as wide as stated at that size
                (a product catalogue: one layout, many images, small differences)
Every original gets real copies: JPEG at quality 50-95, twice the size as PNG and as JPEG 75,
1.5 times the size (bilinear, JPEG 90), and where still 16 px or more, half (PNG) and three
quarters (thumbnail) of the size. The manifest and duplicate groups are built as on a user's folder.

    precision   false_groups: groups joining two different originals (0 is perfect)
    recall      copies_grouped: share of copies in their own original's group; missed_by_kind
    margins     the largest scores of a copy and the smallest of two different originals among the
                confirmation's candidates (tasks/data/duplicates.py, pair_differences)

    python benchmarks/near_duplicates.py [--sets digits lookalikes] [--sizes 16 28 32 64] [--families 150]

Prints one JSON line per set and size.
"""
from __future__ import annotations

import argparse
import io
import json
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
from PIL import Image, ImageDraw
from scipy.ndimage import distance_transform_edt

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
from tasks.data import duplicates  # noqa: E402
from tasks.data.layout import list_entries  # noqa: E402
from tasks.data.manifest import build_manifest  # noqa: E402

HI = 256  # look-alikes are drawn at this size, then reduced
DETAILS = ["plain", "logo", "stripe", "pocket", "texture", "mark", "shape"]
JPEG_QUALITIES = (50, 60, 70, 80, 90, 95)
DISTINCT_FAMILIES = 3.0  # grey levels: see lookalikes
VISIBLE_DETAIL = 48  # grey levels: two look-alikes differ by at least this much somewhere


def encode(img: Image.Image, fmt: str, **options) -> bytes:
    out = io.BytesIO()
    img.save(out, fmt, **options)
    return out.getvalue()


def copies(original: Image.Image) -> dict[str, bytes]:
    """Suffix -> bytes of each real copy of an original (see the module docstring)."""
    s = original.width
    out = {f"q{q}.jpg": encode(original, "JPEG", quality=q) for q in JPEG_QUALITIES}
    double = original.resize((2 * s, 2 * s), Image.Resampling.BICUBIC)
    out["x2.png"], out["x2.jpg"] = encode(double, "PNG"), encode(double, "JPEG", quality=75)
    out["x1.5.jpg"] = encode(original.resize((s * 3 // 2,) * 2, Image.Resampling.BILINEAR), "JPEG", quality=90)
    if s // 2 >= 16:
        out["half.png"] = encode(original.resize((s // 2,) * 2, Image.Resampling.LANCZOS), "PNG")
    if s * 3 // 4 >= 16:
        thumb = original.copy()
        thumb.thumbnail((s * 3 // 4,) * 2)
        out["x0.75.png"] = encode(thumb, "PNG")
    return out


def digits(size: int, _families: int) -> dict[str, Image.Image]:
    from sklearn.datasets import load_digits

    data = load_digits()
    return {
        f"{label}/d{i:04d}": Image.fromarray(np.round(scan * 255 / 16).astype(np.uint8), "L").resize(
            (size, size), Image.Resampling.BICUBIC)
        for i, (scan, label) in enumerate(zip(data.images, data.target))
    }


def outline(rng: np.random.Generator) -> list[tuple[float, float]]:
    """A garment-like polygon at HI px: a shirt with sleeves, trousers, a bag or a dress."""
    kind, c = rng.integers(4), HI / 2
    w, h = rng.uniform(0.35, 0.5) * HI, rng.uniform(0.55, 0.75) * HI
    top, bottom = c - h / 2, c + h / 2
    if kind == 0:
        s = rng.uniform(0.12, 0.25) * HI
        poly = [(c - w / 2, top), (c - w / 2 - s, top + s * 1.2), (c - w / 2 - s * 0.6, top + s * 1.6),
                (c - w / 2, top + s), (c - w / 2, bottom), (c + w / 2, bottom), (c + w / 2, top + s),
                (c + w / 2 + s * 0.6, top + s * 1.6), (c + w / 2 + s, top + s * 1.2), (c + w / 2, top)]
    elif kind == 1:
        g = rng.uniform(0.04, 0.1) * HI
        poly = [(c - w / 2, top), (c + w / 2, top), (c + w / 2 + g, bottom), (c + g, bottom),
                (c, top + h * 0.35), (c - g, bottom), (c - w / 2 - g, bottom)]
    elif kind == 2:
        poly = [(c - w / 2, top + h * 0.3), (c + w / 2, top + h * 0.3), (c + w / 2 + 0.05 * HI, bottom),
                (c - w / 2 - 0.05 * HI, bottom)]
    else:
        poly = [(c - w / 4, top), (c + w / 4, top), (c + w / 3, top + h * 0.4), (c + w / 2 + 0.1 * HI, bottom),
                (c - w / 2 - 0.1 * HI, bottom), (c - w / 3, top + h * 0.4)]
    return [(x + rng.uniform(-3, 3), y + rng.uniform(-3, 3)) for x, y in poly]


def look_alike(poly: list, level: int, detail: str, size: int, rng: np.random.Generator) -> Image.Image:
    """One garment at HI px with one detail of its own, each detail in its own place, reduced to size.

    px is one pixel at the target size: details are at least that wide, so they exist there.
    """
    px, poly = HI / size, list(poly)
    if detail == "shape":  # one corner pulled outwards
        i = rng.integers(len(poly))
        x, y = poly[i]
        dx, dy = x - HI / 2, y - HI / 2
        pull = rng.uniform(1.5, 2.5) * px / (np.hypot(dx, dy) or 1)
        poly[i] = (x + dx * pull, y + dy * pull)
    img, mask = Image.new("L", (HI, HI), 0), Image.new("L", (HI, HI), 0)
    draw = ImageDraw.Draw(img)
    draw.polygon(poly, fill=level)
    ImageDraw.Draw(mask).polygon(poly, fill=255)
    depth = distance_transform_edt(np.asarray(mask) > 0)
    ys, xs = np.nonzero(depth)
    cy, cx = ys.mean(), xs.mean()
    sign = -1 if level > 140 else 1

    def inside(x: float, y: float, margin: float) -> tuple[float, float]:
        """The point nearest (x, y) at least margin inside the garment: a detail is never cut off."""
        deep = np.flatnonzero(depth.ravel() >= margin) if (depth >= margin).any() else np.flatnonzero(depth.ravel() == depth.max())
        best = deep[np.argmin((deep % HI - x) ** 2 + (deep // HI - y) ** 2)]
        return float(best % HI), float(best // HI)

    def shade(lo: float, hi: float) -> int:
        return int(np.clip(level + sign * rng.uniform(lo, hi), 0, 255))

    if detail == "logo":  # upper centre
        r = max(rng.uniform(0.06, 0.1) * HI, 1.5 * px)
        x0, y0 = inside(cx + rng.uniform(-0.03, 0.03) * HI, cy - 0.12 * HI, r + px)
        draw.ellipse([x0 - r, y0 - r, x0 + r, y0 + r], fill=shade(60, 120))
    elif detail == "stripe":  # a band across, just below the middle
        t, y0 = max(rng.uniform(0.04, 0.06) * HI, px), cy + rng.uniform(0.02, 0.06) * HI
        draw.rectangle([0, y0, HI, y0 + t], fill=shade(50, 100))
    elif detail == "pocket":  # an outlined square, lower left
        s = rng.uniform(0.12, 0.18) * HI
        x0, y0 = inside(cx - 0.09 * HI, cy + 0.12 * HI, s / 2 + px)
        draw.rectangle([x0 - s / 2, y0 - s / 2, x0 + s / 2, y0 + s / 2], outline=shade(60, 120),
                       width=int(max(0.035 * HI, px)))
    elif detail == "texture":  # a checker of 4-6 px period over the whole garment
        period = rng.uniform(4, 6) * px
        yy, xx = np.mgrid[:HI, :HI]
        checker = ((xx // (period / 2) + yy // (period / 2)) % 2) * 2 - 1
        img = Image.fromarray(np.clip(np.asarray(img, float) + checker * rng.uniform(25, 45), 0, 255).astype(np.uint8))
    elif detail == "mark":  # a dot about 2 px across, right of centre
        r = rng.uniform(0.9, 1.2) * px
        x0, y0 = inside(cx + 0.1 * HI, cy + rng.uniform(-0.04, 0.04) * HI, r + px)
        draw.ellipse([x0 - r, y0 - r, x0 + r, y0 + r], fill=shade(80, 150))
    img.paste(0, mask=Image.eval(mask, lambda v: 255 - v))  # the background stays black
    return img.resize((size, size), Image.Resampling.LANCZOS)


def lookalikes(size: int, families: int) -> dict[str, Image.Image]:
    """Families of seven look-alikes: one outline and fill, a different detail each (class = family % 10).

    A family is drawn again when its plain garment is within a mean of DISTINCT_FAMILIES grey
    levels of an earlier one's (the same picture, not a look-alike: the real set that prompted
    this benchmark had no pair of look-alikes within 2 levels), or when two of its details differ
    nowhere by VISIBLE_DETAIL (drawn over each other, as a logo and a pocket can be at 16 px).
    """
    out, plains, seed = {}, [], 0
    while len(plains) < families:
        rng = np.random.default_rng(seed)
        seed += 1
        poly, level = outline(rng), int(rng.uniform(90, 230))
        drawn = [look_alike(poly, level, d, size, np.random.default_rng([seed, i])) for i, d in enumerate(DETAILS)]
        pixels = [np.asarray(img, dtype=np.float32) for img in drawn]
        if any(np.abs(pixels[0] - other).mean() < DISTINCT_FAMILIES for other in plains):
            continue  # the same garment as an earlier family
        if any(np.abs(a - b).max() < VISIBLE_DETAIL for i, a in enumerate(pixels) for b in pixels[i + 1:]):
            continue  # two details drawn over each other: no visible difference at this size
        family = len(plains)
        plains.append(pixels[0])
        out.update({f"{family % 10}/f{family:04d}-{d}": img for d, img in zip(DETAILS, drawn)})
    return out


def write_set(root: Path, originals: dict[str, Image.Image]) -> None:
    """Originals as <name>.png, copies as <name>_<suffix>."""
    for name, img in originals.items():
        (root / name).parent.mkdir(parents=True, exist_ok=True)
        img.save(root / f"{name}.png")
        for suffix, data in copies(img).items():
            (root / f"{name}_{suffix}").write_bytes(data)


def margins(manifest, root: Path, original: np.ndarray) -> dict:
    """Largest copy scores and smallest scores of different originals among hash candidates."""
    files = manifest[manifest["decodes"]].reset_index(drop=True)
    pairs = duplicates.candidate_pairs(files, 4)
    scores = duplicates.pair_scores(pairs, files, root)
    same = original[pairs[:, 0]] == original[pairs[:, 1]]
    out = {"candidate_pairs": len(pairs)}
    for name, column in (("local", 0), ("colour", 1), ("unexplained", 2)):
        out[f"copy_max_{name}"] = round(float(scores[same, column].max()), 2) if same.any() else None
        out[f"distinct_min_{name}"] = round(float(scores[~same, column].min()), 2) if (~same).any() else None
    return out


def bench(kind: str, size: int, families: int, scratch: Path) -> dict:
    root = scratch / f"{kind}_{size}"
    write_set(root, {"digits": digits, "lookalikes": lookalikes}[kind](size, families))
    start = time.perf_counter()
    manifest, _ = build_manifest(root, list_entries(root), 64_000_000, scratch / f"work_{kind}_{size}")
    manifest_s = time.perf_counter() - start
    start = time.perf_counter()
    manifest["duplicate_group"] = duplicates.duplicate_groups(manifest, 4, root)
    group_s = time.perf_counter() - start

    name = manifest["path"].str.replace(r"\.png$", "", regex=True).str.split("_").str[0]
    is_original = ~manifest["path"].str.contains("_")
    group_of = manifest[is_original].set_index(name[is_original])["duplicate_group"]
    per_group = manifest[is_original].groupby("duplicate_group").size()
    copies_ = manifest[~is_original]
    grouped = copies_["duplicate_group"].to_numpy() == group_of.loc[name[~is_original]].to_numpy()
    suffix = copies_["path"].str.split("_").str[-1]
    return {
        "set": kind, "size_px": size, "originals": int(is_original.sum()), "copies": len(copies_),
        "false_groups": int((per_group > 1).sum()),
        "distinct_pairs_merged": int((per_group * (per_group - 1) // 2).sum()),
        "copies_grouped": round(float(grouped.mean()), 4), "copies_missed": int((~grouped).sum()),
        "missed_by_kind": suffix[~grouped].value_counts().to_dict(),
        **margins(manifest, root, name.to_numpy()[manifest["decodes"].to_numpy()]),
        "manifest_s": round(manifest_s, 2), "grouping_s": round(group_s, 2),
    }


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(prog="python benchmarks/near_duplicates.py", description=__doc__.splitlines()[0])
    parser.add_argument("--sets", nargs="+", choices=["digits", "lookalikes"], default=["digits", "lookalikes"],
                        help="digits: upscaled digit scans; lookalikes: garment-like silhouettes")
    parser.add_argument("--sizes", type=int, nargs="+", default=[16, 28, 32, 64], help="image sides (px)")
    parser.add_argument("--families", type=int, default=150, help="look-alike families (7 originals each)")
    args = parser.parse_args(argv)
    with tempfile.TemporaryDirectory() as scratch:
        for kind in args.sets:
            for size in args.sizes:
                print(json.dumps(bench(kind, size, args.families, Path(scratch))), flush=True)


if __name__ == "__main__":
    main()
