"""Metrics, calibration and slices on planted predictions; the evaluate stage's outputs on a real run."""
from __future__ import annotations

import json

import numpy as np
import pandas as pd
import pytest
import torch
from sklearn.metrics import (
    accuracy_score,
    balanced_accuracy_score,
    classification_report,
    f1_score,
    log_loss,
    top_k_accuracy_score,
)

from tasks import evaluate, train
from tasks.common import paths
from tasks.data.images import open_rgb
from tasks.evaluation.calibration import expected_calibration_error, fit_temperature, reliability, softmax
from tasks.evaluation.metrics import classification_metrics, slice_metrics
from tasks.model.bundle import load_bundle
from tests.test_stages import prepare

pytestmark = pytest.mark.evaluation


def planted(n: int, classes: int, sharpness: float, seed: int = 0):
    """Targets and logits of a model that is perfectly calibrated at sharpness 1: each image's class
    is drawn from softmax(logits). Sharpness > 1 scales the logits up: the same predictions, made
    over-confidently."""
    rng = np.random.default_rng(seed)
    logits = rng.normal(0, 2.0, (n, classes))
    probs = softmax(logits)
    targets = np.array([rng.choice(classes, p=p) for p in probs])
    return targets, logits * sharpness


def test_metrics_match_scikit_learn_on_planted_predictions():
    labels = ["ant", "bee", "cow", "dog"]
    targets, logits = planted(300, 4, sharpness=1.0)
    targets[:40] = 0  # unequal supports, so macro, weighted and balanced figures differ
    probs = softmax(logits)
    predicted = probs.argmax(1)

    metrics = classification_metrics(targets, probs, labels, top_k=2)

    assert metrics["accuracy"] == round(accuracy_score(targets, predicted), 4)
    assert metrics["balanced_accuracy"] == round(balanced_accuracy_score(targets, predicted), 4)
    assert metrics["macro_f1"] == round(f1_score(targets, predicted, average="macro"), 4)
    assert metrics["weighted_f1"] == round(f1_score(targets, predicted, average="weighted"), 4)
    assert metrics["top_k"] == 2
    assert metrics["top_k_accuracy"] == round(top_k_accuracy_score(targets, probs, k=2), 4)
    assert metrics["log_loss"] == round(log_loss(targets, probs), 4)
    assert metrics["test_images"] == 300
    report = classification_report(targets, predicted, target_names=labels, output_dict=True)
    for label in labels:
        assert metrics["per_class"][label] == {
            "precision": round(report[label]["precision"], 4), "recall": round(report[label]["recall"], 4),
            "f1": round(report[label]["f1-score"], 4), "support": int(report[label]["support"]),
        }
    assert len({metrics["accuracy"], metrics["balanced_accuracy"], metrics["macro_f1"], metrics["weighted_f1"]}) > 2


def test_top_k_covers_every_class_and_a_class_never_predicted():
    probs = np.array([[0.6, 0.3, 0.1], [0.5, 0.4, 0.1], [0.2, 0.7, 0.1]])
    metrics = classification_metrics(np.array([0, 1, 2]), probs, ["a", "b", "c"], top_k=5)
    assert metrics["top_k"] == 3 and metrics["top_k_accuracy"] == 1.0
    assert metrics["per_class"]["c"] == {"precision": 0.0, "recall": 0.0, "f1": 0.0, "support": 1}


def test_expected_calibration_error_by_hand():
    # Two bins hold images: confidence 0.9 (2 images, 1 right) and 0.6 (2 images, both right).
    probs = np.array([[0.9, 0.1], [0.9, 0.1], [0.6, 0.4], [0.6, 0.4]])
    targets = np.array([0, 1, 0, 0])
    # |0.5 - 0.9| * 2/4 + |1.0 - 0.6| * 2/4
    assert expected_calibration_error(probs, targets, bins=10) == pytest.approx(0.4)
    table = reliability(probs, targets, bins=10)
    assert table[["confidence", "accuracy", "count"]].values.tolist() == [[0.6, 1.0, 2], [0.9, 0.5, 2]]
    perfect = np.array([[1.0, 0.0], [0.0, 1.0]])
    assert expected_calibration_error(perfect, np.array([0, 1])) == 0.0


