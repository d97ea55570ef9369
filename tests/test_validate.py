"""Validate stage: manifest contents, reports, blocking vs warning expectations, bad layouts."""
from __future__ import annotations

import hashlib
import json
import socket
from pathlib import Path

import pytest
from PIL import Image

from tasks.config import UserError
from tasks.manifest import MANIFEST_COLUMNS, read_manifest
from tasks.validate import run
from tests.conftest import make_params, write_image_set


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
    assert truncated["error"].startswith("truncated or corrupt")

    empty = rows.loc["dog/empty.png"]
    assert (empty["bytes"], empty["format"], empty["error"]) == (0, "", "empty file")
    assert not empty["decodes"]

    text = rows.loc["dog/x.jpg"]
    assert text["format"] == "" and not text["decodes"] and "not an image" in text["error"]

    assert rows.loc["fox/.hidden.png", "label"] == "fox" and rows.loc["fox/.hidden.png", "decodes"]
    assert rows.loc["README.txt", "label"] == ""
    huge = rows.loc["fox/huge.png"]
    assert huge["error"].startswith("too many pixels") and not huge["decodes"]
    assert summary["decodable_share"] == pytest.approx(37 / 42, abs=1e-4)


def test_reports_are_written(image_root: Path, tmp_path: Path):
    summary = run(params_for(image_root), tmp_path)
    assert summary == {
        "files": 36, "classes": 3, "decodable_share": 1.0, "failed_blocking": [], "failed_warning": [],
    }

    out = tmp_path / "reports/validate"
    report = json.loads((out / "validation.json").read_text())
    assert report["success"]
    names = {c["name"] for c in report["checks"]}
    assert names == {"decodable", "allowed_formats", "min_size", "min_images_per_class"}
    expected = [{"label": label, "files": 12, "images": 12} for label in ("cat", "dog", "fox")]
    assert report["class_counts"] == expected
    for page in report["data_docs"].values():
        assert (out / page).is_file()
    assert (out / "data_docs/index.html").is_file()
    assert {"manifest results", "class_counts results"} <= set(report["data_docs"])

    page = (out / "summary.html").read_text()
    assert "PASSED" in page and "min_images_per_class" in page
    assert "<script" not in page and "http" not in page  # self-contained: renders offline


@pytest.mark.parametrize(
    "name, classes, settings",
    [
        ("min_images_per_class", {"cat": 12, "dog": 12, "fox": 2}, {}),
        ("min_size", {"cat": 6, "dog": 6}, {"min_width": 32}),
        ("allowed_formats", {"cat": 6, "dog": 6}, {"allowed_formats": ["JPEG"]}),
    ],
    ids=["min_images_per_class", "min_size", "allowed_formats"],
)
def test_blocking_failure_raises_and_warn_only_passes(tmp_path: Path, name, classes, settings):
    root = tmp_path / "images"
    write_image_set(root, classes)
    with pytest.raises(UserError, match=name) as failure:
        run(params_for(root, **settings), tmp_path)
    assert "e.g." in str(failure.value)  # names offending files or classes
    report = json.loads((tmp_path / "reports/validate/validation.json").read_text())
    assert not report["success"] and report["failed_blocking"] == [name]

    summary = run(params_for(root, **settings, warn_only=[name]), tmp_path)
    assert summary["failed_blocking"] == [] and summary["failed_warning"] == [name]


def test_undecodable_files_block_and_are_named(image_root: Path, tmp_path: Path):
    for i in range(3):
        (image_root / "dog" / f"broken_{i}.jpg").write_text("text")
    with pytest.raises(UserError, match="decodable") as failure:
        run(params_for(image_root), tmp_path)
    assert "dog/broken_0.jpg: not an image" in str(failure.value)


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


def _empty_class_folder(root: Path) -> None:
    write_image_set(root, {"cat": 6, "dog": 6})
    (root / "fox").mkdir()


def _class_without_images(root: Path) -> None:
    write_image_set(root, {"cat": 6, "dog": 6})
    (root / "fox").mkdir()
    (root / "fox" / "notes.jpg").write_text("no pixels here")


@pytest.mark.parametrize(
    "make, message",
    [
        (_missing, "does not exist"),
        (_a_file, "is a file"),
        (_empty, "contains no files"),
        (_no_classes, "no class sub-folders"),
        (_one_class, "only one class folder ('cat')"),
        (_empty_class_folder, "'fox' under data.root contain no image files"),
        (_class_without_images, "'fox' under data.root contain no image files"),
    ],
    ids=["missing", "a_file", "empty", "no_classes", "one_class", "empty_class_folder", "no_images"],
)
def test_bad_layout_fails_fast(tmp_path: Path, make, message):
    root = tmp_path / "images"
    make(root)
    with pytest.raises(UserError) as failure:
        run(params_for(root), tmp_path)
    assert message in str(failure.value)
    assert "\n" not in str(failure.value)


def test_outputs_inside_data_root_are_refused(tmp_path: Path):
    root = tmp_path / "data"
    write_image_set(root, {"cat": 6, "dog": 6})
    with pytest.raises(UserError, match="overlaps"):
        run(params_for(root), tmp_path)
    assert not (root / "manifest.csv").exists()
