"""Gate stage: may the newly trained model (challenger) replace the production model (champion)?

Both are scored on the same current test split. McNemar's exact test looks only at the images on
which they disagree: b = the champion is right and the challenger wrong, c = the reverse. Under
"equally good" each disagreement is a fair coin, so the two-sided p-value is a binomial tail of
min(b, c) out of b + c. The challenger passes when

    there is no champion yet, or
    it is not significantly worse (not: b > c with p < gate.alpha), and
    its accuracy beats the champion's by at least gate.margin.

The champion is the model named in deploy/production.json (tasks/model/registry.py), loaded from the
BentoML model store and run with its own preprocessing, calibration and test-time augmentation.
The challenger's predictions are those of the evaluate stage, in PyTorch; the decision also names
the runtime each model is served with (runtime/runtime.json, and the champion's in the store) and its
test accuracy there. Writes reports/gate/decision.json; `python -m tasks.production promote` acts on it.
"""
from __future__ import annotations

import json
import sys
from pathlib import Path

import bentoml
import numpy as np
import pandas as pd
from scipy.stats import binomtest

from tasks.common.cli import run_stage
from tasks.common.config import Params, UserError
from tasks.common.files import sha256
from tasks.common.paths import (
    DECISION_JSON,
    MANIFEST_CSV,
    MODEL_DIR,
    POINTER,
    PREDICTIONS_CSV,
    RUNTIME_DIR,
    STORE_ARCHIVES,
    split_csv,
)
from tasks.data.manifest import read_manifest
from tasks.data.splits import read_split
from tasks.evaluation.predict import predict_files
from tasks.labels.log import TRAFFIC_KINDS, review_log
from tasks.model.bundle import WEIGHTS_FILE, load_bundle
from tasks.model.device import pick_device
from tasks.model.registry import check_in_store, model_metadata, read_pointer
from tasks.model.served import RUNTIME_JSON, read_runtime
from tasks.model.trained_on import current_training_images, training_images

PARAMS = ["gate", "inference.device", "evaluate.batch_size", "data.root", "labels.review_dir"]


def mcnemar_exact(b: int, c: int) -> float:
    """Two-sided exact McNemar p-value for b and c one-sided disagreements (1.0 when there are none)."""
    return 1.0 if b + c == 0 else float(binomtest(min(b, c), b + c, 0.5).pvalue)


def decide(challenger_correct: np.ndarray, champion_correct: np.ndarray | None, margin: float, alpha: float) -> dict:
    """The gate's verdict from per-image correctness (bool arrays over the same test images)."""
    n = len(challenger_correct)
    decision = {"passed": True, "verdict": "promote", "reasons": [], "test_images": n,
                "challenger_accuracy": round(float(challenger_correct.mean()), 4), "champion_accuracy": None,
                "improvement": None, "champion_only_right": None, "challenger_only_right": None,
                "p_value": None, "margin": margin, "alpha": alpha}
    if champion_correct is None:
        decision["reasons"] = ["there is no production model yet: the first model passes"]
        return decision
    b = int((champion_correct & ~challenger_correct).sum())
    c = int((challenger_correct & ~champion_correct).sum())
    p = mcnemar_exact(b, c)
    gain = (c - b) / n
    decision.update({"champion_accuracy": round(float(champion_correct.mean()), 4), "improvement": round(gain, 4),
                     "champion_only_right": b, "challenger_only_right": c, "p_value": round(p, 6)})
    tally = f"(they disagree on {b + c} of {n} images: champion right on {b}, challenger right on {c})"
    worse = b > c and p < alpha
    if worse:
        decision["reasons"].append(f"the challenger is significantly worse: McNemar p = {p:.4g} < {alpha} {tally}")
    if c - b < margin * n - 1e-9:  # counts, not rounded accuracies
        decision["reasons"].append(f"accuracy gain {gain:+.4f} is below the margin {margin}"
                                   + ("" if worse else f" {tally}; McNemar p = {p:.3g}"))
    if decision["reasons"]:
        decision.update(passed=False, verdict="refuse")
    else:
        significance = "significant" if p < alpha else "not significant, but not worse"
        decision["reasons"] = [f"accuracy gain {gain:+.4f} meets the margin {margin}; McNemar p = {p:.3g} "
                               f"({significance} at {alpha}) {tally}"]
    return decision


