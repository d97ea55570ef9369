"""Shared fixtures: tiny image folders made in the test, and params pointing at them."""
from __future__ import annotations

import io
import socket
import sys
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
import yaml
from PIL import Image

from tasks.common.config import Params, parse_params

PROJECT_ROOT = Path(__file__).resolve().parents[1]


def write_image_set(root: Path, classes: dict[str, int], size: int = 16, seed: int = 0) -> list[Path]:
    """Write `count` PNGs per class under root/<class>/; each class has its own colour pattern.

    Images of one class share a mean colour and differ by noise, so a model can learn them
    and no two files are byte-identical.
    """
    rng = np.random.default_rng(seed)
    written = []
    for k, (label, count) in enumerate(classes.items()):
        (root / label).mkdir(parents=True, exist_ok=True)
        base = np.zeros((size, size, 3), dtype=np.float32)
        base[..., k % 3] = 200.0
        base[: size // 2, :, (k + 1) % 3] = 120.0 if k >= 3 else 0.0
        for i in range(count):
            noisy = np.clip(base + rng.normal(0, 25, base.shape), 0, 255).astype(np.uint8)
            path = root / label / f"img_{i:03d}.png"
            Image.fromarray(noisy).save(path)
            written.append(path)
    return written


def make_params(**sections) -> Params:
    """Project params.yaml with the given sections overridden (dicts merge one level deep)."""
    raw = yaml.safe_load((PROJECT_ROOT / "params.yaml").read_text())
    for name, values in sections.items():
        raw[name] = {**raw.get(name, {}), **values}
    return parse_params(raw)


@pytest.fixture
def image_root(tmp_path: Path) -> Path:
    """A three-class folder of 12 distinct 16x16 PNGs each, under tmp_path/images."""
    root = tmp_path / "images"
    write_image_set(root, {"cat": 12, "dog": 12, "fox": 12})
    return root


def write_splits(workdir: Path, counts: dict[str, int], classes=("cat", "dog", "fox"), size: int = 16) -> None:
    """Distinct images per split under workdir/images/<split>/<class>/, and data/split/<split>.csv
    (path, label, file) as the split stage writes them."""
    (workdir / "data/split").mkdir(parents=True, exist_ok=True)
    for seed, (split, per_class) in enumerate(counts.items()):
        paths = write_image_set(workdir / "images" / split, {c: per_class for c in classes}, size=size, seed=seed)
        rows = [{"path": f"{p.parent.name}/{p.name}", "label": p.parent.name, "file": str(p.relative_to(workdir))}
                for p in paths]
        pd.DataFrame(rows).to_csv(workdir / f"data/split/{split}.csv", index=False)


def free_port() -> int:
    """A loopback port nothing listens on (the OS picks it)."""
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return probe.getsockname()[1]


@pytest.fixture(scope="module")
def prefect_server(tmp_path_factory):
    """A real Prefect server on a free loopback port, with its own SQLite database, started the way
    the operations command starts it; this process's Prefect settings point at it."""
    from prefect.events.worker import EventsWorker
    from prefect.settings import PREFECT_API_URL, temporary_settings

    from flows.ops import environment, start, stop, wait_for_api

    home = tmp_path_factory.mktemp("ops")
    port = free_port()
    url = f"http://127.0.0.1:{port}/api"
    server = start("prefect-server", [str(Path(sys.executable).parent / "prefect"), "server", "start",
                                      "--host", "127.0.0.1", "--port", str(port)], environment(home, url), home)
    try:
        wait_for_api(url, 120, server, home / "prefect-server.log")
        EventsWorker.drain_all()  # an events client made for another API must not be reused
        with temporary_settings(updates={PREFECT_API_URL: url}):
            yield url
            EventsWorker.drain_all()
    finally:
        stop(server)


def photo(seed: int, size=(96, 64)) -> Image.Image:
    """A smooth random colour image: photo-like at the scale a perceptual hash looks at."""
    rng = np.random.default_rng(seed)
    coarse = Image.fromarray(rng.integers(0, 256, (6, 8, 3), dtype=np.uint8))
    return coarse.resize(size, Image.Resampling.BICUBIC)


def near_copy(img: Image.Image) -> bytes:
    """Resized to half and re-encoded as JPEG: the commonest near-duplicate."""
    out = io.BytesIO()
    img.resize((img.width // 2, img.height // 2), Image.Resampling.LANCZOS).save(out, "JPEG", quality=70)
    return out.getvalue()
