"""Planted label noise found by the label_quality stage, and what a reviewer's labels are worth.

Part A, suspects: a copy of a dataset with a share of its labels flipped (seeded) is judged by the
label_quality stage (tasks/label_quality.py: out-of-fold probabilities from K fold fine-tunes, then
cleanlab). Per fold recipe (labels.strategy x labels.epochs) the stage runs once, timed; the same
out-of-fold probabilities are then read back from the fold checkpoints (a finished fold resumes
without training) and judged by every cleanlab method and ranking:
    precision, recall     of the flagged suspects against the flipped labels
    top_n_precision       share of flips among the first N suspects, N = the number of flips
    oof_accuracy          out-of-fold accuracy against the given (noisy) labels, as the stage reports
                          it, and against the true labels
Flips are planted in every split (the stage judges train, val and test). With the stage's
default recipe, the train stage is then trained three ways and scored on the TRUE test labels:
noisy labels; labels after a simulated review (every suspect in train+val is given its true
label: a flip is restored, an honest label stays); clean labels.

Part B, uncertainty: a model trained on a small labelled share classifies a hidden "production"
pool; the N pool images with the smallest top-1 minus top-2 margin
(tasks/labels/uncertainty.py) or N random ones get their true labels, and the model is retrained.
Test accuracy at equal budget N, random over several seeds.

Sets:
    digits      scikit-learn's 1,797 digit scans as the sample stage writes them; flips uniform
    lookalikes  28 px product pictures, 10 classes in 5 look-alike pairs (a garment with and without
                a pocket, stripe, logo or texture; drawn by benchmarks/near_duplicates.py), with pose,
                size, grey level, colour, detail strength and noise varying within a class; half
                the flips go to the partner class, half uniform

    python benchmarks/label_quality.py --part suspects [--sets digits lookalikes] [--folds 5]
        [--strategies full linear_probe] [--epochs 2 4] [--train-seeds 42 43 44] [--markdown out.md]
    python benchmarks/label_quality.py --part uncertainty [--sets digits] [--budgets 50 100 200] [--seeds 0 1 2]
    --quick: a small, short run of either part (a smoke test, not figures)

Prints one JSON line per figure; training logs go to stderr.
"""
from __future__ import annotations

import argparse
import contextlib
import json
import shutil
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import pandas as pd
from PIL import Image
from sklearn.model_selection import train_test_split

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
from benchmarks.near_duplicates import HI, look_alike, outline  # noqa: E402
from tasks import label_quality, train  # noqa: E402
from tasks.common.paths import MODEL_DIR, SUSPECTS_CSV, split_csv  # noqa: E402
from tasks.evaluation.calibration import softmax  # noqa: E402
from tasks.evaluation.predict import predict_files  # noqa: E402
from tasks.labels.folds import CHECKPOINTS, out_of_fold  # noqa: E402
from tasks.labels.issues import suspects  # noqa: E402
from tasks.labels.uncertainty import most_uncertain  # noqa: E402
from tasks.model.backbones import resolve_inputs  # noqa: E402
from tasks.model.bundle import load_bundle  # noqa: E402
from tasks.sample import write_digits  # noqa: E402
from tasks.training.checkpoint import CHECKPOINT_DIR  # noqa: E402
from tests.conftest import make_params  # noqa: E402

METHODS = ["prune_by_noise_rate", "both", "confident_learning", "predicted_neq_given"]
RANKINGS = ["self_confidence", "normalized_margin"]
# The stage's defaults (params.yaml, labels); the review and accuracy runs use this recipe.
DEFAULT = {"strategy": "full", "epochs": 4, "method": "prune_by_noise_rate", "rank_by": "self_confidence"}
# Look-alike pairs: a garment plain and with one detail. Garment kinds of near_duplicates.outline,
# told apart by their vertex count, and a boot drawn here.
PAIRS = [("shirt", "pocket"), ("trousers", "stripe"), ("bag", "logo"), ("dress", "texture"), ("boot", "stripe")]
VERTICES = {"shirt": 10, "trousers": 7, "bag": 4, "dress": 6}


