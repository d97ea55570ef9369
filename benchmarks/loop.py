"""The whole review loop, measured: does labelling N served images of a shifted camera cure the shift?

A look-alike product set of our own: 8 classes, four container shapes (box, jar, bottle, cup), each
with its label band across or along it, in random colours, sizes, positions and tilts on a noisy
studio background; 48 px PNGs, trained at 32 px. Then, with the project's real code throughout:

    1. production   the real flow (flows/pipeline.py: every dvc.yaml stage, gate, promotion) trains a
                    model on the normal camera's images
    2. traffic      a pool of served images from a shifted camera, half darker (x0.5), half hazy
                    (low contrast under a warm cast, slightly blurred), classified by production
    3. selection    the service's own selection code (tasks/labels/queue.py) picks N of them: the
                    least sure (service.uncertain.margin, least sure first) or a random audit sample
    4. review       an oracle answers each with the true label through the real review code
                    (tasks/labels/review.py: copied into data.root, logged, dvc add)
    5. retrain      the real flow again; the gate decides, promotion follows it

Each N and selection starts from a copy of the project right after step 1. For each, printed as a
JSON line and as a markdown table row: the gate's verdict, held-out accuracy before (production) and
after (the retrained challenger) on shifted and on normal images none of the models saw, the images
the gate left out, and the wall time of steps 3-5. A reference model trained with the whole traffic
pool labelled gives the gap that "half of the gap" refers to.

    python benchmarks/loop.py [--sizes 50 100 200 400] [--per-class 150] [--pool 1200] [--work DIR]

Takes about 40 minutes on 2 CPU cores with the defaults.
"""
from __future__ import annotations

import argparse
import json
import os
import shutil
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import yaml
from PIL import Image, ImageDraw, ImageFilter

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

SHAPES = ("box", "jar", "bottle", "cup")
BANDS = ("across", "along")
CLASSES = [f"{shape}-{band}" for shape in SHAPES for band in BANDS]
SIDE = 48
SHIFTS = ("darker", "hazy")


def product(label: str, rng: np.random.Generator) -> Image.Image:
    """One photo of a product of class `label`: shape and band orientation fixed, everything else random."""
    shape, band = label.split("-")
    big = SIDE * 4
    base = 170 + rng.normal(0, 12, 3)
    ramp = np.linspace(-25, 25, big)[:, None, None] * rng.choice([-1, 1])
    background = np.clip(base + ramp + rng.normal(0, 6, (big, big, 3)), 0, 255).astype(np.uint8)
    img = Image.fromarray(background)
    draw = ImageDraw.Draw(img)
    w, h = {"box": (0.55, 0.5), "jar": (0.5, 0.55), "bottle": (0.3, 0.75), "cup": (0.5, 0.55)}[shape]
    w, h = [s * big * rng.uniform(0.65, 0.95) for s in (w, h)]
    cx, cy = big / 2 + rng.uniform(-0.1, 0.1) * big, big / 2 + rng.uniform(-0.08, 0.08) * big
    colour = tuple(int(c) for c in rng.integers(30, 230, 3))
    box = (cx - w / 2, cy - h / 2, cx + w / 2, cy + h / 2)
    if shape == "box":
        draw.rectangle(box, fill=colour)
    elif shape == "jar":
        draw.rounded_rectangle(box, radius=w * 0.2, fill=colour)  # a box with rounded corners: a look-alike
    elif shape == "bottle":
        draw.rounded_rectangle(box, radius=w * 0.2, fill=colour)
        draw.rectangle((cx - w * 0.18, cy - h / 2 - h * 0.15, cx + w * 0.18, cy - h / 2 + 2), fill=colour)
    else:
        draw.polygon([(box[0], box[1]), (box[2], box[1]), (cx + w * 0.32, box[3]), (cx - w * 0.32, box[3])], fill=colour)
    stripe = tuple(int(c * 0.7 + 255 * 0.3) for c in colour)  # a faint label: what a darker camera loses first
    if band == "across":
        draw.rectangle((box[0] + w * 0.1, cy - h * 0.1, box[2] - w * 0.1, cy + h * 0.1), fill=stripe)
    else:
        draw.rectangle((cx - w * 0.1, box[1] + h * 0.1, cx + w * 0.1, box[3] - h * 0.1), fill=stripe)
    img = img.rotate(rng.uniform(-12, 12), resample=Image.Resampling.BILINEAR, fillcolor=tuple(int(c) for c in base))
    return img.resize((SIDE, SIDE), Image.Resampling.LANCZOS)


