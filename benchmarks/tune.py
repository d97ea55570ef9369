"""The recipe search (tasks/tune.py) against params.yaml's recipe, and median against Hyperband pruning.

For each set and each pruner, in a fresh scratch project:
    search      tasks.tune.run with params.yaml's tune section (only tune.pruner, and --trials /
                --minutes if given, changed), timed: trials complete / pruned / failed, the epochs
                all trials trained (each trial runs at most train.epochs; a pruned one fewer), the
                best trial's validation metric against trial 0's (params.yaml's recipe, scored the same way)
    retrain     the train stage (tasks/train.py) on params.yaml's recipe and on the best trial's
                recipe (tasks.tuning.space.recipe), each scored by the evaluate stage on the TEST
                split, which the search never reads: validation accuracy (after the stage's BatchNorm
                refresh), test accuracy, wall time of train + evaluate
Sets:
    digits       scikit-learn's 1,797 digit scans as the sample stage writes them, split 70/15/15
                 by the split stage's own stratified split (params.yaml split.*); the default data
    digits-hard  the same scans, split per class into --hard-train / --hard-val images and the rest
                 for test, each image drawn once at 32 px: rotated by up to ±--rotation degrees,
                 shifted, with lowered contrast on a grey background and Gaussian noise (seeded)

    python benchmarks/tune.py [--sets digits digits-hard] [--pruners median hyperband]
        [--trials 12] [--minutes 15] [--seed 0] [--workdir DIR] [--markdown out.md]

Prints one JSON line per row and then a markdown table; training logs go to stderr. The figures
depend on the CPU (2 cores when measured) and on whatever else runs on it.
"""
from __future__ import annotations

import argparse
import contextlib
import json
import os
import shutil
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import optuna
import pandas as pd
from PIL import Image
from sklearn.datasets import load_digits

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
from tasks import evaluate, train, tune  # noqa: E402
from tasks.common.config import load_params  # noqa: E402
from tasks.common.paths import MODEL_DIR, split_csv  # noqa: E402
from tasks.sample import write_digits  # noqa: E402
from tasks.split import random_splits  # noqa: E402
from tasks.training.checkpoint import CHECKPOINT_DIR  # noqa: E402
from tasks.tuning import study as studies  # noqa: E402
from tasks.tuning.settings import TuningParams  # noqa: E402
from tasks.tuning.space import recipe  # noqa: E402

PARAMS_YAML = Path(__file__).resolve().parents[1] / "params.yaml"
SIDE = 32  # digits-hard images are drawn at the train stage's default resolution


# ---- data sets -------------------------------------------------------------------------------------

def digits(workdir: Path, params, args) -> None:
    """The sample stage's PNGs, split by the split stage's own stratified split (no duplicates to keep together)."""
    write_digits(workdir / "images")
    kept = pd.DataFrame({"path": sorted(str(p.relative_to(workdir / "images")) for p in (workdir / "images").rglob("*.png"))})
    kept["label"], kept["file"] = kept["path"].str.split("/").str[0], "images/" + kept["path"]
    kept["duplicate_group"] = np.arange(len(kept))
    write_splits(workdir, kept, random_splits(kept, params.split))


def harden(scan: np.ndarray, rng: np.random.Generator, args) -> Image.Image:
    """One 8x8 scan (0-16 ink) as a hard 32 px picture: rotated, shifted, faint, noisy."""
    img = Image.fromarray(np.uint8(scan * 255 / 16)).resize((SIDE, SIDE), Image.BICUBIC)
    shift = rng.uniform(-args.shift, args.shift, 2) * SIDE
    img = img.rotate(rng.uniform(-args.rotation, args.rotation), Image.BILINEAR, translate=tuple(shift), fillcolor=0)
    ink = np.asarray(img, np.float32) / 255
    background, contrast = rng.uniform(0.15, 0.55), rng.uniform(*args.contrast)
    pixels = background + contrast * ink + rng.normal(0, args.noise, ink.shape)
    return Image.fromarray(np.uint8(np.clip(pixels, 0, 1) * 255), "L")


