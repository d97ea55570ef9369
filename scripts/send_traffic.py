"""Send labelled images to a running service, optionally shifted, as traffic to monitor.

    python scripts/send_traffic.py --count 200                   # like the test images
    python scripts/send_traffic.py --shift brighten --count 200  # what a new camera might send
    python scripts/send_traffic.py --shift blur --url http://127.0.0.1:3000

Images are drawn from the test split (data/split/test.csv), changed in memory (never on disk) and
POSTed to /classify in batches; the service logs every one for the monitor deployment.
"""
from __future__ import annotations

import argparse
import io
import random
import sys
import time
from pathlib import Path

import httpx
import pandas as pd
from PIL import Image, ImageEnhance, ImageFilter

from tasks.common.config import UserError
from tasks.common.paths import split_csv

SHIFTS = {
    "none": lambda img: img,
    "brighten": lambda img: ImageEnhance.Brightness(img).enhance(1.8),
    "darken": lambda img: ImageEnhance.Brightness(img).enhance(0.4),
    "blur": lambda img: img.resize((img.width * 4, img.height * 4)).filter(ImageFilter.GaussianBlur(3)),
}


def test_images(count: int, seed: int) -> list[Path]:
    csv = split_csv("test")
    if not csv.is_file():
        raise UserError(f"{csv} not found; run the pipeline first (make run)")
    files = pd.read_csv(csv)["file"].tolist()
    return random.Random(seed).choices([Path(f) for f in files], k=count)


def encode(path: Path, shift: str) -> bytes:
    with Image.open(path) as img:
        out = io.BytesIO()
        SHIFTS[shift](img.convert("RGB")).save(out, format="PNG")
    return out.getvalue()


def send(url: str, paths: list[Path], shift: str, batch: int) -> tuple[int, int]:
    """POST the images in batches; (images classified, requests that failed)."""
    sent = failed = 0
    with httpx.Client(base_url=url, timeout=60) as client:
        for start in range(0, len(paths), batch):
            chunk = paths[start:start + batch]
            files = [("images", (p.name, encode(p, shift), "image/png")) for p in chunk]
            try:
                response = client.post("/classify", files=files)
            except httpx.ConnectError:
                raise UserError(f"no service answers at {url}; start one with "
                                "bentoml serve $(python -m tasks.production bento)") from None
            if response.status_code == 200:
                sent += len(chunk)
            else:
                failed += 1
    return sent, failed


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(prog="python scripts/send_traffic.py", description=__doc__.split("\n")[0])
    parser.add_argument("--shift", choices=sorted(SHIFTS), default="none", help="how the images are changed")
    parser.add_argument("--count", type=int, default=200, help="images to send")
    parser.add_argument("--batch", type=int, default=16, help="images per request")
    parser.add_argument("--url", default="http://127.0.0.1:3000", help="the running service")
    parser.add_argument("--seed", type=int, default=0, help="which test images are drawn")
    args = parser.parse_args(argv)
    try:
        started = time.perf_counter()
        sent, failed = send(args.url, test_images(args.count, args.seed), args.shift, args.batch)
    except UserError as err:
        print(f"send_traffic: error: {err}", file=sys.stderr)
        sys.exit(2)
    print(f"sent {sent} {args.shift} images in {time.perf_counter() - started:.1f} s"
          f"{f'; {failed} requests failed' if failed else ''}")


if __name__ == "__main__":
    main()