# ---- data sets -------------------------------------------------------------------------------------

def boot(rng: np.random.Generator) -> list[tuple[float, float]]:
    """A boot-like polygon at HI px (a fifth kind, so that five pairs share no garment)."""
    c, w, h = HI / 2, rng.uniform(0.5, 0.65) * HI, rng.uniform(0.45, 0.6) * HI
    left, top, bottom = c - w / 2, c - h / 2, c + h / 2
    shaft = rng.uniform(0.3, 0.4) * w
    poly = [(left, top), (left + shaft, top), (left + shaft, c), (left + w, c + h * 0.15),
            (left + w, bottom), (left, bottom)]
    return [(x + rng.uniform(-3, 3), y + rng.uniform(-3, 3)) for x, y in poly]


def garment(kind: str, rng: np.random.Generator) -> list[tuple[float, float]]:
    if kind == "boot":
        return boot(rng)
    while True:  # outline() draws its kind at random: draw until it is the one asked for
        poly = outline(rng)
        if len(poly) == VERTICES[kind]:
            return poly


def posed(poly: list, rng: np.random.Generator) -> list[tuple[float, float]]:
    """The polygon rotated, scaled and shifted: the same product photographed again."""
    angle, scale = np.deg2rad(rng.uniform(-15, 15)), rng.uniform(0.75, 1.1)
    shift = rng.uniform(-0.08, 0.08, 2) * HI
    cos, sin, c = np.cos(angle), np.sin(angle), HI / 2
    return [(c + scale * (cos * (x - c) - sin * (y - c)) + shift[0],
             c + scale * (sin * (x - c) + cos * (y - c)) + shift[1]) for x, y in poly]


def product(kind: str, detail: str | None, size: int, faintest: float, rng: np.random.Generator) -> Image.Image:
    """One picture of a garment, with its detail at a random strength in [faintest, 1] (None: plain).

    A faint detail is a genuinely ambiguous picture: that is what keeps the set from being easy.
    """
    poly, level, seed = posed(garment(kind, rng), rng), int(rng.uniform(90, 230)), int(rng.integers(2**32))
    pixels = np.asarray(look_alike(poly, level, "plain", size, np.random.default_rng(seed)), np.float32)
    if detail is not None:  # the same garment with the detail, blended in at some strength
        drawn = np.asarray(look_alike(poly, level, detail, size, np.random.default_rng(seed)), np.float32)
        pixels = pixels + rng.uniform(faintest, 1.0) * (drawn - pixels)
    tint = rng.uniform(0.55, 1.0, 3)  # the garment's colour
    rgb = pixels[..., None] * tint + rng.normal(0, 12, (size, size, 3))
    return Image.fromarray(np.clip(rgb, 0, 255).astype(np.uint8), "RGB")


def lookalike_classes() -> tuple[list[str], dict[str, str]]:
    """Class names, and each class's look-alike partner."""
    names, partner = [], {}
    for kind, detail in PAIRS:
        plain, detailed = kind, f"{kind}_{detail}"
        names += [plain, detailed]
        partner[plain], partner[detailed] = detailed, plain
    return names, partner