def digits_hard(workdir: Path, params, args) -> None:
    """Per class: --hard-train training and --hard-val validation scans, the rest for test; every scan drawn once."""
    data, rng, rows = load_digits(), np.random.default_rng(args.seed), []
    for label in range(10):
        order = rng.permutation(np.flatnonzero(data.target == label))
        for k, index in enumerate(order):
            name = "train" if k < args.hard_train else "val" if k < args.hard_train + args.hard_val else "test"
            path = f"{label}/hard_{index:04d}.png"
            (workdir / "images" / str(label)).mkdir(parents=True, exist_ok=True)
            harden(data.images[index], rng, args).save(workdir / "images" / path)
            rows.append({"path": path, "label": str(label), "file": f"images/{path}", "split": name})
    kept = pd.DataFrame(rows)
    write_splits(workdir, kept.drop(columns="split"), kept["split"])


def write_splits(workdir: Path, kept: pd.DataFrame, splits: pd.Series) -> None:
    """data/split/<name>.csv (path, label, file, ...) as the split stage writes them."""
    (workdir / "data/split").mkdir(parents=True, exist_ok=True)
    for name in ("train", "val", "test"):
        kept[splits == name].to_csv(workdir / split_csv(name), index=False)


SETS = {"digits": digits, "digits-hard": digits_hard}


# ---- the project's stages --------------------------------------------------------------------------

def quietly(fn, *args):
    """Call fn with its progress lines on stderr, so that stdout holds the figures alone."""
    with contextlib.redirect_stdout(sys.stderr):
        return fn(*args)


def search(params, workdir: Path) -> tuple[dict, float, list[optuna.trial.FrozenTrial]]:
    """tasks.tune.run, timed; its summary and the study's trials (read back from its journal)."""
    start = time.perf_counter()
    summary = quietly(tune.run, params, workdir)
    seconds = time.perf_counter() - start
    storage, _, _ = studies.open_storage(workdir, params)
    return summary, seconds, optuna.load_study(study_name=summary["study"], storage=storage).trials


def retrain(params, train_cfg, workdir: Path) -> dict:
    """The train stage from the ImageNet weights on one recipe, then the evaluate stage on test."""
    for path in (CHECKPOINT_DIR, MODEL_DIR):
        shutil.rmtree(workdir / path, ignore_errors=True)
    params = params.model_copy(update={"train": train_cfg})
    start = time.perf_counter()
    fitted = quietly(train.run, params, workdir)
    metrics = quietly(evaluate.run, params, workdir)
    return {"val": fitted["val_acc"], "test": metrics["accuracy"], "seconds": round(time.perf_counter() - start, 1)}


def measure(name: str, pruner: str, workdir: Path, args) -> dict:
    base = load_params(PARAMS_YAML, TuningParams)
    tuned = {"pruner": pruner, "trials": args.trials or base.tune.trials,
             "minutes": base.tune.minutes if args.minutes is None else args.minutes}
    params = base.model_copy(update={"tune": base.tune.model_copy(update=tuned)})
    SETS[name](workdir, params, args)
    counts = {n: len(pd.read_csv(workdir / split_csv(n))) for n in ("train", "val", "test")}

    summary, seconds, trials = search(params, workdir)
    best, written = summary["best"], summary["params_yaml_recipe"]
    baseline = retrain(params, params.train, workdir)
    same = best is None or best["recipe"] == "params.yaml"  # the written recipe won: nothing else to train
    found = baseline if same else retrain(params, recipe(params.train, best["params"]), workdir)
    state = summary["trials"]
    pruned_at = sorted(t.last_step for t in trials if t.state == optuna.trial.TrialState.PRUNED)
    return {
        "set": name, "pruner": pruner, "images": "/".join(str(counts[n]) for n in counts),
        "trials": f"{state['complete']}/{state['pruned']}/{state['fail']}",
        "pruned_at_epoch": ",".join(map(str, pruned_at)) or "-",
        "epochs_trained": f"{sum(len(t.intermediate_values) for t in trials)}/{len(trials) * params.train.epochs}",
        "search_s": round(seconds),
        "search_val_best": f"#{best['number']} {best['value']:.4f}" if best else "-",
        "search_val_params_yaml": f"#{written['number']} {written['value']:.4f}" if written else "-",
        "best_recipe": short(best["params"]) if best else "-",
        "val_baseline_vs_best": f"{baseline['val']:.4f} / {found['val']:.4f}",
        "test_baseline_vs_best": f"{baseline['test']:.4f} / {found['test']:.4f}",
        "retrain_s": f"{baseline['seconds']:.0f} / {found['seconds']:.0f}" + (" (same recipe)" if same else ""),
    }


