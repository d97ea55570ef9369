"""Validate stage: manifest contents, reports, blocking vs warning expectations, bad layouts."""
from __future__ import annotations

import hashlib
import json
import socket
from pathlib import Path

import pytest
from PIL import Image

from tasks.common.config import UserError
from tasks.data.manifest import MANIFEST_COLUMNS, read_manifest
from tasks.validate import run
from tests.conftest import make_params, write_image_set

pytestmark = pytest.mark.data


def params_for(root: Path, **validate):
    return make_params(data={"root": str(root)}, validate=validate)


def add_bad_files(root: Path) -> None:
    """Add a truncated PNG, a zero-byte file, text named .jpg, a hidden image, a file in no class
    and an 81 Mpx image (over the project's 64 Mpx limit, below the size where PIL itself raises).
    """
    good = (root / "cat" / "img_000.png").read_bytes()
    (root / "cat" / "truncated.png").write_bytes(good[: len(good) // 2])
    (root / "dog" / "empty.png").write_bytes(b"")
    (root / "dog" / "x.jpg").write_text("not really a jpeg\n")
    (root / "fox" / ".hidden.png").write_bytes(good)
    (root / "README.txt").write_text("images of three animals\n")
    Image.new("1", (9000, 9000)).save(root / "fox" / "huge.png")


def tree_hashes(root: Path) -> dict[str, str]:
    return {p.relative_to(root).as_posix(): hashlib.sha256(p.read_bytes()).hexdigest()
            for p in sorted(root.rglob("*")) if p.is_file()}


def test_manifest_records_every_file(image_root: Path, tmp_path: Path):
    add_bad_files(image_root)
    summary = run(params_for(image_root, decodable_mostly=0.8), tmp_path)

    manifest = read_manifest(tmp_path / "data/manifest.csv")
    assert list(manifest.columns) == MANIFEST_COLUMNS
    assert len(manifest) == summary["files"] == 36 + 6
    assert summary["read"] == 42 and summary["cached"] == 0
    assert list(manifest["path"]) == sorted(manifest["path"])
    rows = manifest.set_index("path")

    good = rows.loc["cat/img_000.png"]
    assert (good["label"], good["format"], good["mode"]) == ("cat", "PNG", "RGB")
    assert (good["width"], good["height"]) == (16, 16)
    assert good["decodes"] and good["error"] == ""
    data = (image_root / "cat/img_000.png").read_bytes()
    assert good["sha256"] == hashlib.sha256(data).hexdigest() and good["bytes"] == len(data)

    truncated = rows.loc["cat/truncated.png"]
    assert truncated["format"] == "PNG" and not truncated["decodes"]
    assert truncated["problem"] == "corrupt" and truncated["error"]

    empty = rows.loc["dog/empty.png"]
    assert (empty["bytes"], empty["format"], empty["problem"]) == (0, "", "empty")
    assert not empty["decodes"]

    text = rows.loc["dog/x.jpg"]
    assert text["format"] == "" and not text["decodes"] and text["problem"] == "not_an_image"

    hidden = rows.loc["fox/.hidden.png"]
    assert hidden["hidden"] and hidden["label"] == "fox" and hidden["decodes"]
    assert rows.loc["README.txt", "label"] == "" and rows.loc["README.txt", "problem"] == "not_an_image"
    huge = rows.loc["fox/huge.png"]
    assert huge["problem"] == "over_pixel_limit" and not huge["decodes"] and "not decoded" in huge["error"]
    assert (huge["width"], huge["height"]) == (9000, 9000)
    # Hidden files are recorded but not judged: 36 of the 41 other files decode.
    assert summary["decodable_share"] == pytest.approx(36 / 41, abs=1e-4)


def test_reports_are_written(image_root: Path, tmp_path: Path):
    summary = run(params_for(image_root), tmp_path)
    assert summary == {
        "files": 36, "classes": 3, "decodable_share": 1.0, "duplicate_groups": 0,
        "failed_blocking": [], "failed_warning": [], "read": 36, "cached": 0,
    }

    out = tmp_path / "reports/validate"
    report = json.loads((out / "validation.json").read_text())
    assert report["success"]
    names = {c["name"] for c in report["checks"]}
    assert names == {
        "decodable", "allowed_formats", "image_size", "aspect_ratio", "label_conflict", "duplicate_share",
        "min_images_per_class", "max_imbalance",
    }
    expected = [{"label": label, "files": 12, "images": 12} for label in ("cat", "dog", "fox")]
    assert report["class_counts"] == expected
    for page in report["data_docs"].values():
        assert (out / page).is_file()
    assert (out / "data_docs/index.html").is_file()
    assert {"files results", "classes results"} <= set(report["data_docs"])

    page = (out / "summary.html").read_text()
    assert "PASSED" in page and "min_images_per_class" in page
    assert "<script" not in page and "http" not in page  # self-contained: renders offline


@pytest.mark.parametrize(
    "name, classes, settings",
    [
        ("min_images_per_class", {"cat": 12, "dog": 12, "fox": 2}, {}),
        ("image_size", {"cat": 6, "dog": 6}, {"min_width": 32}),
        ("image_size", {"cat": 6, "dog": 6}, {"max_height": 12}),
        ("allowed_formats", {"cat": 6, "dog": 6}, {"allowed_formats": ["JPEG"]}),
        ("max_imbalance", {"cat": 30, "dog": 6}, {"max_imbalance": 4}),
        ("expected_labels", {"cat": 6, "dog": 6}, {"expected_labels": ["cat", "dog", "fox"]}),
        ("aspect_ratio", {"cat": 6, "dog": 6}, {"aspect_ratio": [1.5, 3.0]}),
    ],
    ids=["min_images_per_class", "min_width", "max_height", "allowed_formats", "max_imbalance",
         "expected_labels", "aspect_ratio"],
)
def test_blocking_failure_raises_and_warn_only_passes(tmp_path: Path, name, classes, settings):
    root = tmp_path / "images"
    write_image_set(root, classes)
    with pytest.raises(UserError, match=name) as failure:
        run(params_for(root, **settings), tmp_path)
    assert name in str(failure.value) and "warn_only" in str(failure.value)
    report = json.loads((tmp_path / "reports/validate/validation.json").read_text())
    assert not report["success"] and report["failed_blocking"] == [name]

    summary = run(params_for(root, **settings, warn_only=[name]), tmp_path)
    assert summary["failed_blocking"] == [] and summary["failed_warning"] == [name]


def test_undecodable_files_block_and_are_named_in_the_log(image_root: Path, tmp_path: Path, capsys):
    for i in range(3):
        (image_root / "dog" / f"broken_{i}.jpg").write_text("text")
    with pytest.raises(UserError, match="decodable"):
        run(params_for(image_root), tmp_path)
    log = capsys.readouterr().err
    assert "FAIL  decodable" in log and "e.g. dog/broken_0.jpg: not an image" in log
    assert "pass  allowed_formats" in log


def test_manifest_cache_reads_only_changed_files(image_root: Path, tmp_path: Path):
    params = params_for(image_root)
    assert run(params, tmp_path)["read"] == 36
    first = (tmp_path / "data/manifest.csv").read_text()
    assert run(params, tmp_path)["read"] == 0
    assert (tmp_path / "data/manifest.csv").read_text() == first

    write_image_set(image_root, {"cat": 1}, seed=5)  # rewrites cat/img_000.png with new pixels
    (image_root / "dog" / "img_001.png").unlink()
    summary = run(params, tmp_path)
    assert (summary["read"], summary["cached"], summary["files"]) == (1, 34, 35)
    rows = read_manifest(tmp_path / "data/manifest.csv").set_index("path")
    assert rows.loc["cat/img_000.png", "sha256"] == hashlib.sha256(
        (image_root / "cat/img_000.png").read_bytes()).hexdigest()


def test_parallel_and_sequential_manifests_agree(image_root: Path, tmp_path: Path):
    from tasks.data.layout import list_entries
    from tasks.data.manifest import build_manifest

    add_bad_files(image_root)
    entries = list_entries(image_root)
    one, _ = build_manifest(image_root, entries, 64_000_000, tmp_path / "a", workers=1)
    two, _ = build_manifest(image_root, entries, 64_000_000, tmp_path / "b", workers=2)
    assert one.equals(two) and len(one) == 42


def test_data_root_is_never_written(image_root: Path, tmp_path: Path):
    add_bad_files(image_root)
    before = tree_hashes(image_root)
    with pytest.raises(UserError):
        run(params_for(image_root), tmp_path)  # fails on decodable share: reports are still written
    assert tree_hashes(image_root) == before


def test_no_network_is_used(image_root: Path, tmp_path: Path, monkeypatch):
    attempts = []

    def refuse(self, address):
        attempts.append(address)
        raise OSError("network disabled in this test")

    monkeypatch.setattr(socket.socket, "connect", refuse)
    run(params_for(image_root), tmp_path)
    assert attempts == []


def _missing(root: Path) -> None:
    pass


def _a_file(root: Path) -> None:
    root.write_text("not a folder")


def _empty(root: Path) -> None:
    (root / "cat").mkdir(parents=True)


def _no_classes(root: Path) -> None:
    write_image_set(root, {"cat": 3})
    for path in (root / "cat").iterdir():
        path.rename(root / path.name)
    (root / "cat").rmdir()


def _one_class(root: Path) -> None:
    write_image_set(root, {"cat": 6})


@pytest.mark.parametrize(
    "make, message",
    [
        (_missing, "does not exist"),
        (_a_file, "is a file"),
        (_empty, "contains no files"),
        (_no_classes, "no class sub-folders"),
        (_one_class, "only one class folder ('cat')"),
    ],
    ids=["missing", "a_file", "empty", "no_classes", "one_class"],
)
def test_bad_layout_fails_fast(tmp_path: Path, make, message):
    root = tmp_path / "images"
    make(root)
    with pytest.raises(UserError) as failure:
        run(params_for(root), tmp_path)
    assert message in str(failure.value)
    assert "\n" not in str(failure.value)


@pytest.mark.parametrize("content", [None, "no pixels here"], ids=["empty_folder", "no_images"])
def test_class_without_images_fails_min_images_per_class(tmp_path: Path, content):
    root = tmp_path / "images"
    write_image_set(root, {"cat": 6, "dog": 6})
    (root / "fox").mkdir()
    if content:
        (root / "fox" / "notes.jpg").write_text(content)
    with pytest.raises(UserError, match="min_images_per_class"):
        run(params_for(root, decodable_mostly=0.5), tmp_path)
    report = json.loads((tmp_path / "reports/validate/validation.json").read_text())
    assert {"label": "fox", "files": 1 if content else 0, "images": 0} in report["class_counts"]


def test_outputs_inside_data_root_are_refused(tmp_path: Path):
    root = tmp_path / "data"
    write_image_set(root, {"cat": 6, "dog": 6})
    with pytest.raises(UserError, match="overlaps"):
        run(params_for(root), tmp_path)
    assert not (root / "manifest.csv").exists()
