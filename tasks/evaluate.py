"""Evaluate stage: where the trained bundle succeeds and fails on the held-out test split.

Probabilities are the bundle's own: its test-time augmentation, then its temperature (fitted on
the validation split by the train stage), exactly as the gate and the service compute them.

Writes under reports/evaluate/
    metrics.json          accuracy, balanced accuracy, macro/weighted F1, top-k, log loss, ECE with and
                          without the temperature, per-class and per-slice figures (dvc metrics)
    predictions.csv       per image: label, prediction, confidence, image properties (dvc plots: confusion)
    per_class.csv         precision, recall, F1, support per class (dvc plots: bars)
    reliability.csv       confidence vs accuracy per bin (dvc plots: calibration curve)
    slices.csv            accuracy per brightness and size bucket
    confusion_matrix.png  counts and row-normalized;  reliability.png  before and after calibration
    worst_mistakes.png    the most confident wrong predictions
    report.html           all of the above on one self-contained page (tasks/evaluation/report.py)

and runtime/: the runtime that will serve the model (PyTorch, ONNX Runtime fp32 or int8), chosen by
evaluate.runtime from each one's test accuracy and speed, measured here (tasks/evaluation/runtimes.py),
with its ONNX file; runtime/runtime.json has every runtime's figures, which the report shows.
"""
from __future__ import annotations

import json
import tempfile
from pathlib import Path

import numpy as np
import pandas as pd

from tasks.common.cli import run_stage
from tasks.common.config import Params
from tasks.common.paths import (
    CURVES_PNG,
    EVALUATE_DIR,
    METRICS_JSON,
    MODEL_DIR,
    PREDICTIONS_CSV,
    REPORT_HTML,
    RUNTIME_DIR,
)
from tasks.data.images import open_rgb
from tasks.data.splits import class_indices, read_split
from tasks.evaluation.calibration import reliability, softmax
from tasks.evaluation.metrics import classification_metrics, slice_metrics
from tasks.evaluation.plots import plot_confusion, plot_reliability, plot_worst_mistakes
from tasks.evaluation.predict import predict_files
from tasks.evaluation.report import write_report
from tasks.evaluation.runtimes import choose, measure_runtimes, write_runtime
from tasks.model.bundle import load_bundle
from tasks.model.device import pick_device

PARAMS = ["evaluate", "inference.device"]

PER_CLASS_CSV = EVALUATE_DIR / "per_class.csv"
RELIABILITY_CSV = EVALUATE_DIR / "reliability.csv"
SLICES_CSV = EVALUATE_DIR / "slices.csv"
CONFUSION_PNG = EVALUATE_DIR / "confusion_matrix.png"
RELIABILITY_PNG = EVALUATE_DIR / "reliability.png"
MISTAKES_PNG = EVALUATE_DIR / "worst_mistakes.png"
SLICE_PROPERTIES = {"brightness": "", "short_side": "px"}  # property -> unit in the bucket names