def write_lookalikes(images: Path, count: int, faintest: float, seed: int, size: int = 28) -> pd.DataFrame:
    names, _ = lookalike_classes()
    rng, rows = np.random.default_rng(seed), []
    for i in range(count):
        kind, detail = PAIRS[(i % len(names)) // 2]
        label = names[i % len(names)]
        img = product(kind, detail if label != kind else None, size, faintest, rng)
        (images / label).mkdir(parents=True, exist_ok=True)
        img.save(images / label / f"p{i:05d}.png")
        rows.append({"path": f"{label}/p{i:05d}.png", "true": label})
    return pd.DataFrame(rows)


def write_set(name: str, workdir: Path, args) -> tuple[pd.DataFrame, dict[str, str] | None]:
    """Images under workdir/images/<class>/, and a frame of path, file and true label (partners or None)."""
    images = workdir / "images"
    if name == "digits":
        write_digits(images)
        frame = pd.DataFrame({"path": sorted(str(p.relative_to(images)) for p in images.rglob("*.png"))})
        frame["true"], partner = frame["path"].str.split("/").str[0], None
    else:
        frame, partner = write_lookalikes(images, args.images, args.faintest, args.seed), lookalike_classes()[1]
    frame["file"] = "images/" + frame["path"]
    return frame, partner


def split(frame: pd.DataFrame, shares: dict[str, float], seed: int) -> pd.DataFrame:
    """A `split_name` column: stratified by the true label, shares in the given order."""
    out, rest, left = frame.copy(), frame.index.to_numpy(), 1.0
    for name, share in list(shares.items())[:-1]:
        rest, taken = train_test_split(rest, test_size=share / left, stratify=frame.loc[rest, "true"], random_state=seed)
        out.loc[taken, "split_name"], left = name, left - share
    out.loc[rest, "split_name"] = list(shares)[-1]
    return out


def plant_flips(frame: pd.DataFrame, share: float, partner: dict | None, seed: int) -> pd.DataFrame:
    """A `label` column: the true label, with `share` of the images flipped to another class; with
    partners, half of the flips go to the look-alike partner, half anywhere else."""
    rng = np.random.default_rng(seed)
    classes = sorted(frame["true"].unique())
    out = frame.assign(label=frame["true"])
    flipped = rng.choice(len(frame), size=round(share * len(frame)), replace=False)
    for k, row in enumerate(flipped):
        true = frame["true"].iat[row]
        if partner is not None and k % 2 == 0:
            out.iat[row, out.columns.get_loc("label")] = partner[true]
        else:
            out.iat[row, out.columns.get_loc("label")] = rng.choice([c for c in classes if c != true])
    return out


def write_splits(workdir: Path, frame: pd.DataFrame, column: str = "label") -> None:
    """data/split/<name>.csv (path, label, file) as the split stage writes them, labels from `column`."""
    (workdir / "data/split").mkdir(parents=True, exist_ok=True)
    for name in ("train", "val", "test"):
        part = frame[frame["split_name"] == name]
        part[["path", column, "file"]].rename(columns={column: "label"}).to_csv(workdir / split_csv(name), index=False)


# ---- the project's stages --------------------------------------------------------------------------

def quietly(fn, *args):
    """Call fn with its progress lines on stderr, so that stdout holds the figures alone."""
    with contextlib.redirect_stdout(sys.stderr):
        return fn(*args)


def fresh(workdir: Path) -> None:
    """No checkpoint or bundle of an earlier run: each run starts from the ImageNet weights (the image cache stays)."""
    for path in (CHECKPOINT_DIR, MODEL_DIR):
        shutil.rmtree(workdir / path, ignore_errors=True)


def train_and_score(params, workdir: Path, test: pd.DataFrame) -> float:
    """The train stage on the split files as they are; its bundle's accuracy on the TRUE test labels."""
    fresh(workdir)
    quietly(train.run, params, workdir)
    probs, labels = classify(workdir, test)
    return round(float((probs.argmax(1) == true_indices(test, labels)).mean()), 4)


def classify(workdir: Path, frame: pd.DataFrame) -> tuple[np.ndarray, list[str]]:
    """The bundle's calibrated probabilities of the frame's images, as the evaluate stage computes them."""
    bundle = load_bundle(workdir / MODEL_DIR)
    logits, _, _ = predict_files(bundle, [workdir / f for f in frame["file"]], 256)
    return softmax(logits, bundle.temperature), bundle.labels


def true_indices(frame: pd.DataFrame, labels: list[str]) -> np.ndarray:
    return frame["true"].map({label: i for i, label in enumerate(labels)}).to_numpy()


def judged_probabilities(params, workdir: Path) -> tuple[pd.DataFrame, np.ndarray, list[str], float]:
    """The stage, timed from a clean start; then its out-of-fold probabilities, read back from the finished
    fold checkpoints, in the stage's order (train + val, then test)."""
    shutil.rmtree(workdir / CHECKPOINTS, ignore_errors=True)
    start = time.perf_counter()
    quietly(label_quality.run, params, workdir)
    seconds = time.perf_counter() - start
    frames = {n: pd.read_csv(workdir / split_csv(n), dtype=str).assign(split_name=n) for n in ("train", "val", "test")}
    labels = sorted(frames["train"]["label"].unique())
    labelled = pd.concat([frames["train"], frames["val"]], ignore_index=True)
    found = quietly(out_of_fold, resolve_inputs(params.train), params.labels, workdir, labelled, frames["test"],
                    labels, [workdir / split_csv(n) for n in frames])
    probs = np.concatenate([found["oof"], found["test"]])
    judged = pd.concat([labelled, frames["test"]], ignore_index=True)
    # The probabilities read back must be the stage's own: its suspects file is the check.
    table = suspects(judged, probs, labels, params.labels)
    stage_table = pd.read_csv(workdir / SUSPECTS_CSV, dtype=str)
    if list(table["file"]) != list(stage_table["file"]):
        print(f"warning: the read-back probabilities differ from the stage's ({len(table)} vs "
              f"{len(stage_table)} suspects)", file=sys.stderr)
    return judged, probs, labels, seconds


# ---- part A: suspects ------------------------------------------------------------------------------

def score_suspects(judged: pd.DataFrame, probs: np.ndarray, labels: list[str], params) -> dict:
    """Precision and recall of the flagged labels; precision among the first N suspects."""
    table = suspects(judged, probs, labels, params.labels)
    flips = set(judged.loc[judged["label"] != judged["true"], "file"])
    found = table["file"].isin(flips)
    top = table.head(len(flips))["file"].isin(flips)
    return {"flips": len(flips), "suspects": len(table),
            "precision": round(float(found.mean()), 4) if len(table) else None,
            "recall": round(float(found.sum() / len(flips)), 4),
            "top_n_precision": round(float(top.sum() / len(flips)), 4),
            "_table": table}


def suspects_part(name: str, workdir: Path, args) -> list[dict]:
    frame, partner = write_set(name, workdir, args)
    frame = plant_flips(split(frame, {"train": 0.7, "val": 0.15, "test": 0.15}, args.seed),
                        args.flips or (0.05 if name == "digits" else 0.08), partner, args.seed)
    write_splits(workdir, frame)
    rows, review = [], None
    for strategy in args.strategies:
        for epochs in args.epochs:
            labels_cfg = {"folds": args.folds, "strategy": strategy, "epochs": epochs, "max_share": 1.0}
            params = make_params(labels=labels_cfg)
            judged, probs, labels, seconds = judged_probabilities(params, workdir)
            judged = judged.merge(frame[["file", "true"]], on="file")
            given = judged["label"].map({c: i for i, c in enumerate(labels)}).to_numpy()
            common = {"part": "suspects", "set": name, "images": len(judged), "folds": args.folds,
                      "strategy": strategy, "epochs": epochs, "stage_seconds": round(seconds, 1),
                      "oof_accuracy": round(float((probs.argmax(1) == given).mean()), 4),
                      "oof_accuracy_true": round(float((probs.argmax(1) == true_indices(judged, labels)).mean()), 4)}
            for method in METHODS:
                for rank_by in RANKINGS:
                    lq = make_params(labels={**labels_cfg, "method": method, "rank_by": rank_by})
                    figures = score_suspects(judged, probs, labels, lq)
                    table = figures.pop("_table")
                    rows.append(emit({**common, "method": method, "rank_by": rank_by, **figures}))
                    recipe = {"strategy": strategy, "epochs": epochs, "method": method, "rank_by": rank_by}
                    if recipe == DEFAULT or (review is None and (method, rank_by) == (DEFAULT["method"], DEFAULT["rank_by"])):
                        review = table  # the stage's defaults; else (a short run) its method on the first recipe
    if review is not None and not args.skip_accuracy:
        rows += accuracy_runs(name, workdir, frame, review, args)
    return rows


def accuracy_runs(name: str, workdir: Path, frame: pd.DataFrame, review: pd.DataFrame, args) -> list[dict]:
    """The train stage on noisy, reviewed and clean labels, scored on the true test labels."""
    reviewed = frame["file"].isin(review.loc[review["split"].isin(["train", "val"]), "file"])
    frame = frame.assign(reviewed=frame["label"].where(~reviewed, frame["true"]))
    test, rows = frame[frame["split_name"] == "test"], []
    for seed in args.train_seeds:
        params = make_params(train={"seed": seed, **({"epochs": args.train_epochs} if args.train_epochs else {})})
        scores = {}
        for column, variant in (("label", "noisy"), ("reviewed", "reviewed"), ("true", "clean")):
            write_splits(workdir, frame, column)
            scores[variant] = train_and_score(params, workdir, test)
        fit = frame["split_name"].isin(["train", "val"])
        rows.append(emit({
            "part": "suspects", "set": name, "accuracy_run": True, "train_seed": seed,
            "flips_train_val": int((frame["label"] != frame["true"])[fit].sum()),
            "left_after_review": int((frame["reviewed"] != frame["true"])[fit].sum()),
            "reviewed": int(reviewed.sum()), "test_images": len(test),
            **{f"test_accuracy_{k}": v for k, v in scores.items()}}))
    write_splits(workdir, frame)
    return rows


# ---- part B: uncertainty ---------------------------------------------------------------------------

def uncertainty_part(name: str, workdir: Path, args) -> list[dict]:
    frame, _ = write_set(name, workdir, args)
    frame = split(frame, {"train": args.labelled, "val": 0.1, "test": 0.15, "pool": 0.75 - args.labelled}, args.seed)
    pool, test = frame[frame["split_name"] == "pool"], frame[frame["split_name"] == "test"]
    params = make_params(train={"seed": args.seed, **({"epochs": args.train_epochs} if args.train_epochs else {})})
    write_splits(workdir, frame, "true")
    base = train_and_score(params, workdir, test)
    probs, labels = classify(workdir, pool)
    wrong = probs.argmax(1) != true_indices(pool, labels)
    rows = [emit({"part": "uncertainty", "set": name, "images": len(frame), "budget": 0,
                  "train_images": int((frame["split_name"] == "train").sum()), "pool_images": len(pool),
                  "pool_accuracy": round(float(1 - wrong.mean()), 4), "test_accuracy": base})]
    for budget in args.budgets:
        picks = {"uncertainty": most_uncertain(probs, budget)}
        picks.update({f"random_{s}": np.random.default_rng(s).choice(len(pool), budget, replace=False) for s in args.seeds})
        scores = {}
        for how, rows_picked in picks.items():
            added = frame.assign(split_name=frame["split_name"].where(~frame.index.isin(pool.index[rows_picked]), "train"))
            write_splits(workdir, added, "true")  # the reviewer's labels are the true ones
            scores[how] = train_and_score(params, workdir, test)
            rows.append(emit({"part": "uncertainty", "set": name, "budget": budget, "selection": how,
                              "picked_misclassified": round(float(wrong[rows_picked].mean()), 4),
                              "test_accuracy": scores[how]}))
        random = np.array([v for k, v in scores.items() if k != "uncertainty"])
        rows.append(emit({"part": "uncertainty", "set": name, "budget": budget, "summary": True,
                          "uncertainty": scores["uncertainty"], "random_mean": round(float(random.mean()), 4),
                          "random_min": float(random.min()), "random_max": float(random.max()),
                          "gain_over_random_pt": round(100 * (scores["uncertainty"] - random.mean()), 2)}))
    return rows


# ---- output ----------------------------------------------------------------------------------------

def emit(row: dict) -> dict:
    print(json.dumps(row), flush=True)
    return row


def markdown(rows: list[dict]) -> str:
    """One table per kind of row."""
    kinds = {
        "suspects": [r for r in rows if r["part"] == "suspects" and not r.get("accuracy_run")],
        "test accuracy after review": [r for r in rows if r.get("accuracy_run")],
        "uncertainty vs random": [r for r in rows if r["part"] == "uncertainty" and r.get("summary")],
        "uncertainty, every run": [r for r in rows if r["part"] == "uncertainty" and not r.get("summary")],
    }
    out = []
    for title, part in kinds.items():
        if not part:
            continue
        columns = [c for c in dict.fromkeys(k for r in part for k in r) if c not in ("part", "accuracy_run", "summary")]
        out += [f"### {title}", "", "| " + " | ".join(columns) + " |", "|" + " --- |" * len(columns)]
        out += ["| " + " | ".join(str(r.get(c, "")) for c in columns) + " |" for r in part] + [""]
    return "\n".join(out)


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(prog="python benchmarks/label_quality.py", description=__doc__.splitlines()[0])
    parser.add_argument("--part", choices=["suspects", "uncertainty"], required=True,
                        help="suspects: planted flips found (A); uncertainty: a review budget spent (B)")
    parser.add_argument("--sets", nargs="+", choices=["digits", "lookalikes"], default=None,
                        help="default: both for suspects, digits for uncertainty")
    parser.add_argument("--folds", type=int, default=5, help="labels.folds: models of the out-of-fold probabilities")
    parser.add_argument("--strategies", nargs="+", choices=["full", "linear_probe", "gradual"],
                        default=["full", "linear_probe"], help="labels.strategy of the fold models")
    parser.add_argument("--epochs", type=int, nargs="+", default=[2, 4], help="epochs of each fold model")
    parser.add_argument("--flips", type=float, default=None, help="share of flipped labels (default 0.05 digits, 0.08 lookalikes)")
    parser.add_argument("--train-seeds", type=int, nargs="+", default=[42], help="train.seed of the accuracy runs")
    parser.add_argument("--train-epochs", type=int, default=None, help="train.epochs (default: params.yaml)")
    parser.add_argument("--skip-accuracy", action="store_true", help="part A without the train runs")
    parser.add_argument("--sizes", type=int, nargs="+", default=[3000], help="look-alike set sizes (images)")
    parser.add_argument("--faintest", type=float, default=0.3, help="look-alikes: weakest detail strength (0-1)")
    parser.add_argument("--labelled", type=float, default=0.15, help="uncertainty: labelled share of the images")
    parser.add_argument("--budgets", type=int, nargs="+", default=[50, 100, 200],
                        help="uncertainty: images given their true labels (N)")
    parser.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2], help="random selections")
    parser.add_argument("--seed", type=int, default=0, help="data, split and flips")
    parser.add_argument("--quick", action="store_true", help="a smoke test: small sets, short runs")
    parser.add_argument("--markdown", type=Path, default=None, help="also write the tables here")
    args = parser.parse_args(argv)
    args.sets = args.sets or (["digits", "lookalikes"] if args.part == "suspects" else ["digits"])
    if args.quick:
        args.sizes, args.folds, args.epochs, args.strategies = [600], 3, [1], args.strategies[:1]
        args.train_epochs, args.budgets, args.seeds, args.train_seeds = 1, [50], args.seeds[:2], args.train_seeds[:1]

    rows = []
    part = suspects_part if args.part == "suspects" else uncertainty_part
    with tempfile.TemporaryDirectory() as scratch:
        for name in args.sets:
            for images in args.sizes if name == "lookalikes" else [None]:
                workdir = Path(scratch) / f"{name}{images or ''}"
                rows += part(name, workdir, argparse.Namespace(**{**vars(args), "images": images}))
    if args.markdown:
        args.markdown.write_text(markdown(rows))


if __name__ == "__main__":
    main()
