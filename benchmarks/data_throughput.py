"""Manifest throughput against a plain full decode of the same files on the same cores.

Generates N images of each kind (small 64x64 PNGs, 1024x768 photo-like JPEGs) in a scratch
folder, then times on all cores:
    decode          Image.open + load of every file: the practical limit for reading images
                    (files are read once beforehand, so both passes find them in the page cache)
    manifest_first  the validate stage's manifest with an empty cache (hash, header facts, full
                    decode, perceptual hash)
    manifest_cached the same folder again: only (path, size, mtime) are checked
    near_dup        duplicate_groups on the manifest (exact + near-duplicate search)
and prints one JSON line per (kind, N). Usage:
    python benchmarks/data_throughput.py --sizes 1000 10000 50000 --kinds png jpeg
"""
from __future__ import annotations

import argparse
import json
import shutil
import sys
import tempfile
import time
from functools import partial
from pathlib import Path

import numpy as np
from PIL import Image

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
from tasks.common.parallel import map_chunks  # noqa: E402
from tasks.common.threads import available_cores  # noqa: E402
from tasks.data.duplicates import duplicate_groups  # noqa: E402
from tasks.data.layout import list_entries  # noqa: E402
from tasks.data.manifest import build_manifest  # noqa: E402

KINDS = {"png": ((64, 64), "PNG", ".png"), "jpeg": ((1024, 768), "JPEG", ".jpg")}
CLASSES = 10
MAX_PIXELS = 64_000_000


def make_images(seeds: list[int], folder: Path, kind: str) -> list[int]:
    """Smooth random colour fields with mild grain: photo-like for both the codec and pHash."""
    (width, height), fmt, suffix = KINDS[kind]
    grain = np.random.default_rng(0).normal(0, 6, (height + 64, width + 64, 3)).astype(np.float32)
    for seed in seeds:
        rng = np.random.default_rng(seed)
        coarse = Image.fromarray(rng.integers(0, 256, (6, 8, 3), dtype=np.uint8))
        base = np.asarray(coarse.resize((width, height), Image.Resampling.BICUBIC), dtype=np.float32)
        dy, dx = rng.integers(0, 64, 2)
        pixels = np.clip(base + grain[dy:dy + height, dx:dx + width], 0, 255).astype(np.uint8)
        path = folder / f"class_{seed % CLASSES}" / f"img_{seed:06d}{suffix}"
        Image.fromarray(pixels).save(path, fmt, **({"quality": 90} if fmt == "JPEG" else {}))
    return seeds


def decode_chunk(paths: list[Path]) -> list[int]:
    out = []
    for path in paths:
        with Image.open(path) as img:
            img.load()
            out.append(img.width)
    return out


def timed(fn):
    start = time.perf_counter()
    result = fn()
    return result, time.perf_counter() - start


def bench(kind: str, n: int, scratch: Path, workers: int) -> dict:
    root = scratch / f"{kind}_{n}"
    if not root.exists():
        for c in range(CLASSES):
            (root / f"class_{c}").mkdir(parents=True, exist_ok=True)
        map_chunks(partial(make_images, folder=root, kind=kind), list(range(n)), f"generate {kind} {n}", workers)
    files = sorted(root.rglob("*.*"))
    for path in files:  # both passes read from the page cache, whatever was generated since
        path.read_bytes()
    decode_chunk(files[: min(200, n)])  # warm the imports once
    # Listing the folder is part of both passes: the manifest lists it too.
    _, decode_s = timed(lambda: map_chunks(decode_chunk, sorted(root.rglob("*.*")), "plain decode", workers))
    work = scratch / f"work_{kind}_{n}"
    shutil.rmtree(work, ignore_errors=True)
    (manifest, _), first_s = timed(lambda: build_manifest(root, list_entries(root), MAX_PIXELS, work, workers))
    (_, stats), cached_s = timed(lambda: build_manifest(root, list_entries(root), MAX_PIXELS, work, workers))
    assert stats["read"] == 0 and manifest["decodes"].all()
    groups, near_s = timed(lambda: duplicate_groups(manifest, 4, root))
    return {
        "kind": kind, "size": "x".join(map(str, KINDS[kind][0])), "images": n, "workers": workers,
        "bytes_mb": round(sum(f.stat().st_size for f in files) / 1e6, 1),
        "decode_img_s": round(n / decode_s), "manifest_first_img_s": round(n / first_s),
        "manifest_vs_decode": round(decode_s / first_s, 3),
        "manifest_cached_s": round(cached_s, 3), "cached_speedup": round(first_s / cached_s, 1),
        "near_dup_s": round(near_s, 3), "duplicate_groups": int((groups.value_counts() > 1).sum()),
    }


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(prog="python benchmarks/data_throughput.py",
                                     description=__doc__.splitlines()[0])
    parser.add_argument("--sizes", type=int, nargs="+", default=[1000, 10000, 50000],
                        help="images of each kind, one run per size")
    parser.add_argument("--kinds", nargs="+", choices=list(KINDS), default=list(KINDS),
                        help="png: small 64x64 PNGs; jpeg: 1024x768 photo-like JPEGs")
    parser.add_argument("--workers", type=int, default=available_cores(), help="processes (default: every core)")
    parser.add_argument("--scratch", type=Path, help="folder for the generated images (default: a temp folder)")
    parser.add_argument("--keep", action="store_true", help="keep the generated images for another run")
    args = parser.parse_args(argv)
    scratch = args.scratch or Path(tempfile.mkdtemp(prefix="data_throughput_"))
    try:
        for kind in args.kinds:
            for n in args.sizes:
                print(json.dumps(bench(kind, n, scratch, args.workers)), flush=True)
    finally:
        if not args.keep:
            shutil.rmtree(scratch, ignore_errors=True)


if __name__ == "__main__":
    main()