def run(params: Params, workdir: Path = Path(".")) -> dict:
    cfg = params.evaluate
    bundle = load_bundle(workdir / MODEL_DIR, device=pick_device(params.inference.device, setting="inference.device"))
    test = read_split(workdir, "test")
    files = [workdir / f for f in test["file"]]
    targets = class_indices(test, bundle.labels, "test")

    logits, without_tta, properties = predict_files(bundle, files, cfg.batch_size, without_tta=bundle.tta != "none")
    probs, plain = softmax(logits, bundle.temperature), softmax(logits)
    metrics = classification_metrics(targets, probs, bundle.labels, cfg.top_k, cfg.calibration_bins)
    uncalibrated = classification_metrics(targets, plain, bundle.labels, cfg.top_k, cfg.calibration_bins)
    metrics.update({"ece_uncalibrated": uncalibrated["ece"], "log_loss_uncalibrated": uncalibrated["log_loss"],
                    "temperature": bundle.temperature})
    if without_tta is not None:  # what the test-time augmentation buys
        metrics["accuracy_without_tta"] = round(float((without_tta.argmax(1) == targets).mean()), 4)
    runtime = serving_runtime(params, workdir, bundle, files, targets, probs)

    predicted = probs.argmax(1)
    predictions = pd.DataFrame({
        "file": test["file"], "label": test["label"], "prediction": [bundle.labels[i] for i in predicted],
        "confidence": probs.max(1).round(4),
        "true_class_probability": probs[np.arange(len(targets)), targets].round(4),
        "correct": predicted == targets, **{k: properties[k] for k in SLICE_PROPERTIES},
    })
    slices = slice_metrics(predictions, SLICE_PROPERTIES, cfg.slice_buckets)
    metrics["slices"] = {prop: {row.bucket: row.accuracy for row in part.itertuples()}
                         for prop, part in slices.groupby("property", sort=False)}

    out = workdir / EVALUATE_DIR
    out.mkdir(parents=True, exist_ok=True)
    (workdir / METRICS_JSON).write_text(json.dumps(metrics, indent=2))
    predictions.to_csv(workdir / PREDICTIONS_CSV, index=False)
    per_class = pd.DataFrame([{"class": label, **values} for label, values in metrics["per_class"].items()])
    per_class.to_csv(workdir / PER_CLASS_CSV, index=False)
    calibrated = reliability(probs, targets, cfg.calibration_bins)
    calibrated.to_csv(workdir / RELIABILITY_CSV, index=False)
    slices.to_csv(workdir / SLICES_CSV, index=False)

    plot_confusion(targets, predicted, bundle.labels, workdir / CONFUSION_PNG)
    plot_reliability({
        f"uncalibrated (ECE {metrics['ece_uncalibrated']:.3f})": reliability(plain, targets, cfg.calibration_bins),
        f"temperature {bundle.temperature:.2f} (ECE {metrics['ece']:.3f})": calibrated,
    }, workdir / RELIABILITY_PNG)
    mistakes = predictions[~predictions["correct"]].sort_values("confidence", ascending=False)
    worst = mistakes.head(cfg.worst_mistakes)
    plot_worst_mistakes([open_rgb(workdir / f) for f in worst["file"]],
                        [f"true {r.label}, predicted {r.prediction}\n"
                         f"confidence {r.confidence:.2f}, p(true) {r.true_class_probability:.2f}"
                         for r in worst.itertuples()],
                        len(mistakes), len(predictions), workdir / MISTAKES_PNG)
    write_report(workdir / REPORT_HTML, bundle, metrics, per_class, slices, runtime, figures={
        "Confusion matrix": workdir / CONFUSION_PNG, "Calibration": workdir / RELIABILITY_PNG,
        "Worst mistakes": workdir / MISTAKES_PNG, "Training curves": workdir / CURVES_PNG,
    })
    return {k: metrics[k] for k in ("accuracy", "macro_f1", "ece", "ece_uncalibrated", "test_images")} | {
        "runtime": f"{runtime['runtime']} ({runtime['reason']})", "report": str(REPORT_HTML)}


def serving_runtime(params: Params, workdir: Path, bundle, files: list[Path], targets: np.ndarray,
                    probs: np.ndarray) -> dict:
    """Export, score and time each serving runtime; runtime/ gets the one evaluate.runtime picks."""
    train_files = [workdir / f for f in read_split(workdir, "train")["file"]]
    with tempfile.TemporaryDirectory(prefix="runtimes-") as scratch:
        figures, made = measure_runtimes(bundle, files, targets, probs, train_files, params.evaluate.batch_size,
                                         params.evaluate.calibration_bins, Path(scratch), params.evaluate.runtime)
        chosen, reason = choose(figures, params.evaluate.runtime, params.evaluate.max_accuracy_drop)
        return write_runtime(workdir / RUNTIME_DIR, chosen, reason, params.evaluate.runtime,
                             params.evaluate.max_accuracy_drop, figures, made)


if __name__ == "__main__":
    run_stage("evaluate", run)