def run(params: Params, workdir: Path = Path(".")) -> dict:
    test = read_split(workdir, "test")
    challenger = pd.read_csv(workdir / PREDICTIONS_CSV, dtype={"label": str, "prediction": str},
                             keep_default_na=False) if (workdir / PREDICTIONS_CSV).is_file() else None
    if challenger is None or challenger["file"].tolist() != test["file"].tolist():
        raise UserError(f"{PREDICTIONS_CSV} does not match the test split; run dvc repro evaluate first")
    challenger_sha = sha256(workdir / MODEL_DIR / WEIGHTS_FILE)
    champion = read_pointer(workdir / POINTER)["current"]
    challenger_correct = (challenger["prediction"] == challenger["label"]).to_numpy()
    margin, alpha = params.gate.margin, params.gate.alpha
    fitted = {"challenger": current_training_images(workdir)}
    if champion is not None and champion["weights_sha256"] != challenger_sha:
        check_in_store(champion["model"], archives=workdir / STORE_ARCHIVES)  # from deploy/store when not here
        stored = bentoml.models.get(champion["model"])
        fitted["champion"], source = training_images(
            Path(stored.path), (model_metadata(champion["model"]) or {}).get("lineage"), workdir)
        if fitted["champion"] is None:
            print(f"gate: {champion['model']} is graded on every test image, which may favour it: {source}",
                  file=sys.stderr)
    fair, left_out = fair_test_images(test, read_manifest_groups(workdir), fitted)
    sources = image_sources(test, workdir, params)
    if champion is None:
        decision = decide(challenger_correct[fair], None, margin, alpha)
    elif champion["weights_sha256"] == challenger_sha:
        decision = decide(challenger_correct[fair], None, margin, alpha)
        decision.update(passed=False, verdict="already in production", improvement=0.0,
                        champion_accuracy=decision["challenger_accuracy"],
                        reasons=[f"the challenger is the production model {champion['model']} (same weights)"])
    else:
        champion_correct = score_champion(stored, test[fair], params, workdir)
        decision = decide(challenger_correct[fair], champion_correct, margin, alpha)
        decision["slices"] = slice_accuracy(sources[fair], challenger_correct[fair], champion_correct)
        if fair.sum() < params.gate.min_test_images:
            decision.update(passed=False, verdict="refuse", reasons=[
                f"only {fair.sum()} test images are ones neither model trained or validated on ({left_out['why']}); "
                f"deciding needs gate.min_test_images = {params.gate.min_test_images}: add images to data.root "
                "(their test share grows the test split) or lower gate.min_test_images"])
        decision["champion_training_images"] = source
    decision.setdefault("slices", slice_accuracy(sources[fair], challenger_correct[fair], None))
    decision["left_out"] = left_out
    if not (workdir / RUNTIME_DIR / RUNTIME_JSON).is_file():
        raise UserError(f"{RUNTIME_DIR / RUNTIME_JSON} not found; run dvc repro evaluate first")
    chosen = read_runtime(workdir / RUNTIME_DIR)
    decision["challenger"] = {"weights_sha256": challenger_sha, "runtime": {
        "name": chosen["runtime"], "accuracy": chosen["figures"][chosen["runtime"]]["accuracy"],
        "reason": chosen["reason"]}}
    decision["champion"] = None if champion is None else {
        "model": champion["model"], "weights_sha256": champion["weights_sha256"],
        "runtime": champion_runtime(champion["model"])}
    (workdir / DECISION_JSON).parent.mkdir(parents=True, exist_ok=True)
    (workdir / DECISION_JSON).write_text(json.dumps(decision, indent=2))
    return {"verdict": decision["verdict"], "reasons": decision["reasons"], "left_out": left_out["images"]}


