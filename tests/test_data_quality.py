"""What real image folders contain, end to end through validate, clean and split.

One corpus holds a file of every kind the stages must catch; each must end with the right
quarantine reason or expectation result, and data.root must be byte-for-byte unchanged.
"""
from __future__ import annotations

import hashlib
import io
import json
import os
import struct
import zlib
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
from PIL import Image

from tasks import clean, split, validate
from tasks.common import paths
from tasks.common.config import UserError
from tasks.data.manifest import read_manifest
from tests.conftest import make_params, near_copy, photo, write_image_set

pytestmark = pytest.mark.data

# Expectations the corpus breaks on purpose; listed as warn_only so the pipeline completes.
BROKEN_ON_PURPOSE = ["image_size", "min_images_per_class", "label_conflict", "allowed_formats"]


def tree_hash(root: Path) -> str:
    """Names, bytes and symlink targets of everything under root."""
    digest = hashlib.sha256()
    for path in sorted(root.rglob("*")):
        digest.update(str(path.relative_to(root)).encode())
        if path.is_symlink():
            digest.update(os.readlink(path).encode())
        elif path.is_file():
            digest.update(path.read_bytes())
    return digest.hexdigest()


def png_header_only(width: int, height: int) -> bytes:
    """A PNG whose header declares width x height pixels and holds almost no data."""
    def chunk(kind: bytes, data: bytes) -> bytes:
        return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data))
    ihdr = struct.pack(">IIBBBBB", width, height, 8, 2, 0, 0, 0)
    return b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", ihdr) + chunk(b"IDAT", zlib.compress(b"\0" * 16)) + chunk(b"IEND", b"")


