"""Monitor stage: reference profile, choice of the current window, Evidently drift verdicts."""
from __future__ import annotations

import json
import shutil
from pathlib import Path

import pandas as pd
import pytest
import torch
from PIL import Image, ImageEnhance

from tasks import monitor
from tasks.common.config import UserError
from tasks.data.images import open_rgb
from tasks.model.backbones import create_backbone, pooled_features
from tasks.model.bundle import fit_projection, save_bundle
from tasks.model.served import load_classifier
from tasks.model.transforms import eval_transform
from tasks.monitoring import drift, traffic
from tasks.monitoring.features import profile_images
from tests.conftest import make_params, write_image_set

pytestmark = pytest.mark.monitoring

CLASSES = {"cat": 15, "dog": 15, "fox": 15}
IMAGE_SIZE = 32


def write_split(workdir: Path, name: str, seed: int) -> list[Path]:
    """Images of the three classes under workdir/images/<name>/ and data/split/<name>.csv."""
    paths = write_image_set(workdir / "images" / name, CLASSES, seed=seed)
    frame = pd.DataFrame({
        "file": [str(p.relative_to(workdir)) for p in paths],
        "label": [p.parent.name for p in paths],
    })
    (workdir / "data/split").mkdir(parents=True, exist_ok=True)
    frame.to_csv(workdir / f"data/split/{name}.csv", index=False)
    return paths


def write_bundle(workdir: Path, images: list[Path]) -> None:
    """A bundle without training: ImageNet backbone, seeded head, projection fitted on a few images."""
    torch.manual_seed(0)
    backbone = create_backbone("tf_efficientnet_lite0", "imagenet", num_classes=len(CLASSES))
    meta = {
        "labels": sorted(CLASSES),
        "backbone": "tf_efficientnet_lite0",
        "image_size": IMAGE_SIZE,
        "mean": list(backbone.mean),
        "std": list(backbone.std),
        "crop_pct": backbone.crop_pct,
    }
    transform = eval_transform(IMAGE_SIZE, backbone.mean, backbone.std, backbone.crop_pct)
    backbone.model.eval()
    with torch.inference_mode():
        features = pooled_features(backbone.model, torch.stack([transform(open_rgb(p)) for p in images]))
    save_bundle(workdir / "models", backbone.model, meta, fit_projection(features))


@pytest.fixture(scope="module")
def prepared(tmp_path_factory) -> Path:
    """Bundle plus val and test splits drawn from one distribution, built once for the module."""
    root = tmp_path_factory.mktemp("monitor")
    val = write_split(root, "val", seed=1)
    write_split(root, "test", seed=2)
    write_bundle(root, val[::3])
    return root


@pytest.fixture
def workdir(prepared: Path, tmp_path: Path) -> Path:
    """A private copy, so that one test's traffic logs and reports never reach another test."""
    target = tmp_path / "work"
    shutil.copytree(prepared, target)
    return target


def log_traffic(workdir: Path, traffic_dir: str, images: list[Image.Image], torn_line: bool = True) -> int:
    """Profile the images and log them as the service would (with one unreadable line)."""
    rows = profile_images(load_classifier(workdir / "models"), images)
    log = workdir / traffic_dir / "image_traffic" / "data" / "data.1.log"
    log.parent.mkdir(parents=True)
    lines = [json.dumps({**row, "timestamp": "2025-01-01T00:00:00", "request_id": str(i)}) for i, row in enumerate(rows)]
    schema = log.parent.parent / "schema" / "schema.1.log"
    schema.parent.mkdir()
    schema.write_text(json.dumps({"columns": [{"name": "brightness"}]}) + "\n")
    log.write_text("\n".join(lines[:5] + (["not json {"] if torn_line else []) + lines[5:]) + "\n")
    return len(rows)


def write_dark_traffic(workdir: Path, traffic_dir: str) -> int:
    """Much darker copies of the test images, logged."""
    files = pd.read_csv(workdir / "data/split/test.csv")["file"]
    return log_traffic(workdir, traffic_dir, [ImageEnhance.Brightness(open_rgb(workdir / f)).enhance(0.25) for f in files])


