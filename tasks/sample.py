"""Sample stage: scikit-learn's digits (1,797 real 8x8 scans, 10 classes) as a folder of PNGs.

The result is an ordinary image-folder dataset, one sub-folder per class, so the whole pipeline
runs on real images without any download. It is written only when data.root is the sample folder:
with data.root pointing at your own images the stage leaves an empty folder (DVC tracks it) and
writes nothing else.
"""
from __future__ import annotations

import shutil
from pathlib import Path

import numpy as np
from PIL import Image
from sklearn.datasets import load_digits

from tasks.common.cli import run_stage
from tasks.common.config import Params

PARAMS = ["data.root", "sample"]  # the sample is written only when data.root is its folder


def write_digits(out_dir: Path) -> int:
    """Write every digit as an 8-bit greyscale PNG under out_dir/<digit>/; returns the count."""
    if out_dir.exists():
        shutil.rmtree(out_dir)
    digits = load_digits()
    # Pixel values are 0..16 ink counts; scale to 0..255 with white ink on black as in the scans.
    pixels = np.round(digits.images * (255.0 / 16.0)).astype(np.uint8)
    for index, (image, target) in enumerate(zip(pixels, digits.target)):
        class_dir = out_dir / str(int(target))
        class_dir.mkdir(parents=True, exist_ok=True)
        Image.fromarray(image, mode="L").save(class_dir / f"digit_{index:04d}.png")
    return len(pixels)


def run(params: Params, workdir: Path = Path(".")) -> dict:
    out_dir = workdir / params.sample.out_dir
    if (workdir / params.data.root).resolve() != out_dir.resolve():
        out_dir.mkdir(parents=True, exist_ok=True)  # the stage's output, so that DVC has one to track
        return {"images": 0, "skipped": f"data.root is {params.data.root}, not the sample folder "
                                        f"{params.sample.out_dir}; nothing written"}
    count = write_digits(out_dir)
    return {"images": count, "classes": 10, "out_dir": params.sample.out_dir}


if __name__ == "__main__":
    run_stage("sample", run)
