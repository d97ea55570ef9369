"""Test-split metrics from class probabilities: the numbers a reviewer asks for, via scikit-learn."""
from __future__ import annotations

import numpy as np
import pandas as pd
from sklearn.metrics import (
    accuracy_score,
    balanced_accuracy_score,
    f1_score,
    log_loss,
    precision_recall_fscore_support,
    top_k_accuracy_score,
)

from tasks.evaluation.calibration import BINS, expected_calibration_error


def classification_metrics(targets: np.ndarray, probs: np.ndarray, labels: list[str], top_k: int,
                           bins: int = BINS) -> dict:
    """Headline metrics and per-class precision/recall/F1/support.

    targets: (N,) class indices into `labels`; probs: (N, C) probabilities, rows summing to 1.
    """
    classes = np.arange(len(labels))
    predicted = probs.argmax(1)
    k = min(top_k, len(labels))
    precision, recall, f1, support = precision_recall_fscore_support(
        targets, predicted, labels=classes, zero_division=0)
    return {
        "accuracy": _round(accuracy_score(targets, predicted)),
        "balanced_accuracy": _round(balanced_accuracy_score(targets, predicted)),
        "macro_f1": _round(f1_score(targets, predicted, labels=classes, average="macro", zero_division=0)),
        "weighted_f1": _round(f1_score(targets, predicted, labels=classes, average="weighted", zero_division=0)),
        "top_k": k,
        "top_k_accuracy": _round(top_k_accuracy(targets, probs, k)),
        "log_loss": _round(log_loss(targets, probs, labels=classes)),
        "ece": _round(expected_calibration_error(probs, targets, bins)),
        "test_images": int(len(targets)),
        "per_class": {
            label: {"precision": _round(precision[i]), "recall": _round(recall[i]), "f1": _round(f1[i]),
                    "support": int(support[i])}
            for i, label in enumerate(labels)
        },
    }


def top_k_accuracy(targets: np.ndarray, probs: np.ndarray, k: int) -> float:
    """Share of images whose true class is among the k most probable (1.0 once k covers every class)."""
    if k >= probs.shape[1]:
        return 1.0
    if k == 1:
        return accuracy_score(targets, probs.argmax(1))
    return top_k_accuracy_score(targets, probs, k=k, labels=np.arange(probs.shape[1]))


def bucket(values: pd.Series, count: int, unit: str) -> pd.Series:
    """Quantile buckets of an image property, named by their range: '<= 62', '62-110', '> 110'.

    Equal-count buckets, so each holds enough images to be read; a property with fewer distinct
    values than `count` gets one bucket per value.
    """
    if values.nunique() <= count:
        return values.map(lambda v: f"{v:g} {unit}".strip())
    if count == 1:
        return pd.Series("all", index=values.index)
    edges = np.unique(np.quantile(values, np.linspace(0, 1, count + 1)[1:-1]))
    names = [f"<= {edges[0]:.0f} {unit}".strip()]
    names += [f"{lo:.0f}-{hi:.0f} {unit}".strip() for lo, hi in zip(edges[:-1], edges[1:])]
    names += [f"> {edges[-1]:.0f} {unit}".strip()]
    return pd.Series(np.array(names)[np.searchsorted(edges, values, side="left")], index=values.index)


def slice_metrics(frame: pd.DataFrame, properties: dict[str, str], count: int) -> pd.DataFrame:
    """Accuracy, mean confidence and image count per bucket of each image property.

    frame: one row per test image with columns `correct`, `confidence` and each property;
    properties: property column -> unit shown in the bucket names.
    """
    rows = []
    for prop, unit in properties.items():
        buckets = bucket(frame[prop], count, unit)
        order = frame[prop].groupby(buckets).min().sort_values().index  # low to high, not alphabetical
        for name in order:
            part = frame[buckets == name]
            rows.append({"property": prop, "bucket": name, "images": len(part),
                         "accuracy": _round(part["correct"].mean()), "confidence": _round(part["confidence"].mean())})
    return pd.DataFrame(rows, columns=["property", "bucket", "images", "accuracy", "confidence"])


def _round(value) -> float:
    return round(float(value), 4)