def new_images(workdir: Path, count: int, seed: int) -> list[Image.Image]:
    """count images of the reference's classes that the reference does not hold."""
    per_class = {label: count // len(CLASSES) + (i < count % len(CLASSES)) for i, label in enumerate(CLASSES)}
    return [open_rgb(p) for p in write_image_set(workdir / "images" / f"new{seed}", per_class, seed=seed)]


def test_without_traffic_compares_the_test_split(workdir: Path):
    result = monitor.run(make_params(), workdir)

    assert result["source"] == "test_split"
    summary = json.loads((workdir / "reports/monitor/drift.json").read_text())
    assert summary["source"] == "test_split"
    assert summary["reference_rows"] == summary["current_rows"] == sum(CLASSES.values())
    assert summary["columns_checked"] == len(drift.DRIFT_COLUMNS)
    assert set(summary["columns"]) == set(drift.DRIFT_COLUMNS)
    assert summary["columns"]["brightness"]["method"]
    assert not summary["dataset_drift"]
    assert summary["drift_share_observed"] < 0.5
    assert "brightness" not in summary["drifted_columns"]

    reference = pd.read_csv(workdir / "reports/monitor/reference.csv")
    assert {"brightness", "emb_7", "prediction", "confidence", "label", "file"} <= set(reference.columns)
    html = (workdir / "reports/monitor/drift.html").read_text()
    assert "<html" in html.lower() and len(html) > 100_000
    assert json.loads((workdir / "reports/monitor/drift_raw.json").read_text())["metrics"]


def test_dark_traffic_is_flagged_as_drift(workdir: Path):
    params = make_params(monitor={"traffic_dir": "logs/traffic", "min_traffic": 20})
    logged = write_dark_traffic(workdir, "logs/traffic")

    result = monitor.run(params, workdir)

    assert result["source"] == "traffic"
    assert result["current_rows"] == logged
    assert result["skipped_lines"] == 1
    summary = json.loads((workdir / "reports/monitor/drift.json").read_text())
    assert summary["columns"]["brightness"]["drifted"]
    assert "brightness" in summary["drifted_columns"]
    assert summary["dataset_drift"] is True
    assert summary["drifted_count"] == len(summary["drifted_columns"])


def test_too_little_traffic_falls_back_to_the_test_split(workdir: Path):
    logged = write_dark_traffic(workdir, "data/traffic")
    params = make_params(monitor={"min_traffic": logged + 1})

    result = monitor.run(params, workdir)

    assert result["source"] == "test_split"
    summary = json.loads((workdir / "reports/monitor/drift.json").read_text())
    assert summary["traffic_rows"] == logged


@pytest.mark.parametrize("line", [
    "",
    "[1, 2]",
    '{"brightness": 0.5}',
    "{broken",
])
def test_unusable_lines_are_rejected(line: str):
    assert traffic.parse_traffic_line(line) is None


def test_non_numeric_feature_is_rejected():
    row = {col: 0.5 for col in drift.NUMERICAL_COLUMNS} | {"prediction": "cat"}
    assert traffic.parse_traffic_line(json.dumps(row)) == row
    assert traffic.parse_traffic_line(json.dumps(row | {"contrast": "high"})) is None
    assert traffic.parse_traffic_line(json.dumps(row | {"prediction": None})) is None


def test_missing_inputs_name_the_fix(tmp_path: Path):
    with pytest.raises(UserError, match="dvc repro split"):
        monitor.run(make_params(), tmp_path)
    write_split(tmp_path, "val", seed=1)
    with pytest.raises(UserError, match="train"):
        monitor.run(make_params(), tmp_path)


@pytest.mark.parametrize("brightness, drifted", [(0.6, True), (1.0, False)], ids=["darkened", "unshifted"])
def test_a_window_of_200_images_is_flagged_when_darkened_not_when_unshifted(workdir: Path, brightness, drifted):
    images = [ImageEnhance.Brightness(img).enhance(brightness) for img in new_images(workdir, 200, seed=7)]
    log_traffic(workdir, "data/traffic", images, torn_line=False)

    result = monitor.run(make_params(monitor={"min_traffic": 200}), workdir)

    summary = json.loads((workdir / "reports/monitor/drift.json").read_text())
    assert (result["source"], result["current_rows"], summary["detector"]) == ("traffic", 200, "bonferroni")
    assert result["dataset_drift"] is drifted
    threshold = 0.05 / len(drift.DRIFT_COLUMNS)
    assert all(c["threshold"] == pytest.approx(threshold) for c in summary["columns"].values())
    if drifted:  # the report names the test that fired, with its p-value and threshold
        brightness_test = summary["columns"]["brightness"]
        assert brightness_test["method"] == "ks" and brightness_test["score"] < threshold
        assert result["verdict"].startswith("drift: ") and "brightness: ks " in result["verdict"]
        assert f"(threshold {threshold:.3g})" in result["verdict"]
        assert "Columns whose drift test fired: " in (workdir / "reports/monitor/drift.html").read_text()
    else:
        assert result["verdict"].startswith("no drift: 0 of 15 column tests fired")
