"""sample, clean, split, train and evaluate on tiny image folders made here."""
from __future__ import annotations

import hashlib
import json
import shutil
from pathlib import Path

import pandas as pd
import pytest

from tasks import clean, evaluate, monitor, sample, split, train, validate
from tasks.common import paths
from tasks.common.config import UserError
from tasks.model.bundle import load_bundle
from tests.conftest import make_params, write_image_set

pytestmark = pytest.mark.pipeline


def tree_digest(root: Path) -> str:
    digest = hashlib.sha256()
    for path in sorted(root.rglob("*")):
        digest.update(str(path.relative_to(root)).encode())
        if path.is_file():
            digest.update(path.read_bytes())
    return digest.hexdigest()


def prepare(workdir: Path, root: Path, **sections):
    """Params for a tiny run on `root`, with validate + clean + split done."""
    tiny = {
        "data": {"root": str(root)},
        "validate": {"decodable_mostly": 0.5},
        "train": {"epochs": 2, "batch_size": 8, "image_size": 32},
    }
    for name, values in sections.items():
        tiny[name] = {**tiny.get(name, {}), **values}
    params = make_params(**tiny)
    validate.run(params, workdir)
    clean.run(params, workdir)
    split.run(params, workdir)
    return params


def test_sample_writes_digits_only_when_data_root_is_the_sample_folder(tmp_path):
    elsewhere = make_params(sample={"out_dir": "digits"}, data={"root": "my_images"})
    assert sample.run(elsewhere, tmp_path)["images"] == 0
    assert (tmp_path / "digits").is_dir() and not any((tmp_path / "digits").iterdir())

    params = make_params(sample={"out_dir": "digits"}, data={"root": "digits"})
    result = sample.run(params, tmp_path)
    assert result["images"] == 1797
    folders = sorted(p.name for p in (tmp_path / "digits").iterdir())
    assert folders == [str(d) for d in range(10)]
    assert sum(1 for _ in (tmp_path / "digits").rglob("*.png")) == 1797


def test_clean_quarantines_with_reasons_and_leaves_raw_data_alone(tmp_path, image_root):
    good = image_root / "cat" / "img_000.png"
    shutil.copy(good, image_root / "cat" / "z_copy.png")  # exact duplicate in the same class
    shutil.copy(image_root / "dog" / "img_000.png", image_root / "fox" / "dog_or_fox.png")  # two classes
    (image_root / "cat" / "truncated.png").write_bytes(good.read_bytes()[:60])
    (image_root / "fox" / "notes.jpg").write_text("not an image")
    before = tree_digest(image_root)

    result = prepare(tmp_path, image_root, validate={"warn_only": ["label_conflict", "duplicate_share"]})

    quarantine = pd.read_csv(tmp_path / paths.QUARANTINE_CSV).set_index("path")
    assert quarantine.loc["cat/truncated.png", "reason"] == "undecodable"
    assert quarantine.loc["fox/notes.jpg", "reason"] == "not_an_image"
    assert quarantine.loc["cat/z_copy.png", "reason"] == "exact_duplicate"
    assert "cat/img_000.png" in quarantine.loc["cat/z_copy.png", "detail"]
    for conflicting in ("dog/img_000.png", "fox/dog_or_fox.png"):
        assert quarantine.loc[conflicting, "reason"] == "label_conflict"
        assert "classes dog, fox" in quarantine.loc[conflicting, "detail"]
    kept = pd.read_csv(tmp_path / paths.KEPT_CSV)
    assert len(kept) == 35 and not set(kept["path"]) & set(quarantine.index)
    for file in kept["file"]:  # normalized copies, outside data.root
        assert (tmp_path / file).is_file() and file.startswith("data/clean/images/")
    assert tree_digest(image_root) == before
    assert result.split.seed == 42


