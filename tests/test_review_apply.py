"""Finished reviews change data.root as a person would, once each, and nothing is lost."""
from __future__ import annotations

import subprocess
import sys

import pandas as pd
import pytest

from tasks.common.config import UserError
from tasks.labels.review import LOG_NAME, apply_reviews, check_data_root_is_own
from tests.conftest import PROJECT_ROOT, make_params, write_image_set

pytestmark = pytest.mark.labelling

CLASSES = ["cat", "dog", "fox"]


@pytest.fixture
def project(tmp_path):
    write_image_set(tmp_path / "images", {c: 3 for c in CLASSES})
    write_image_set(tmp_path / "data/traffic/uncertain/2026-05-01", {"x": 2}, seed=5)
    subprocess.run([sys.executable, "-m", "dvc", "init", "-q", "--no-scm"], cwd=tmp_path, check=True)
    return tmp_path


def review(key: str, image: str, kind: str, choice: str, given: str | None = None, at: str = "2026-05-01T10:00") -> dict:
    return {"key": key, "image": image, "kind": kind, "given_label": given, "choice": choice, "reviewer": "ann@lab",
            "reviewed_at": at, "model_version": "m:1", "score": 0.9, "problem": None}


def test_each_kind_of_review_changes_the_data_once_and_is_logged(project):
    params = make_params(data={"root": "images"})
    reviews = [
        review("s1", "images/cat/img_000.png", "suspect", "dog", given="cat"),      # relabelled
        review("s2", "images/cat/img_001.png", "suspect", "cat", given="cat"),      # confirmed
        review("s3", "images/dog/img_000.png", "suspect", "unusable", given="dog"),  # out of data.root
        review("u1", "data/traffic/uncertain/2026-05-01/x/img_000.png", "uncertain", "fox"),  # copied in
        review("u2", "data/traffic/uncertain/2026-05-01/x/img_001.png", "uncertain", "wolf"),  # not a class
        review("u3", "data/traffic/uncertain/2026-05-01/x/gone.png", "uncertain", "fox"),      # vanished
    ]
    rows = apply_reviews(project, params, reviews, CLASSES)
    assert list(rows["action"]) == ["relabelled", "confirmed", "rejected", "added", "skipped", "skipped"]
    assert not (project / "images/cat/img_000.png").exists()
    assert (project / "images/dog/img_000-1.png").is_file()  # dog/img_000.png was already taken (then rejected)
    assert (project / "data/reviews/rejected/dog/img_000.png").is_file()
    assert (project / "images/fox/img_000-1.png").is_file()  # the served image, beside fox's own img_000.png
    assert (project / "data/traffic/uncertain/2026-05-01/x/img_000.png").is_file()  # copied, not moved
    notes = list(rows["note"])
    assert "'wolf' is not a class of data.root (cat, dog, fox)" in notes[4]
    assert "vanished since the task was made" in notes[5]
    log = pd.read_csv(project / "data/reviews" / LOG_NAME)
    assert list(log["reviewer"]) == ["ann@lab"] * 6 and list(log["old_label"].fillna("")[:3]) == ["cat", "cat", "dog"]
    assert (project / "images.dvc").is_file() and (project / "data/reviews.dvc").is_file()

    assert apply_reviews(project, params, reviews, CLASSES).empty  # each review applies once
    later = review("s2", "images/cat/img_001.png", "suspect", "fox", given="cat", at="2026-05-02T09:00")
    assert list(apply_reviews(project, params, [later], CLASSES)["action"]) == ["relabelled"]  # a changed mind


def test_the_generated_sample_is_not_a_folder_reviews_may_change(tmp_path):
    for name in ("dvc.yaml", "params.yaml"):
        (tmp_path / name).write_text((PROJECT_ROOT / name).read_text())
    subprocess.run([sys.executable, "-m", "dvc", "init", "-q", "--no-scm"], cwd=tmp_path, check=True)
    with pytest.raises(UserError, match=r"data.root data/sample is the sample stage's output.*cp -r data/sample"):
        check_data_root_is_own(tmp_path, make_params(data={"root": "data/sample"}))


def test_a_folder_outside_dvc_is_one_clear_line(tmp_path):
    with pytest.raises(UserError, match=r"is not a DVC project, so reviews could not be versioned: run dvc init"):
        check_data_root_is_own(tmp_path, make_params(data={"root": "images"}))
