"""Precision and recall of near-duplicate grouping on small images: the digits as an MNIST-like set.

For each size, every one of scikit-learn's 1,797 digit scans is upscaled (bicubic) to an original
of that size, and copies are made of it: twice the size as JPEG (quality 75) and as PNG, the same
size re-encoded as JPEG (quality 90), and half the size where that is still 16 px or more. Then
the validate stage's own code builds the manifest and the duplicate groups, as on a user's folder.

    precision   false_groups: groups that join two different scans (0 is perfect);
                distinct_pairs_merged: pairs of different scans in one group
    recall      copies_grouped: share of copies in the group of their own scan

    python benchmarks/near_duplicates.py [--sizes 16 28 32 64]

Prints one JSON line per size.
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
from PIL import Image
from sklearn.datasets import load_digits

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
from tasks.data.duplicates import duplicate_groups  # noqa: E402
from tasks.data.layout import list_entries  # noqa: E402
from tasks.data.manifest import build_manifest  # noqa: E402


def jpeg(img: Image.Image, quality: int) -> bytes:
    out = io.BytesIO()
    img.save(out, "JPEG", quality=quality)
    return out.getvalue()


def write_set(root: Path, size: int) -> None:
    """Originals as <label>/d<index>.png; copies as <label>/d<index>_<kind>.<ext>."""
    digits = load_digits()
    for index, (scan, label) in enumerate(zip(digits.images, digits.target)):
        folder = root / str(int(label))
        folder.mkdir(parents=True, exist_ok=True)
        original = Image.fromarray(np.round(scan * 255 / 16).astype(np.uint8), "L").resize(
            (size, size), Image.Resampling.BICUBIC)
        original.save(folder / f"d{index:04d}.png")
        double = original.resize((2 * size, 2 * size), Image.Resampling.BICUBIC)
        (folder / f"d{index:04d}_x2.jpg").write_bytes(jpeg(double, 75))
        double.save(folder / f"d{index:04d}_x2.png")
        (folder / f"d{index:04d}_same.jpg").write_bytes(jpeg(original, 90))
        if size // 2 >= 16:
            original.resize((size // 2, size // 2), Image.Resampling.LANCZOS).save(folder / f"d{index:04d}_half.png")


def bench(size: int, scratch: Path) -> dict:
    root = scratch / f"digits_{size}"
    write_set(root, size)
    start = time.perf_counter()
    manifest, _ = build_manifest(root, list_entries(root), 64_000_000, scratch / f"work_{size}")
    manifest_s = time.perf_counter() - start
    start = time.perf_counter()
    manifest["duplicate_group"] = duplicate_groups(manifest, 4, root)
    group_s = time.perf_counter() - start

    manifest["scan"] = manifest["path"].str.extract(r"/d(\d{4})")[0]
    is_original = ~manifest["path"].str.contains("_")
    originals = manifest[is_original].set_index("scan")["duplicate_group"]
    scans_per_group = manifest[is_original].groupby("duplicate_group").size()
    copies = manifest[~is_original]
    grouped = (copies["duplicate_group"].to_numpy() == originals.loc[copies["scan"]].to_numpy())
    return {
        "size_px": size, "scans": len(originals), "copies": len(copies),
        "false_groups": int((scans_per_group > 1).sum()),
        "distinct_pairs_merged": int((scans_per_group * (scans_per_group - 1) // 2).sum()),
        "copies_grouped": round(float(grouped.mean()), 4),
        "copies_missed": int((~grouped).sum()),
        "manifest_s": round(manifest_s, 2), "grouping_s": round(group_s, 2),
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--sizes", type=int, nargs="+", default=[16, 28, 32, 64])
    args = parser.parse_args()
    with tempfile.TemporaryDirectory() as scratch:
        for size in args.sizes:
            print(json.dumps(bench(size, Path(scratch))), flush=True)


if __name__ == "__main__":
    main()