def test_split_is_stratified_disjoint_and_seeded(tmp_path, image_root):
    params = prepare(tmp_path, image_root)
    frames = {name: pd.read_csv(tmp_path / paths.split_csv(name)) for name in paths.SPLITS}
    for frame in frames.values():
        assert sorted(frame["label"].unique()) == ["cat", "dog", "fox"]
    files = [set(f["file"]) for f in frames.values()]
    assert not (files[0] & files[1] or files[0] & files[2] or files[1] & files[2])
    assert sum(len(f) for f in files) == 36
    counts = pd.read_csv(tmp_path / split.COUNTS_CSV, index_col="label")
    assert list(counts.columns) == ["train", "val", "test", "total"]
    assert counts["total"].to_dict() == {"cat": 12, "dog": 12, "fox": 12}

    first = (tmp_path / paths.split_csv("test")).read_text()
    split.run(params, tmp_path)
    assert (tmp_path / paths.split_csv("test")).read_text() == first
    split.run(make_params(data={"root": str(image_root)}, split={"seed": 7}), tmp_path)
    assert (tmp_path / paths.split_csv("test")).read_text() != first


def test_split_refuses_a_class_too_small_to_split(tmp_path):
    root = tmp_path / "images"
    write_image_set(root, {"big": 10, "tiny": 2})
    with pytest.raises(UserError, match="class 'tiny' has 2 usable images"):
        prepare(tmp_path, root, validate={"min_images_per_class": 1, "decodable_mostly": 0.5})


def test_train_and_evaluate_write_a_working_bundle(tmp_path, image_root):
    # Eight short epochs: enough steps for BatchNorm statistics to settle on these flat images.
    params = prepare(tmp_path, image_root, train={"epochs": 8, "lr": 0.005,
                                                  "early_stopping": {"metric": "accuracy", "patience": 0, "min_delta": 0}},
                     evaluate={"runtime": "torch"})
    summary = train.run(params, tmp_path)
    assert summary["epochs_run"] == 8 and summary["device"] == "cpu"
    history = pd.read_csv(tmp_path / train.HISTORY_CSV)
    assert list(history["epoch"]) == list(range(1, 9))

    bundle = load_bundle(tmp_path / paths.MODEL_DIR)
    assert bundle.labels == ["cat", "dog", "fox"] and bundle.image_size == 32
    meta = json.loads((tmp_path / "models" / "model.json").read_text())
    assert meta["mean"] == [0.5, 0.5, 0.5] and meta["backbone"] == "tf_efficientnet_lite0"

    result = evaluate.run(params, tmp_path)
    metrics = json.loads((tmp_path / paths.METRICS_JSON).read_text())
    assert metrics["accuracy"] == result["accuracy"] >= 0.8  # three flat colours: easy after ImageNet
    assert set(metrics["per_class"]) == {"cat", "dog", "fox"}
    assert (tmp_path / evaluate.CONFUSION_PNG).stat().st_size > 1000


@pytest.mark.slow(reason="a torchvision and a timm backbone through train and evaluate, about 20 s each")
@pytest.mark.parametrize("backbone", ["resnet18", "mobilenetv3_small_050"])  # torchvision, timm
def test_other_backbones_run_through_the_same_stages(tmp_path, image_root, backbone):
    params = prepare(tmp_path, image_root, train={"backbone": backbone, "weights": "none", "epochs": 1})
    train.run(params, tmp_path)
    assert load_bundle(tmp_path / paths.MODEL_DIR).backbone == backbone
    tested = len(pd.read_csv(tmp_path / paths.split_csv("test")))
    assert evaluate.run(params, tmp_path)["test_images"] == tested
    assert monitor.run(params, tmp_path)["current_rows"] == tested  # embeddings of the test split


@pytest.mark.parametrize(
    ("train_values", "message"),
    [
        ({"weights": "missing/checkpoint.pth"}, "checkpoint missing/checkpoint.pth not found"),
        ({"backbone": "no_such_net"}, "train.backbone: unknown model 'no_such_net'"),
    ],
)
def test_train_rejects_bad_backbone_settings(tmp_path, image_root, train_values, message):
    params = prepare(tmp_path, image_root, train=train_values)
    with pytest.raises(UserError, match=message):
        train.run(params, tmp_path)
