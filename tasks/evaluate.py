"""Evaluate stage: how well the trained bundle classifies the held-out test split.

Writes
    reports/evaluate/metrics.json        accuracy, macro F1, per-class precision/recall/F1 (dvc metrics)
    reports/evaluate/confusion_matrix.png
    reports/evaluate/predictions.csv     file, label, prediction, confidence (dvc plots: confusion)
"""
from __future__ import annotations

import json
from pathlib import Path

import matplotlib

matplotlib.use("Agg")  # files only, no display
import matplotlib.pyplot as plt
import numpy as np
import pandas as pd
from sklearn.metrics import accuracy_score, classification_report, confusion_matrix, f1_score

from tasks.bundle import Bundle, load_bundle
from tasks.cli import run_stage
from tasks.config import Params
from tasks.images import open_rgb
from tasks.train import MODEL_DIR, pick_device, read_split

REPORT_DIR = Path("reports/evaluate")
METRICS_JSON = REPORT_DIR / "metrics.json"
CONFUSION_PNG = REPORT_DIR / "confusion_matrix.png"
PREDICTIONS_CSV = REPORT_DIR / "predictions.csv"


def predict_files(bundle: Bundle, files: list[Path], batch_size: int) -> np.ndarray:
    """Class probabilities (N, C) for image files, in batches."""
    parts = []
    for start in range(0, len(files), batch_size):
        images = [open_rgb(f) for f in files[start:start + batch_size]]
        parts.append(bundle.predict_proba(bundle.preprocess(images)))
    return np.concatenate(parts)


def compute_metrics(y_true: list[str], y_pred: list[str], labels: list[str]) -> dict:
    report = classification_report(y_true, y_pred, labels=labels, output_dict=True, zero_division=0)
    return {
        "accuracy": round(float(accuracy_score(y_true, y_pred)), 4),
        "macro_f1": round(float(f1_score(y_true, y_pred, labels=labels, average="macro", zero_division=0)), 4),
        "test_images": len(y_true),
        "per_class": {
            label: {
                "precision": round(report[label]["precision"], 4),
                "recall": round(report[label]["recall"], 4),
                "f1": round(report[label]["f1-score"], 4),
                "support": int(report[label]["support"]),
            }
            for label in labels
        },
    }


def plot_confusion(y_true: list[str], y_pred: list[str], labels: list[str], out: Path) -> None:
    counts = confusion_matrix(y_true, y_pred, labels=labels)
    size = max(4.0, 0.6 * len(labels) + 2)
    fig, ax = plt.subplots(figsize=(size, size * 0.85))
    im = ax.imshow(counts, cmap="Blues")
    ax.set_xticks(range(len(labels)), labels, rotation=45, ha="right")
    ax.set_yticks(range(len(labels)), labels)
    ax.set_xlabel("predicted")
    ax.set_ylabel("true")
    ax.set_title(f"Confusion matrix, test split (accuracy {accuracy_score(y_true, y_pred):.3f})")
    for (i, j), n in np.ndenumerate(counts):
        if n:
            ax.text(j, i, str(n), ha="center", va="center", color="white" if n > counts.max() / 2 else "black")
    fig.colorbar(im, ax=ax, fraction=0.046)
    fig.tight_layout()
    fig.savefig(out, dpi=120)
    plt.close(fig)


def run(params: Params, workdir: Path = Path(".")) -> dict:
    bundle = load_bundle(workdir / MODEL_DIR, device=pick_device(params.train.device))
    test = read_split(workdir, "test")
    probs = predict_files(bundle, [workdir / f for f in test["file"]], params.evaluate.batch_size)
    y_true = test["label"].tolist()
    y_pred = [bundle.labels[i] for i in probs.argmax(1)]
    metrics = compute_metrics(y_true, y_pred, bundle.labels)

    (workdir / REPORT_DIR).mkdir(parents=True, exist_ok=True)
    (workdir / METRICS_JSON).write_text(json.dumps(metrics, indent=2))
    plot_confusion(y_true, y_pred, bundle.labels, workdir / CONFUSION_PNG)
    pd.DataFrame({
        "file": test["file"], "label": y_true, "prediction": y_pred, "confidence": probs.max(1).round(4),
    }).to_csv(workdir / PREDICTIONS_CSV, index=False)
    return {"accuracy": metrics["accuracy"], "macro_f1": metrics["macro_f1"], "test_images": len(y_true)}


if __name__ == "__main__":
    run_stage("evaluate", run)