def read_manifest_groups(workdir: Path) -> pd.Series:
    """Every duplicate group's content hashes (quarantined copies included), by group id."""
    if not (workdir / MANIFEST_CSV).is_file():
        raise UserError(f"{MANIFEST_CSV} not found; run dvc repro validate first")
    manifest = read_manifest(workdir / MANIFEST_CSV)
    grouped = manifest[manifest["duplicate_group"] >= 0]
    return grouped.groupby("duplicate_group")["sha256"].agg(frozenset)


def fair_test_images(test: pd.DataFrame, groups: pd.Series, fitted: dict[str, dict | None]) -> tuple[np.ndarray, dict]:
    """Which test images no model in `fitted` trained or validated on, an image or any copy of it (its
    duplicate group); and how many were left out for which reason (each counted once, first reason first)."""
    if "sha256" not in test or "duplicate_group" not in test:
        raise UserError(f"{split_csv('test')} has no sha256 or duplicate_group column; run dvc repro split")
    copies = [groups.get(int(group), frozenset()) | {sha} for sha, group in zip(test["sha256"], test["duplicate_group"])]
    fair = np.ones(len(test), bool)
    counts = {}
    for model, splits in fitted.items():
        for name, hashes in (splits or {}).items():
            hashes = set(hashes)
            seen = np.array([not hashes.isdisjoint(c) for c in copies], bool) & fair
            counts[f"{model} {'trained' if name == 'train' else 'validated'} on"] = int(seen.sum())
            fair &= ~seen
    unknown = [model for model, splits in fitted.items() if splits is None]
    why = ", ".join(f"{n} the {reason}" for reason, n in counts.items() if n) or "none left out"
    if unknown:
        why += f"; the {unknown[0]}'s training images are unknown, so none were left out for it"
    return fair, {"images": int((~fair).sum()), **counts, "why": why}


def image_sources(test: pd.DataFrame, workdir: Path, params: Params) -> np.ndarray:
    """Each test image's source: "reviewed traffic" when a review added it from the service's traffic
    (labels.review_dir's log), else "original data"."""
    root = Path(params.data.root)
    added = review_log(workdir, params)
    added = added[added["kind"].isin(TRAFFIC_KINDS) & (added["action"] == "added")]
    from_traffic = {Path(file).relative_to(root).as_posix() for file in added["file"] if Path(file).is_relative_to(root)}
    return np.where(test["path"].isin(from_traffic), "reviewed traffic", "original data")


def slice_accuracy(sources: np.ndarray, challenger: np.ndarray, champion: np.ndarray | None) -> dict:
    """Images and both models' accuracy per source slice of the fair test images."""
    slices = {}
    for name in sorted(set(sources)):
        rows = sources == name
        slices[name] = {"images": int(rows.sum()), "challenger_accuracy": round(float(challenger[rows].mean()), 4),
                        "champion_accuracy": None if champion is None else round(float(champion[rows].mean()), 4)}
    return slices


def champion_runtime(tag: str) -> dict | None:
    """The runtime the production model is served with and its test accuracy there, as packaged; None
    for a model not in this store or packaged before runtimes were measured."""
    runtime = (model_metadata(tag) or {}).get("runtime")
    if not runtime:
        return None
    return {"name": runtime["name"], "accuracy": runtime["figures"]["accuracy"], "reason": runtime["reason"]}


def score_champion(model: bentoml.Model, test: pd.DataFrame, params: Params, workdir: Path = Path(".")) -> np.ndarray:
    """Per-image correctness of the production model (from the store) on these test images."""
    bundle = load_bundle(model.path, device=pick_device(params.inference.device, setting="inference.device"))
    logits, _, _ = predict_files(bundle, [workdir / f for f in test["file"]], params.evaluate.batch_size)
    predicted = np.array(bundle.labels)[logits.argmax(1)]  # a class the champion lacks is simply never right
    return predicted == test["label"].to_numpy()


if __name__ == "__main__":
    run_stage("gate", run)