def shifted(img: Image.Image, kind: str) -> Image.Image:
    """The same scene through the other camera."""
    pixels = np.asarray(img, dtype=np.float32)
    if kind == "darker":
        return Image.fromarray(np.clip(pixels * 0.5, 0, 255).astype(np.uint8))
    haze = pixels * 0.55 + np.array([205, 170, 120], np.float32) * 0.45
    return Image.fromarray(np.clip(haze, 0, 255).astype(np.uint8)).filter(ImageFilter.GaussianBlur(0.8))


def write_images(folder: Path, count_per_class: int, seed: int, shift: str | None = None) -> dict[Path, str]:
    """`count_per_class` images of each class under folder/<class>/; path -> true label."""
    rng, truth = np.random.default_rng(seed), {}
    for label in CLASSES:
        (folder / label).mkdir(parents=True, exist_ok=True)
        for i in range(count_per_class):
            img = product(label, rng)
            kind = shift if shift != "mixed" else SHIFTS[i % 2]
            path = folder / label / f"{seed}-{i:04d}.png"
            (shifted(img, kind) if kind else img).save(path)
            truth[path] = label
    return truth


def new_project(root: Path, per_class: int, epochs: int) -> None:
    """The project's code, dvc.yaml and params.yaml, with data.root images/ (normal camera) and a DVC remote."""
    for folder in ("tasks", "service", "flows"):
        shutil.copytree(ROOT / folder, root / folder, ignore=shutil.ignore_patterns("__pycache__"))
    for file in ("dvc.yaml", ".dvcignore"):
        shutil.copy(ROOT / file, root / file)
    raw = yaml.safe_load((ROOT / "params.yaml").read_text())
    raw["data"]["root"] = "images"
    raw["validate"]["warn_only"] = ["duplicate_share", "label_conflict"]  # look-alikes: near-copies across classes
    raw["train"].update({"epochs": epochs, "augment": {**raw["train"]["augment"], "rotation": 0}})
    raw["labels"].update({"folds": 2, "epochs": 1, "max_share": 1.0})  # not what is measured here: kept short
    raw["evaluate"]["runtime"] = "torch"
    raw["service"]["uncertain"]["margin"] = 0.6  # enough least-sure images in the pool for the largest N
    (root / "params.yaml").write_text(yaml.safe_dump(raw, sort_keys=False))
    (root / "data/traffic").mkdir(parents=True)
    (root / "deploy").mkdir()
    (root / "deploy/production.json").write_text('{\n  "current": null,\n  "previous": []\n}\n')
    write_images(root / "images", per_class, seed=1)
    subprocess.run([sys.executable, "-m", "dvc", "init", "-q", "--no-scm"], cwd=root, check=True)


def run_flow(root: Path) -> dict:
    """The real pipeline flow (stages, gate, promotion); the gate's decision."""
    from flows.pipeline import pipeline

    state = pipeline(repo_dir=str(root), return_state=True)
    if not state.is_completed():
        raise SystemExit(f"the flow failed in {root}: {state.message}")
    return json.loads((root / "reports/gate/decision.json").read_text())


def accuracy(bundle_dir: Path, truth: dict[Path, str]) -> float:
    from tasks.evaluation.predict import predict_files
    from tasks.model.bundle import load_bundle

    bundle = load_bundle(bundle_dir)
    files = list(truth)
    logits, _, _ = predict_files(bundle, files, 256)
    predicted = np.array(bundle.labels)[logits.argmax(1)]
    return round(float((predicted == np.array([truth[f] for f in files])).mean()), 4)


def production_dir(root: Path) -> Path:
    from tasks.model.registry import current_model, model_dir

    return model_dir(current_model(root / "deploy/production.json"))