def test_temperature_scaling_lowers_ece_of_an_over_confident_model():
    targets, logits = planted(4000, 5, sharpness=4.0)
    fit_on, judge_on = slice(0, 2000), slice(2000, 4000)  # fitted on "validation", judged on "test"

    temperature = fit_temperature(torch.tensor(logits[fit_on]), torch.tensor(targets[fit_on]))

    before = softmax(logits[judge_on])
    after = softmax(logits[judge_on], temperature)
    assert temperature == pytest.approx(4.0, rel=0.15)  # the planted over-confidence is found
    assert expected_calibration_error(before, targets[judge_on]) > 0.1
    assert expected_calibration_error(after, targets[judge_on]) < 0.03
    assert log_loss(targets[judge_on], after) < log_loss(targets[judge_on], before)
    assert (after.argmax(1) == before.argmax(1)).all()  # no prediction changes


def test_slices_bucket_each_property_in_equal_counts():
    frame = pd.DataFrame({
        "brightness": np.arange(90, dtype=float), "short_side": [8] * 90,
        "correct": [True] * 30 + [False] * 30 + [True] * 30, "confidence": [0.9] * 90,
    })
    slices = slice_metrics(frame, {"brightness": "", "short_side": "px"}, count=3)
    brightness = slices[slices["property"] == "brightness"]
    assert brightness["images"].tolist() == [30, 30, 30]
    assert brightness["accuracy"].tolist() == [1.0, 0.0, 1.0]  # the dark-to-bright order is kept
    assert brightness["bucket"].iloc[0].startswith("<=") and brightness["bucket"].iloc[-1].startswith(">")
    assert slices[slices["property"] == "short_side"][["bucket", "images"]].values.tolist() == [["8 px", 90]]
    whole = slice_metrics(frame, {"brightness": ""}, count=1)
    assert whole[["bucket", "images", "accuracy"]].values.tolist() == [["all", 90, 0.6667]]


def test_evaluate_stage_uses_the_bundles_temperature_and_writes_its_report(tmp_path, image_root):
    params = prepare(tmp_path, image_root, train={"epochs": 3, "lr": 0.005}, evaluate={"worst_mistakes": 4, "runtime": "torch"})  # nothing exported: tests/test_runtimes.py covers that
    summary = train.run(params, tmp_path)
    bundle = load_bundle(tmp_path / paths.MODEL_DIR)
    assert bundle.temperature == summary["temperature"] != 1.0 and bundle.tta == "none"

    evaluate.run(params, tmp_path)

    metrics = json.loads((tmp_path / paths.METRICS_JSON).read_text())
    predictions = pd.read_csv(tmp_path / paths.PREDICTIONS_CSV)
    tested = len(pd.read_csv(tmp_path / paths.split_csv("test")))
    assert metrics["temperature"] == bundle.temperature and metrics["test_images"] == len(predictions) == tested
    first = tmp_path / predictions["file"].iloc[0]
    served = bundle.predict_proba(bundle.preprocess([open_rgb(first)]))[0]
    assert predictions["confidence"].iloc[0] == pytest.approx(served.max(), abs=1e-4)  # calibrated, as served
    assert set(metrics["slices"]) == {"brightness", "short_side"}
    for name in ("CONFUSION_PNG", "RELIABILITY_PNG", "MISTAKES_PNG"):
        assert (tmp_path / getattr(evaluate, name)).stat().st_size > 5000, name
    page = (tmp_path / paths.REPORT_HTML).read_text()
    assert page.count("data:image/png;base64,") == 4  # confusion, calibration, mistakes, training curves
    assert "Expected calibration error" in page and "cat" in page
    reliability_csv = pd.read_csv(tmp_path / evaluate.RELIABILITY_CSV)
    assert reliability_csv["count"].sum() == tested

    # Flip test-time augmentation: the mean of the logits of each image and its mirror image.
    batch = bundle.preprocess([open_rgb(first)])
    plain = bundle.logits_and_features(batch)[0]
    mirrored = bundle.logits_and_features(batch.flip(-1))[0]
    assert torch.allclose(bundle.logits_and_features(batch, tta="hflip")[0], (plain + mirrored) / 2, atol=1e-5)
    meta_file = tmp_path / paths.MODEL_DIR / "model.json"
    meta_file.write_text(json.dumps({**json.loads(meta_file.read_text()), "tta": "hflip"}))
    evaluate.run(params, tmp_path)
    metrics = json.loads((tmp_path / paths.METRICS_JSON).read_text())
    assert "accuracy_without_tta" in metrics and "Accuracy without test-time augmentation" in (
        tmp_path / paths.REPORT_HTML).read_text()