def make_corpus(root: Path, outside: Path) -> None:
    write_image_set(root, {"cat": 12, "dog": 12, "fox": 12}, size=32)
    jpeg = io.BytesIO()
    photo(1).save(jpeg, "JPEG", quality=90)
    (root / "cat" / "truncated.jpg").write_bytes(jpeg.getvalue()[: len(jpeg.getvalue()) // 2])
    (root / "cat" / "zero.jpg").write_bytes(b"")
    (root / "dog" / "text.jpg").write_text("this is a text file with an image name\n")
    Image.new("CMYK", (32, 32), (0, 255, 255, 0)).save(root / "dog" / "cmyk.jpg")  # pure red
    grey16 = np.full((32, 32), 32896, dtype=np.uint16)  # 50% grey in 16 bits
    Image.fromarray(grey16).save(root / "fox" / "deep.png")
    palette = Image.new("P", (32, 32), 1)
    palette.putpalette([0, 0, 0, 0, 200, 0] + [0] * 762)
    palette.paste(0, (0, 0, 16, 32))  # left half is index 0, transparent
    palette.save(root / "fox" / "palette.png", transparency=0)
    rotated = photo(2, (48, 32))
    exif = Image.Exif()
    exif[0x0112] = 6  # stored sideways: displayed rotated 90 degrees clockwise
    rotated.save(root / "cat" / "rotated.jpg", exif=exif, quality=95)
    Image.new("RGB", (1, 1), (9, 9, 9)).save(root / "dog" / "tiny.png")
    (root / "fox" / "bomb.png").write_bytes(png_header_only(50_000, 50_000))
    Image.new("RGB", (32, 32), (1, 2, 3)).save(root / "cat" / "кошка ü.png")
    (root / "dog" / ".DS_Store").write_bytes(b"\0\0\0\1Bud1")
    (root / "fox" / ".hidden.png").write_bytes((root / "fox" / "img_000.png").read_bytes())
    (root / "cat" / "nested" / "deeper").mkdir(parents=True)
    photo(3).save(root / "cat" / "nested" / "deeper" / "inner.png")
    (root / "owl").mkdir()  # an empty class folder
    (root / "dog" / "also_a_cat.png").write_bytes((root / "cat" / "img_001.png").read_bytes())
    photo(4).save(root / "cat" / "original.png")
    (root / "cat" / "original_small.jpg").write_bytes(near_copy(photo(4)))
    outside.write_bytes((root / "cat" / "img_002.png").read_bytes())
    (root / "cat" / "link_out.png").symlink_to(outside)
    photo(5).save(root / "loose.png")  # in no class folder
    photo(6, (32, 32)).save(root / "fox" / "icon.ico")  # an image, but not an allowed format


EXPECTED_REASONS = {
    "cat/truncated.jpg": "undecodable",
    "cat/zero.jpg": "not_an_image",
    "dog/text.jpg": "not_an_image",
    "dog/tiny.png": "too_small",
    "fox/bomb.png": "too_many_pixels",
    "dog/.DS_Store": "hidden_file",
    "fox/.hidden.png": "hidden_file",
    "cat/img_001.png": "label_conflict",
    "dog/also_a_cat.png": "label_conflict",
    "cat/original_small.jpg": "near_duplicate",
    "cat/link_out.png": "symlink",
    "loose.png": "no_class_folder",
    "fox/icon.ico": "unsupported_format",
}


@pytest.fixture
def corpus(tmp_path: Path) -> Path:
    root = tmp_path / "images"
    make_corpus(root, tmp_path / "outside.png")
    return root


def params_for(root: Path, warn_only=BROKEN_ON_PURPOSE, **clean_values):
    return make_params(
        data={"root": str(root)},
        validate={"warn_only": warn_only, "decodable_mostly": 0.8},
        clean={"background": [0, 0, 255], **clean_values},
    )


def test_every_kind_of_bad_file_ends_with_the_right_reason(corpus: Path, tmp_path: Path):
    before = tree_hash(corpus)
    params = params_for(corpus)
    work = tmp_path / "work"
    summary = validate.run(params, work)
    clean.run(params, work)
    split.run(params, work)
    assert tree_hash(corpus) == before

    assert set(summary["failed_warning"]) == set(BROKEN_ON_PURPOSE) and summary["failed_blocking"] == []
    manifest = read_manifest(work / "data/manifest.csv").set_index("path")
    assert manifest.loc["cat/truncated.jpg", "format"] == "JPEG"
    assert manifest.loc["dog/cmyk.jpg", "mode"] == "CMYK"
    assert manifest.loc["fox/deep.png", "bit_depth"] == 16
    assert manifest.loc["fox/palette.png", "mode"] == "P"
    assert manifest.loc["cat/rotated.jpg", "orientation"] == 6
    bomb = manifest.loc["fox/bomb.png"]
    assert (bomb["width"], bomb["height"], bomb["problem"]) == (50_000, 50_000, "over_pixel_limit")
    assert manifest.loc["cat/nested/deeper/inner.png", "label"] == "cat"
    assert manifest.loc["cat/link_out.png", "symlink"] == "leaves_root"
    assert manifest.loc["dog/.DS_Store", "hidden"]

    quarantine = pd.read_csv(work / paths.QUARANTINE_CSV, keep_default_na=False).set_index("path")
    assert quarantine["reason"].to_dict() == EXPECTED_REASONS
    assert "cat/original.png" in quarantine.loc["cat/original_small.jpg", "detail"]

    report = json.loads((work / "reports/validate/validation.json").read_text())
    counts = {c["label"]: c["images"] for c in report["class_counts"]}
    assert counts["owl"] == 0  # the empty class folder fails min_images_per_class (a warning here)
    examples = {c["name"]: " ".join(c["examples"]) for c in report["checks"]}
    assert "dog/tiny.png" in examples["image_size"] and "owl" in examples["min_images_per_class"]
    assert "dog/also_a_cat.png" in examples["label_conflict"] and "fox/icon.ico" in examples["allowed_formats"]


def test_kept_images_are_normalized_once(corpus: Path, tmp_path: Path):
    params = params_for(corpus, max_side=40)
    work = tmp_path / "work"
    validate.run(params, work)
    clean.run(params, work)
    kept = pd.read_csv(work / paths.KEPT_CSV, keep_default_na=False).set_index("path")

    def normalized(path: str) -> Image.Image:
        img = Image.open(work / kept.loc[path, "file"])
        assert img.mode == "RGB"
        return img

    assert normalized("dog/cmyk.jpg").getpixel((16, 16)) == pytest.approx((255, 0, 0), abs=4)
    assert normalized("fox/deep.png").getpixel((5, 5)) == (128, 128, 128)
    palette = normalized("fox/palette.png")
    assert palette.getpixel((4, 4)) == (0, 0, 255)  # transparent: the params background
    assert palette.getpixel((28, 4)) == (0, 200, 0)
    assert normalized("cat/rotated.jpg").size == (27, 40)  # upright (stored 48x32 sideways), max side 40
    assert normalized("cat/original.png").size == (40, 27)  # 96x64 shrunk to max side 40
    assert normalized("cat/кошка ü.png").getpixel((0, 0)) == (1, 2, 3)
    assert kept.loc["cat/кошка ü.png", "file"] == "data/clean/images/cat/кошка ü.png"
    assert kept.loc["fox/palette.png", "file"].endswith("fox/palette.png")
    # Every kept image is readable and nothing is written next to the raw data.
    assert all((work / f).is_file() for f in kept["file"])


def test_blocking_expectations_stop_the_pipeline_with_the_offenders(corpus: Path, tmp_path: Path, capsys):
    before = tree_hash(corpus)
    with pytest.raises(UserError) as failure:
        validate.run(params_for(corpus, warn_only=[]), tmp_path)
    for name in BROKEN_ON_PURPOSE:
        assert name in str(failure.value)
    log = capsys.readouterr().err
    assert "e.g. dog/also_a_cat.png: the same image is in classes cat, dog" in log
    assert "e.g. owl: images 0" in log
    assert (tmp_path / "reports/validate/summary.html").is_file()
    assert tree_hash(corpus) == before


def plant_groups(root: Path, classes: int = 3, groups: int = 6, singles: int = 10) -> dict[str, list[str]]:
    """Per class: `groups` sets of an image, its exact copy and a near copy, plus single images."""
    planted = {}
    for c in range(classes):
        folder = root / f"class_{c}"
        folder.mkdir(parents=True)
        for g in range(groups):
            img = photo(1000 * c + g)
            img.save(folder / f"g{g}.png")
            (folder / f"g{g}_copy.png").write_bytes((folder / f"g{g}.png").read_bytes())
            (folder / f"g{g}_small.jpg").write_bytes(near_copy(img))
            planted[f"class_{c}/g{g}"] = [f"class_{c}/g{g}{s}" for s in (".png", "_copy.png", "_small.jpg")]
        for s in range(singles):
            photo(1000 * c + 100 + s).save(folder / f"single_{s}.png")
    return planted


@pytest.mark.parametrize("seed", [0, 1, 2])
def test_duplicate_groups_never_straddle_splits(tmp_path: Path, seed: int):
    root = tmp_path / "images"
    planted = plant_groups(root)
    params = make_params(
        data={"root": str(root)},
        validate={"warn_only": ["duplicate_share"]},
        clean={"drop_exact_duplicates": False, "drop_near_duplicates": False},
        split={"seed": seed, "val": 0.2, "test": 0.2},
    )
    validate.run(params, tmp_path)
    clean.run(params, tmp_path)
    split.run(params, tmp_path)
    where = {}
    for name in paths.SPLITS:
        for path in pd.read_csv(tmp_path / paths.split_csv(name))["path"]:
            where[path] = name
    assert len(where) == 3 * (6 * 3 + 10)  # every image used once
    for members in planted.values():
        assert len({where[m] for m in members}) == 1, members
    assert set(where.values()) == {"train", "val", "test"}


def test_user_split_folders_are_honoured_and_leaks_reported(tmp_path: Path):
    root = tmp_path / "images"
    write_image_set(root / "train", {"cat": 20, "dog": 20}, size=32)
    write_image_set(root / "test", {"cat": 5, "dog": 5}, size=32, seed=1)
    leaked = root / "test" / "cat" / "leaked.png"
    leaked.write_bytes((root / "train" / "cat" / "img_003.png").read_bytes())
    params = make_params(data={"root": str(root)}, validate={"warn_only": ["duplicate_share"]})
    validate.run(params, tmp_path)
    clean.run(params, tmp_path)
    result = split.run(params, tmp_path)

    assert result["mode"] == "user folders" and result["cross_split_duplicate_groups"] == 1
    frames = {n: pd.read_csv(tmp_path / paths.split_csv(n)) for n in paths.SPLITS}
    assert set(frames["test"]["path"]) <= {p.relative_to(root).as_posix() for p in (root / "test").rglob("*.png")}
    assert len(frames["val"]) == 6 and frames["val"]["path"].str.startswith("train/").all()  # carved from train
    assert sorted(frames["train"]["label"].unique()) == ["cat", "dog"]
    report = pd.read_csv(tmp_path / split.CROSS_SPLIT_CSV)
    assert set(report["path"]) == {"train/cat/img_003.png", "test/cat/leaked.png"}
    assert report["status"].str.contains("quarantined").sum() == 1
    all_paths = [set(f["path"]) for f in frames.values()]
    assert len(set.union(*all_paths)) == sum(len(p) for p in all_paths)  # no file in two splits


def digit(index: int, size: int) -> Image.Image:
    """A real 8x8 scan of scikit-learn's digits, upscaled to size x size: an MNIST-like image."""
    from sklearn.datasets import load_digits

    pixels = np.round(load_digits().images[index] * 255 / 16).astype(np.uint8)
    return Image.fromarray(pixels, "L").resize((size, size), Image.Resampling.BICUBIC)


def test_small_images_are_grouped_with_their_resized_copies_and_distinct_ones_are_not(tmp_path: Path):
    root = tmp_path / "images"
    for label in ("0", "1", "2"):  # eight distinct 28 px scans per class (the digits are sorted 0-9 repeatedly)
        (root / label).mkdir(parents=True)
        for i in range(8):
            digit(int(label) + 10 * i, 28).save(root / label / f"scan_{i}.png")
    out = io.BytesIO()
    Image.open(root / "1/scan_0.png").resize((56, 56), Image.Resampling.BICUBIC).save(out, "JPEG", quality=75)
    (root / "1/scan_0_large.jpg").write_bytes(out.getvalue())  # small original, large copy
    digit(202, 64).save(root / "2/big.png")  # a scan none of the others is
    digit(202, 64).resize((16, 16), Image.Resampling.LANCZOS).save(root / "2/big_thumb.png")  # and the other way
    params = make_params(data={"root": str(root)}, validate={"warn_only": ["duplicate_share"]})
    before = tree_hash(root)

    validate.run(params, tmp_path)
    clean.run(params, tmp_path)

    manifest = read_manifest(tmp_path / paths.MANIFEST_CSV).set_index("path")
    group = manifest["duplicate_group"]
    assert group["1/scan_0.png"] == group["1/scan_0_large.jpg"]
    assert group["2/big.png"] == group["2/big_thumb.png"]
    sizes = group.value_counts()
    assert sorted(sizes[sizes > 1].index) == sorted({group["1/scan_0.png"], group["2/big.png"]})
    assert (sizes[sizes > 1] == 2).all()  # no distinct scan joined either group or formed one
    quarantine = pd.read_csv(tmp_path / paths.QUARANTINE_CSV, keep_default_na=False).set_index("path")
    assert quarantine["reason"].to_dict() == {"1/scan_0.png": "near_duplicate", "2/big_thumb.png": "near_duplicate"}
    assert "near copy of 1/scan_0_large.jpg" in quarantine.loc["1/scan_0.png", "detail"]
    assert tree_hash(root) == before


def garment(size: int, detail: str = "") -> Image.Image:
    """A grey shirt on black drawn at 8x and reduced: the same outline for every detail."""
    from PIL import ImageDraw

    hi = 8 * size
    img = Image.new("L", (hi, hi), 0)
    draw = ImageDraw.Draw(img)
    s = hi / 28  # one pixel at 28 px
    draw.polygon([(9 * s, 4 * s), (3 * s, 10 * s), (6 * s, 13 * s), (9 * s, 10 * s), (9 * s, 25 * s),
                  (19 * s, 25 * s), (19 * s, 10 * s), (22 * s, 13 * s), (25 * s, 10 * s), (19 * s, 4 * s)], fill=170)
    if detail == "mark":  # a dark dot 2 px across
        draw.ellipse([15 * s, 17 * s, 17 * s, 19 * s], fill=60)
    elif detail == "logo":
        draw.ellipse([12 * s, 7 * s, 16 * s, 11 * s], fill=250)
    elif detail == "stripe":
        draw.rectangle([9 * s, 15 * s, 19 * s, 16 * s], fill=90)
    elif detail == "texture":  # a checker of 4 px period
        pixels = np.asarray(img, dtype=np.int16)
        yy, xx = np.mgrid[:hi, :hi]
        checker = (((xx // (2 * s)) + (yy // (2 * s))) % 2 * 2 - 1) * 35
        img = Image.fromarray(np.where(pixels > 0, pixels + checker, 0).clip(0, 255).astype(np.uint8))
    return img.resize((size, size), Image.Resampling.LANCZOS)


def test_look_alikes_are_kept_apart_and_their_real_copies_are_grouped(tmp_path: Path):
    """The same outline with a mark, a logo, a stripe or a texture is another picture; a JPEG of
    it or its 56 px copy is the same one. Nothing but the copies is quarantined."""
    root = tmp_path / "images"
    write_image_set(root, {"coat": 5, "shirt": 3}, size=28)
    for detail in ("", "mark", "logo", "stripe", "texture"):
        garment(28, detail).save(root / "shirt" / f"look_{detail or 'plain'}.png")
    garment(28, "mark").save(root / "coat" / "look_mark_in_coats.png", "PNG", compress_level=1)
    jpeg = io.BytesIO()
    garment(28).save(jpeg, "JPEG", quality=75)
    (root / "shirt" / "look_plain_copy.jpg").write_bytes(jpeg.getvalue())
    Image.open(root / "shirt" / "look_plain.png").resize((56, 56), Image.Resampling.BICUBIC).save(
        root / "shirt" / "look_plain_x2.png")
    params = make_params(data={"root": str(root)}, validate={"warn_only": ["duplicate_share", "label_conflict"]})

    validate.run(params, tmp_path)
    clean.run(params, tmp_path)

    group = read_manifest(tmp_path / paths.MANIFEST_CSV).set_index("path")["duplicate_group"]
    plain = group["shirt/look_plain.png"]
    assert group["shirt/look_plain_copy.jpg"] == plain and group["shirt/look_plain_x2.png"] == plain
    looks = [f"shirt/look_{d}.png" for d in ("plain", "mark", "logo", "stripe", "texture")]
    assert group[looks].nunique() == len(looks)  # no look-alike joins another's group
    assert group["coat/look_mark_in_coats.png"] == group["shirt/look_mark.png"]  # same pixels, other bytes
    quarantine = pd.read_csv(tmp_path / paths.QUARANTINE_CSV, keep_default_na=False).set_index("path")
    assert quarantine["reason"].to_dict() == {
        "shirt/look_plain.png": "near_duplicate", "shirt/look_plain_copy.jpg": "near_duplicate",
        "coat/look_mark_in_coats.png": "label_conflict", "shirt/look_mark.png": "label_conflict",
    }


def test_a_low_quality_jpeg_of_a_small_image_is_its_copy_and_not_a_look_alikes(tmp_path: Path):
    """At 16 px a quality-50 JPEG changes pixels as much as a 2 px mark does; compared with its
    source re-encoded the same way it is the same picture, and with the look-alike's it is not."""
    root = tmp_path / "images"
    write_image_set(root, {"other": 5}, size=16)
    (root / "shirt").mkdir()
    garment(16).save(root / "shirt" / "small_plain.png")
    garment(16, "mark").save(root / "shirt" / "small_mark.png")
    jpeg = io.BytesIO()
    garment(16, "mark").save(jpeg, "JPEG", quality=50)
    (root / "shirt" / "small_mark_q50.jpg").write_bytes(jpeg.getvalue())
    params = make_params(data={"root": str(root)}, validate={"warn_only": ["duplicate_share", "min_images_per_class"]})

    validate.run(params, tmp_path)

    group = read_manifest(tmp_path / paths.MANIFEST_CSV).set_index("path")["duplicate_group"]
    assert group["shirt/small_mark.png"] == group["shirt/small_mark_q50.jpg"]
    assert group["shirt/small_plain.png"] != group["shirt/small_mark.png"]