def serve_and_review(root: Path, pool: dict[Path, str], n: int, selection: str, seed: int) -> int:
    """Production classifies the pool; the service's selection keeps N; the oracle reviews them. Returns how many."""
    from service.settings import ServiceParams
    from tasks.common.config import load_params
    from tasks.labels.queue import AUDIT_DIR, QUEUE_DIR, keep
    from tasks.labels.review import apply_reviews, uncertain_items
    from tasks.labels.uncertainty import margin
    from tasks.model.bundle import load_bundle
    from tasks.model.registry import current_model

    params = load_params(root / "params.yaml", ServiceParams)
    bundle = load_bundle(production_dir(root))
    files = list(pool)
    images = [Image.open(f).convert("RGB") for f in files]
    probs = np.concatenate([bundle.predict_proba(bundle.preprocess(images[i:i + 256]))
                            for i in range(0, len(images), 256)])
    traffic = root / params.monitor.traffic_dir
    if selection == "least sure":  # as the service keeps them; review takes the least sure first
        chosen, kind = margin(probs) < params.service.uncertain.margin, QUEUE_DIR
    else:  # a random sample of the traffic, as the audit draws it (here exactly N, for equal N)
        chosen, kind = np.zeros(len(files), bool), AUDIT_DIR
        chosen[np.random.default_rng(seed).choice(len(files), n, replace=False)] = True
    written = keep(traffic / kind, images, probs, bundle.labels, current_model(root / "deploy/production.json"),
                   [f.name for f in files], chosen, kind)
    truth = {png.name: pool[f] for png, f in zip(written, np.array(files)[chosen])}
    items = uncertain_items(root, params, kind=kind)[:n]
    reviews = [{**item, "choice": truth[Path(item["image"]).name], "reviewer": "oracle", "reviewed_at": "now",
                "problem": None} for item in items]
    applied = apply_reviews(root, params, reviews, CLASSES)
    return int((applied["action"] == "added").sum())


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--sizes", type=int, nargs="+", default=[50, 100, 200, 400])
    parser.add_argument("--selections", nargs="+", default=["least sure", "random"])
    parser.add_argument("--per-class", type=int, default=150, help="normal-camera images per class in data.root")
    parser.add_argument("--pool", type=int, default=1200, help="shifted served images the selection picks from")
    parser.add_argument("--held-out", type=int, default=60, help="held-out images per class and camera")
    parser.add_argument("--epochs", type=int, default=6)
    parser.add_argument("--work", type=Path, default=Path("/tmp/imgclf-loop"))
    args = parser.parse_args(argv)
    from tasks.common.threads import use_cores

    use_cores()
    if args.work.exists():
        shutil.rmtree(args.work)
    base = args.work / "base"
    base.mkdir(parents=True)
    os.environ["BENTOML_HOME"] = str(args.work / "bentoml")
    held = {"normal": write_images(args.work / "held/normal", args.held_out, seed=7),
            **{kind: write_images(args.work / f"held/{kind}", args.held_out, seed=8, shift=kind) for kind in SHIFTS}}
    pool = write_images(args.work / "pool", args.pool // len(CLASSES), seed=9, shift="mixed")

    started = time.perf_counter()
    new_project(base, args.per_class, args.epochs)
    run_flow(base)
    before = {name: accuracy(production_dir(base), truth) for name, truth in held.items()}
    print(json.dumps({"step": "production", "seconds": round(time.perf_counter() - started), **before}), flush=True)

    reference = args.work / "reference"
    shutil.copytree(base, reference, symlinks=True)
    for path, label in pool.items():
        shutil.copy(path, reference / "images" / label / f"pool-{path.name}")
    run_flow(reference)
    ref = {name: accuracy(reference / "models", truth) for name, truth in held.items()}
    print(json.dumps({"step": "reference: every pool image labelled", **ref}), flush=True)

    rows = []
    for selection in args.selections:
        for n in args.sizes:
            loop = args.work / f"{selection.replace(' ', '-')}-{n}"
            shutil.copytree(base, loop, symlinks=True)
            started = time.perf_counter()
            added = serve_and_review(loop, pool, n, selection, seed=n)
            decision = run_flow(loop)
            seconds = time.perf_counter() - started
            after = {name: accuracy(loop / "models", truth) for name, truth in held.items()}
            shift_before = np.mean([before[k] for k in SHIFTS])
            shift_after = np.mean([after[k] for k in SHIFTS])
            row = {"selection": selection, "n": n, "added": added, "verdict": decision["verdict"],
                   "shifted_before": round(float(shift_before), 4), "shifted_after": round(float(shift_after), 4),
                   **{f"{k}_after": after[k] for k in SHIFTS},
                   "normal_before": before["normal"], "normal_after": after["normal"],
                   "left_out": decision["left_out"]["images"], "test_images": decision["test_images"],
                   "gate_slices": decision.get("slices"), "seconds": round(seconds)}
            rows.append(row)
            print(json.dumps(row), flush=True)

    gap = np.mean([ref[k] for k in SHIFTS]) - np.mean([before[k] for k in SHIFTS])
    print(f"\nproduction: normal {before['normal']}, darker {before['darker']}, hazy {before['hazy']}; reference "
          f"(all {len(pool)} pool images labelled): normal {ref['normal']}, darker {ref['darker']}, hazy {ref['hazy']}; "
          f"shifted gap {gap:.4f}\n")
    print("| selection | N | gate | shifted before → after | normal before → after | left out | loop wall time |")
    print("|---|---|---|---|---|---|---|")
    for r in rows:
        print(f"| {r['selection']} | {r['n']} | {r['verdict']} | {r['shifted_before']:.3f} → {r['shifted_after']:.3f} "
              f"| {r['normal_before']:.3f} → {r['normal_after']:.3f} | {r['left_out']} | {r['seconds']} s |")


if __name__ == "__main__":
    main()
