"""The validate stage's summary page: every duplicate group with inline thumbnails of its files,
so a person can judge whether a group is real before trusting clean.drop_near_duplicates."""
from __future__ import annotations

import base64
import io
import re
import shutil
from pathlib import Path

import pytest
from PIL import Image

import tasks.validate
from tasks.data import validation_report
from tasks.validate import run
from tests.conftest import make_params, near_copy, photo, write_image_set

pytestmark = pytest.mark.data

THUMB = re.compile(r'src="data:image/png;base64,([A-Za-z0-9+/=]+)"')
WARN_ONLY = ["duplicate_share", "label_conflict"]


@pytest.fixture
def duplicates_root(tmp_path: Path) -> Path:
    """Distinct 16 px images plus four groups: an exact copy across classes (2 files), a photo with
    an exact copy and a half-size JPEG in one class (3 files), 14 copies of a 16 px image, and a
    96x64 JPEG whose EXIF says to turn it upright (2 files)."""
    root = tmp_path / "images"
    write_image_set(root, {"cat": 6, "dog": 6})
    photo(1).save(root / "cat/a.png")
    shutil.copy(root / "cat/a.png", root / "dog/a_copy.png")
    photo(2).save(root / "cat/b.png")
    shutil.copy(root / "cat/b.png", root / "cat/b_copy.png")
    (root / "cat/b_small.jpg").write_bytes(near_copy(photo(2)))
    for i in range(13):
        shutil.copy(root / "dog/img_000.png", root / f"dog/tiny_{i:02d}.png")
    exif = Image.Exif()
    exif[0x0112] = 6  # orientation: rotate 90 degrees clockwise to view
    photo(3).save(root / "dog/turned.jpg", quality=90, exif=exif.tobytes())
    shutil.copy(root / "dog/turned.jpg", root / "dog/turned_copy.jpg")
    return root


def group_sections(page: str) -> list[str]:
    return page.split('<section class="group')[1:]


def test_groups_are_shown_with_thumbnails(duplicates_root: Path, tmp_path: Path):
    summary = run(make_params(data={"root": str(duplicates_root)}, validate={"warn_only": WARN_ONLY}), tmp_path)
    assert summary["duplicate_groups"] == 4
    page = (tmp_path / "reports/validate/summary.html").read_text()
    cross, tiny, near, turned = group_sections(page)  # the cross-class group first, then larger groups

    assert cross.startswith(" conflict") and "Spans 2 classes (cat, dog)" in cross
    assert "exact copies (same sha256)" in cross and "cat/a.png" in cross and "dog/a_copy.png" in cross
    assert "near copies (2 different contents)" in near and "Spans" not in near
    for path in ("cat/b.png", "cat/b_copy.png", "cat/b_small.jpg"):
        assert path in near
    assert "96×64 PNG" in near and "48×32 JPEG" in near
    assert near.index("cat/b.png") < near.index("cat/b_small.jpg")  # largest first: the one clean keeps

    assert [len(THUMB.findall(s)) for s in (cross, tiny, near, turned)] == [2, 12, 3, 2]
    assert "14 files" in tiny and "Not shown: 2 more files of this group" in tiny
    for data in THUMB.findall(page):
        with Image.open(io.BytesIO(base64.b64decode(data))) as thumb:
            assert thumb.format == "PNG" and max(thumb.size) <= 96
    assert 'width="96" height="96" class="pixelated"' in tiny  # a 16 px image is enlarged, crisp
    assert 'width="96" height="64" alt' in near  # the 96x64 photo is shown as it is
    assert 'width="64" height="96" alt' in turned  # upright, as EXIF says
    assert "data/manifest.csv (duplicate_group column)" in page
    for outside in ("http://", "https://", "<script"):
        assert outside not in page


def test_file_that_no_longer_decodes_gets_a_placeholder(duplicates_root: Path, tmp_path: Path, monkeypatch):
    write_reports = tasks.validate.write_reports

    def truncate_then_write(*args):  # the files change between the manifest and the report
        for path in ("cat/a.png", "dog/a_copy.png"):
            (duplicates_root / path).write_bytes((duplicates_root / path).read_bytes()[:100])
        write_reports(*args)

    monkeypatch.setattr(tasks.validate, "write_reports", truncate_then_write)
    monkeypatch.setattr(validation_report, "MAX_GROUPS_SHOWN", 2)
    run(make_params(data={"root": str(duplicates_root)}, validate={"warn_only": WARN_ONLY}), tmp_path)
    page = (tmp_path / "reports/validate/summary.html").read_text()
    cross, tiny = group_sections(page)
    assert cross.count('class="thumb missing">does not decode') == 2 and not THUMB.findall(cross)
    assert len(THUMB.findall(tiny)) == 12
    assert "Not shown: 2 more groups." in page and "cat/b.png" not in cross + tiny  # the third group
