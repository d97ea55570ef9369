"""How often the monitor's drift verdict catches a shift a person would call drift, and how often it cries wolf.

A model is fine-tuned once with the project's default recipe on look-alike product pictures (28 px,
8 classes in 4 look-alike pairs, drawn by benchmarks/label_quality.py); its validation split is the
reference, profiled by the monitor stage's own code. Held-out pictures the model never saw, as is or
shifted, are profiled the same way, and windows of traffic are drawn from them:

    unshifted     held-out pictures as they are (false alarms)
    darker        brightness x0.6                 brighter    brightness x1.5
    contrast      contrast x0.5                   blur        Gaussian blur, sigma 1 px
    noise         Gaussian noise, sigma 25        rotation    rotated 20 degrees
    jpeg          JPEG quality 20                 zoom        resized x1.5 and centre-cropped back
    prior         70% of the window from one class (a different class each window)
    unseen        30% of the window from a class the model never saw (boots)
    darker_mild (x0.85), blur_mild (sigma 0.5), rotation_mild (5 degrees, within the training poses'
    +-15), prior_mild (40% one class), unseen_mild (10% unseen): where detection gives out

Each window is judged by every candidate detector, all built from Evidently's own tests (or scipy's):
    share         the old rule: Evidently's default test per column at its default threshold, the
                  window drifted when at least monitor.drift_share (0.5) of the columns did
    bonferroni    KS per numeric column, chi-squared on the predicted labels, drifted when any column's
                  p-value is below alpha / columns (family-wise error rate alpha)
    bh            the same p-values, Benjamini-Hochberg (scipy.stats.false_discovery_control): drifted
                  when any adjusted p-value is below alpha
    bonferroni_outputs / _stats / _embedding   Bonferroni over one group of columns only (the model's
                  outputs, as in black-box shift detection; the image statistics; the embedding)
    emb_model, emb_model_bootstrap, emb_distance, emb_distance_bootstrap, emb_ratio, emb_mmd,
    emb_mmd_bootstrap   Evidently's embedding-drift methods on the embedding columns, default settings
The monitor's own code (tasks/monitoring/drift.py: drift_snapshot, summarize_drift) judges the
first --check windows of every kind and size again: its verdict must equal the benchmark's verdict
for the detector params.yaml selects.

    python benchmarks/drift_power.py [--sizes 50 100 200 500] [--windows 20] [--unshifted 100]
        [--images 3500] [--pool 3200] [--markdown docs/drift_power.md]
    --quick: a small, short run (a smoke test, not figures)

Prints one JSON line per detector, kind and window size; training logs go to stderr.
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
import pandas as pd
from PIL import Image, ImageEnhance, ImageFilter

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
from benchmarks.label_quality import PAIRS, product, quietly, split, write_splits  # noqa: E402
from evidently.legacy.calculations.stattests.registry import get_stattest  # noqa: E402
from evidently.legacy.core import ColumnType  # noqa: E402
from evidently.legacy.metrics.data_drift.embedding_drift_methods import (  # noqa: E402
    DistanceDriftMethod, MMDDriftMethod, ModelDriftMethod, RatioDriftMethod)
from scipy.stats import false_discovery_control  # noqa: E402

from tasks import train  # noqa: E402
from tasks.common.paths import MODEL_DIR  # noqa: E402
from tasks.data.splits import read_split  # noqa: E402
from tasks.model.served import load_classifier  # noqa: E402
from tasks.monitoring.drift import CATEGORICAL_COLUMNS, DRIFT_COLUMNS, column_tests, drift_snapshot, summarize_drift  # noqa: E402
from tasks.monitoring.features import EMBEDDING_COLUMNS, STAT_COLUMNS, profile_images, profile_split  # noqa: E402
from tests.conftest import make_params  # noqa: E402

KNOWN = PAIRS[:4]        # the classes the model learns
UNSEEN = PAIRS[4]        # boots, plain and striped: never in training
OUTPUT_COLUMNS = ["confidence", "prediction"]


# ---- shifts ------------------------------------------------------------------------------------------

def noisy(img: Image.Image, rng: np.random.Generator) -> Image.Image:
    pixels = np.asarray(img, np.float32) + rng.normal(0, 25, (img.height, img.width, 3))
    return Image.fromarray(np.clip(pixels, 0, 255).astype(np.uint8), "RGB")


def jpeg(img: Image.Image, quality: int = 20) -> Image.Image:
    buffer = io.BytesIO()
    img.save(buffer, "JPEG", quality=quality)
    return Image.open(io.BytesIO(buffer.getvalue())).convert("RGB")


def zoom(img: Image.Image, factor: float = 1.5) -> Image.Image:
    """Resized by factor, then centre-cropped back to the original size: the camera moved closer."""
    w, h = img.size
    big = img.resize((round(w * factor), round(h * factor)), Image.BILINEAR)
    left, top = (big.width - w) // 2, (big.height - h) // 2
    return big.crop((left, top, left + w, top + h))


PIXEL_SHIFTS = {
    "unshifted": lambda img, rng: img,
    "darker": lambda img, rng: ImageEnhance.Brightness(img).enhance(0.6),
    "brighter": lambda img, rng: ImageEnhance.Brightness(img).enhance(1.5),
    "contrast": lambda img, rng: ImageEnhance.Contrast(img).enhance(0.5),
    "blur": lambda img, rng: img.filter(ImageFilter.GaussianBlur(1)),
    "noise": noisy,
    "rotation": lambda img, rng: img.rotate(20, Image.BILINEAR),
    "jpeg": lambda img, rng: jpeg(img),
    "zoom": lambda img, rng: zoom(img),
    # Milder versions: where detection starts to fail.
    "darker_mild": lambda img, rng: ImageEnhance.Brightness(img).enhance(0.85),
    "blur_mild": lambda img, rng: img.filter(ImageFilter.GaussianBlur(0.5)),
    "rotation_mild": lambda img, rng: img.rotate(5, Image.BILINEAR),
}
MIXED_SHIFTS = {"prior": 0.7, "unseen": 0.3, "prior_mild": 0.4, "unseen_mild": 0.1}  # the share of the window
KINDS = sorted(list(PIXEL_SHIFTS) + list(MIXED_SHIFTS), key=lambda kind: kind.endswith("_mild"))  # mild last


# ---- data and model ----------------------------------------------------------------------------------

def pictures(pairs, count: int, rng: np.random.Generator, faintest: float = 0.35) -> tuple[list[Image.Image], list[str]]:
    """count pictures cycling through the classes of the given (kind, detail) pairs."""
    names = [name for kind, detail in pairs for name in (kind, f"{kind}_{detail}")]
    images, labels = [], []
    for i in range(count):
        kind, detail = pairs[(i % len(names)) // 2]
        label = names[i % len(names)]
        images.append(product(kind, detail if label != kind else None, 28, faintest, rng))
        labels.append(label)
    return images, labels


def train_model(workdir: Path, count: int, seed: int):
    """The training set on disk, split 70/15/15, fine-tuned with the default recipe; returns the bundle."""
    images, labels = pictures(KNOWN, count, np.random.default_rng(seed))
    rows = []
    for i, (img, label) in enumerate(zip(images, labels)):
        (workdir / "images" / label).mkdir(parents=True, exist_ok=True)
        img.save(workdir / "images" / label / f"p{i:05d}.png")
        rows.append({"path": f"{label}/p{i:05d}.png", "true": label, "label": label,
                     "file": f"images/{label}/p{i:05d}.png"})
    write_splits(workdir, split(pd.DataFrame(rows), {"train": 0.7, "val": 0.15, "test": 0.15}, seed))
    start = time.perf_counter()
    quietly(train.run, make_params(), workdir)
    return load_classifier(workdir / MODEL_DIR), time.perf_counter() - start


def profile(bundle, images: list[Image.Image], labels: list[str]) -> pd.DataFrame:
    rows = []
    for start in range(0, len(images), 256):
        rows += profile_images(bundle, images[start:start + 256])
    return pd.DataFrame(rows).assign(true=labels)


def pools(bundle, args) -> dict[str, pd.DataFrame]:
    """Feature rows of the held-out pictures under every pixel shift, and of the unseen class."""
    rng = np.random.default_rng(args.seed + 1)
    held_out, labels = pictures(KNOWN, args.pool, rng)
    found = {}
    for kind, shift in PIXEL_SHIFTS.items():
        shift_rng = np.random.default_rng(args.seed + 2)
        found[kind] = profile(bundle, [shift(img, shift_rng) for img in held_out], labels)
    unseen, unseen_labels = pictures([UNSEEN], args.pool // 2, rng)
    found["unseen_class"] = profile(bundle, unseen, unseen_labels)
    return found


def draw_window(kind: str, size: int, found: dict[str, pd.DataFrame], rng: np.random.Generator) -> pd.DataFrame:
    """One window of traffic of the given kind."""
    base = found["unshifted"]
    if kind in PIXEL_SHIFTS:
        return found[kind].iloc[rng.choice(len(base), size, replace=False)]
    if kind.startswith("prior"):  # a share of the window from one class, the rest from all classes
        favourite = rng.choice(sorted(base["true"].unique()))
        many = round(MIXED_SHIFTS[kind] * size)
        chosen = rng.choice(base.index[base["true"] == favourite], many, replace=False)
        rest = rng.choice(base.index.difference(chosen), size - many, replace=False)
        return base.loc[np.concatenate([chosen, rest])]
    strangers = round(MIXED_SHIFTS[kind] * size)  # unseen: a share from a class the model never saw
    return pd.concat([found["unseen_class"].iloc[rng.choice(len(found["unseen_class"]), strangers, replace=False)],
                      base.iloc[rng.choice(len(base), size - strangers, replace=False)]])


# ---- detectors -----------------------------------------------------------------------------------------

# The per-column tests of the monitor's bonferroni detector (KS; chi-squared on the predicted labels).
METHODS = column_tests(make_params(monitor={"detector": "bonferroni"}).monitor)[0]


def column_p_values(reference: pd.DataFrame, current: pd.DataFrame) -> tuple[dict, dict]:
    """Per column: the p-value of the monitor's test, and the old rule's verdict (Evidently's default
    test for the column at its default threshold)."""
    p_values, default_drift = {}, {}
    for column in DRIFT_COLUMNS:
        kind = ColumnType.Categorical if column in CATEGORICAL_COLUMNS else ColumnType.Numerical
        ref, cur = reference[column], current[column]
        test = get_stattest(ref, cur, kind, METHODS[column])
        p_values[column] = float(test(ref, cur, kind, None).drift_score)
        default = get_stattest(ref, cur, kind, None)
        default_drift[column] = bool(default(ref, cur, kind, None).drifted)
    return p_values, default_drift


def bonferroni(p_values: dict, columns: list[str], alpha: float) -> bool:
    return min(p_values[c] for c in columns) < alpha / len(columns)


EMBEDDING_METHODS = {
    "emb_model": ModelDriftMethod(),
    "emb_model_bootstrap": ModelDriftMethod(bootstrap=True),
    "emb_distance": DistanceDriftMethod(),
    "emb_distance_bootstrap": DistanceDriftMethod(bootstrap=True),
    "emb_ratio": RatioDriftMethod(),
    "emb_mmd": MMDDriftMethod(),
    "emb_mmd_bootstrap": MMDDriftMethod(bootstrap=True),
}


def verdicts(reference: pd.DataFrame, current: pd.DataFrame, alpha: float, drift_share: float) -> dict[str, bool]:
    p_values, default_drift = column_p_values(reference, current)
    found = {
        "share": np.mean(list(default_drift.values())) >= drift_share,
        "bonferroni": bonferroni(p_values, DRIFT_COLUMNS, alpha),
        "bh": bool(false_discovery_control(list(p_values.values())).min() < alpha),
        "bonferroni_outputs": bonferroni(p_values, OUTPUT_COLUMNS, alpha),
        "bonferroni_stats": bonferroni(p_values, STAT_COLUMNS, alpha),
        "bonferroni_embedding": bonferroni(p_values, EMBEDDING_COLUMNS, alpha),
    }
    for name, method in EMBEDDING_METHODS.items():
        found[name] = bool(method(current[EMBEDDING_COLUMNS].copy(), reference[EMBEDDING_COLUMNS].copy())[1])
    return found


def shipped_verdict(reference: pd.DataFrame, current: pd.DataFrame, monitor) -> bool:
    """The monitor's own verdict, through Evidently's report as the monitor stage and flow run it."""
    return summarize_drift(drift_snapshot(reference, current, monitor).dict())["dataset_drift"]


# ---- the run -------------------------------------------------------------------------------------------

def emit(row: dict) -> dict:
    print(json.dumps(row), flush=True)
    return row


def measure(reference: pd.DataFrame, found: dict, args, monitor) -> tuple[list[dict], dict]:
    rows, agreement = [], {"windows": 0, "agree": 0}
    for size in args.sizes:
        for kind in KINDS:
            count = args.unshifted if kind == "unshifted" else args.windows
            rng = np.random.default_rng([args.seed, size, KINDS.index(kind)])
            hits, seconds = {}, 0.0
            for w in range(count):
                current = draw_window(kind, size, found, rng)
                start = time.perf_counter()
                judged = verdicts(reference, current, monitor.alpha, monitor.drift_share)
                seconds += time.perf_counter() - start
                for name, drifted in judged.items():
                    hits[name] = hits.get(name, 0) + int(drifted)
                if w < args.check:
                    agreement["windows"] += 1
                    agreement["agree"] += int(shipped_verdict(reference, current, monitor) == judged[monitor.detector])
            for name, hit in hits.items():
                rows.append(emit({"detector": name, "kind": kind, "size": size, "windows": count,
                                  "flagged": round(hit / count, 3)}))
            print(f"{kind} @ {size}: {count} windows, {seconds / count:.2f} s each", file=sys.stderr)
    return rows, agreement


def flagged(rows: list[dict], detector: str, kind: str, size: int) -> float:
    return next(r["flagged"] for r in rows if (r["detector"], r["kind"], r["size"]) == (detector, kind, size))


def table(rows: list[dict], detectors: list[str], sizes: list[int]) -> str:
    """Markdown: one row per kind, one column per detector and window size (share of windows flagged)."""
    heads = [f"{d} @{s}" for d in detectors for s in sizes]
    lines = ["| window | " + " | ".join(heads) + " |", "| --- |" + " --- |" * len(heads)]
    for kind in KINDS:
        cells = [f"{flagged(rows, d, kind, s):.2f}" for d in detectors for s in sizes]
        lines.append(f"| {kind + ' (false alarms)' if kind == 'unshifted' else kind} | " + " | ".join(cells) + " |")
    return "\n".join(lines)


def summary(rows: list[dict], sizes: list[int]) -> str:
    """Markdown: per detector and size, the false-alarm rate and the weakest power over the listed
    (not mild) kinds, with that kind."""
    listed = [k for k in KINDS if k != "unshifted" and not k.endswith("_mild")]
    lines = ["| detector | " + " | ".join(f"false alarms @{s} | weakest power @{s}" for s in sizes) + " |",
             "| --- |" + " --- | --- |" * len(sizes)]
    for name in dict.fromkeys(r["detector"] for r in rows):
        cells = []
        for s in sizes:
            weakest = min(listed, key=lambda kind: flagged(rows, name, kind, s))
            cells.append(f"{flagged(rows, name, 'unshifted', s):.2f} | {flagged(rows, name, weakest, s):.2f} ({weakest})")
        lines.append(f"| {name} | " + " | ".join(cells) + " |")
    return "\n".join(lines)


def markdown(rows: list[dict], sizes: list[int], detector: str) -> str:
    return (f"Share of windows flagged, by the default detector ({detector}) and the old share rule:\n\n"
            f"{table(rows, [detector, 'share'], sizes)}\n\nEvery detector (weakest power over the kinds that are "
            f"not mild):\n\n{summary(rows, sizes)}\n")


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(prog="python benchmarks/drift_power.py", description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--sizes", type=int, nargs="+", default=[50, 100, 200, 500], help="window sizes (images)")
    parser.add_argument("--windows", type=int, default=20, help="windows per shifted kind and size")
    parser.add_argument("--unshifted", type=int, default=100, help="unshifted windows per size")
    parser.add_argument("--images", type=int, default=3500, help="pictures the model is trained, validated and tested on")
    parser.add_argument("--pool", type=int, default=3200, help="held-out pictures the windows are drawn from")
    parser.add_argument("--check", type=int, default=2, help="windows per kind and size judged by the monitor's code too")
    parser.add_argument("--seed", type=int, default=0, help="pictures, split, shifts and windows")
    parser.add_argument("--markdown", type=Path, help="also write the tables here")
    parser.add_argument("--quick", action="store_true", help="a small, short run: a smoke test, not figures")
    args = parser.parse_args(argv)
    if args.quick:
        args.sizes, args.windows, args.unshifted, args.images, args.pool, args.check = [100], 3, 3, 600, 800, 1
    monitor = make_params().monitor
    with tempfile.TemporaryDirectory() as tmp:
        workdir = Path(tmp)
        bundle, train_seconds = train_model(workdir, args.images, args.seed)
        reference = profile_split(bundle, workdir, read_split(workdir, "val"), "profile val")
        start = time.perf_counter()
        found = pools(bundle, args)
        emit({"model": "trained", "train_seconds": round(train_seconds, 1), "reference_rows": len(reference),
              "val_accuracy": round(float((reference["prediction"] == reference["label"]).mean()), 4),
              "pool": args.pool, "profile_seconds": round(time.perf_counter() - start, 1)})
        rows, agreement = measure(reference, found, args, monitor)
    emit({"monitor_detector": monitor.detector, "checked_windows": agreement["windows"],
          "same_verdict": agreement["agree"]})
    if args.markdown:
        args.markdown.write_text(markdown(rows, args.sizes, monitor.detector))


if __name__ == "__main__":
    main()