def short(values: dict) -> str:
    return " ".join(f"{k.removeprefix('train.')}={v:.3g}" if isinstance(v, float) else f"{k.removeprefix('train.')}={v}"
                    for k, v in values.items())


# ---- output ----------------------------------------------------------------------------------------

HEADERS = {"set": "set", "pruner": "pruner", "images": "train/val/test images",
           "trials": "trials complete/pruned/failed", "pruned_at_epoch": "pruned at epoch",
           "epochs_trained": "epochs trained / without pruning", "search_s": "search (s)",
           "search_val_best": "search: best trial, val", "search_val_params_yaml": "search: params.yaml trial, val",
           "best_recipe": "best recipe", "val_baseline_vs_best": "retrain val acc: params.yaml / best",
           "test_baseline_vs_best": "retrain TEST acc: params.yaml / best",
           "retrain_s": "retrain + evaluate (s): params.yaml / best"}


def markdown(rows: list[dict]) -> str:
    lines = ["| " + " | ".join(HEADERS.values()) + " |", "|" + " --- |" * len(HEADERS)]
    return "\n".join(lines + ["| " + " | ".join(str(r[k]) for k in HEADERS) + " |" for r in rows]) + "\n"


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(prog="python benchmarks/tune.py", description=__doc__.splitlines()[0])
    parser.add_argument("--sets", nargs="+", choices=list(SETS), default=list(SETS),
                        help="digits: the sample stage's scans; digits-hard: fewer, harder training images")
    parser.add_argument("--pruners", nargs="+", choices=["median", "hyperband"], default=["median", "hyperband"],
                        help="tune.pruner of each search")
    parser.add_argument("--trials", type=int, default=None, help="tune.trials (default: params.yaml)")
    parser.add_argument("--minutes", type=float, default=None, help="tune.minutes (default: params.yaml)")
    parser.add_argument("--hard-train", type=int, default=30, help="digits-hard: training images per class")
    parser.add_argument("--hard-val", type=int, default=30, help="digits-hard: validation images per class")
    parser.add_argument("--rotation", type=float, default=30, help="digits-hard: ± degrees")
    parser.add_argument("--shift", type=float, default=0.1, help="digits-hard: ± share of the side")
    parser.add_argument("--contrast", type=float, nargs=2, default=[0.3, 0.6], help="digits-hard: ink contrast range")
    parser.add_argument("--noise", type=float, default=0.05, help="digits-hard: Gaussian noise sigma (0-1 scale)")
    parser.add_argument("--seed", type=int, default=0, help="digits-hard: the split and the drawing")
    parser.add_argument("--workdir", type=Path, default=None, help="keep the scratch projects here (default: a temp dir)")
    parser.add_argument("--markdown", type=Path, default=None, help="also write the table here")
    args = parser.parse_args(argv)
    os.environ.pop(studies.STORAGE_ENV, None)  # each study in its own scratch project's journal

    rows = []
    with tempfile.TemporaryDirectory() as scratch:
        root = args.workdir or Path(scratch)
        for name in args.sets:
            for pruner in args.pruners:
                workdir = root / f"{name}-{pruner}"
                shutil.rmtree(workdir, ignore_errors=True)
                workdir.mkdir(parents=True)
                rows.append(measure(name, pruner, workdir, args))
                print(json.dumps(rows[-1]), flush=True)
    print(markdown(rows))
    if args.markdown:
        args.markdown.write_text(markdown(rows))


if __name__ == "__main__":
    main()
