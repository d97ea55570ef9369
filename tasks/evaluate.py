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
    report.html           all of the above on one self-contained page (tasks/report.py)
"""
from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pandas as pd
from PIL import Image, ImageStat

from tasks.bundle import Bundle, load_bundle
from tasks.calibration import reliability, softmax
from tasks.cli import run_stage
from tasks.config import Params
from tasks.evaluation_plots import plot_confusion, plot_reliability, plot_worst_mistakes
from tasks.images import open_rgb
from tasks.metrics import classification_metrics, slice_metrics
from tasks.report import write_report
from tasks.train import CURVES_PNG, MODEL_DIR, class_indices, pick_device, read_split

REPORT_DIR = Path("reports/evaluate")
METRICS_JSON = REPORT_DIR / "metrics.json"
PREDICTIONS_CSV = REPORT_DIR / "predictions.csv"
PER_CLASS_CSV = REPORT_DIR / "per_class.csv"
RELIABILITY_CSV = REPORT_DIR / "reliability.csv"
SLICES_CSV = REPORT_DIR / "slices.csv"
CONFUSION_PNG = REPORT_DIR / "confusion_matrix.png"
RELIABILITY_PNG = REPORT_DIR / "reliability.png"
MISTAKES_PNG = REPORT_DIR / "worst_mistakes.png"
REPORT_HTML = REPORT_DIR / "report.html"
SLICE_PROPERTIES = {"brightness": "", "short_side": "px"}  # property -> unit in the bucket names


def predict_files(bundle: Bundle, files: list[Path], batch_size: int, without_tta: bool = False
                  ) -> tuple[np.ndarray, np.ndarray | None, pd.DataFrame]:
    """Uncalibrated logits (N, C) of image files, in batches; with `without_tta`, also the logits
    without the bundle's test-time augmentation (from the same decoded images); and each image's
    brightness and size."""
    logits, plain, properties = [], [], []
    for start in range(0, len(files), batch_size):
        images = [open_rgb(f) for f in files[start:start + batch_size]]
        batch = bundle.preprocess(images)
        logits.append(bundle.logits_and_features(batch)[0].numpy())
        if without_tta:
            plain.append(bundle.logits_and_features(batch, tta="none")[0].numpy())
        properties += [image_properties(img) for img in images]
    return np.concatenate(logits), np.concatenate(plain) if without_tta else None, pd.DataFrame(properties)


def image_properties(img: Image.Image) -> dict:
    """Mean luminance (0-255) and shorter side in pixels: the properties sliced on."""
    return {"brightness": round(ImageStat.Stat(img.convert("L")).mean[0], 1), "short_side": min(img.size)}


def run(params: Params, workdir: Path = Path(".")) -> dict:
    cfg = params.evaluate
    bundle = load_bundle(workdir / MODEL_DIR, device=pick_device(params.train.device))
    test = read_split(workdir, "test")
    files = [workdir / f for f in test["file"]]
    targets = class_indices(test, bundle.labels, "test").numpy()

    logits, without_tta, properties = predict_files(bundle, files, cfg.batch_size, without_tta=bundle.tta != "none")
    probs, plain = softmax(logits, bundle.temperature), softmax(logits)
    metrics = classification_metrics(targets, probs, bundle.labels, cfg.top_k, cfg.calibration_bins)
    uncalibrated = classification_metrics(targets, plain, bundle.labels, cfg.top_k, cfg.calibration_bins)
    metrics.update({"ece_uncalibrated": uncalibrated["ece"], "log_loss_uncalibrated": uncalibrated["log_loss"],
                    "temperature": bundle.temperature})
    if without_tta is not None:  # what the test-time augmentation buys
        metrics["accuracy_without_tta"] = round(float((without_tta.argmax(1) == targets).mean()), 4)

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

    out = workdir / REPORT_DIR
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
    write_report(workdir / REPORT_HTML, bundle, metrics, per_class, slices, figures={
        "Confusion matrix": workdir / CONFUSION_PNG, "Calibration": workdir / RELIABILITY_PNG,
        "Worst mistakes": workdir / MISTAKES_PNG, "Training curves": workdir / CURVES_PNG,
    })
    return {k: metrics[k] for k in ("accuracy", "macro_f1", "ece", "ece_uncalibrated", "test_images")} | {
        "report": str(REPORT_HTML)}


if __name__ == "__main__":
    run_stage("evaluate", run)
