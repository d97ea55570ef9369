"""The label_quality stage: planted wrong labels come first among the suspects, nothing is changed,
and too many suspects stop the pipeline with one line."""
from __future__ import annotations

import json

import pandas as pd
import pytest

from tasks import label_quality
from tasks.common.config import UserError
from tasks.common.files import sha256
from tasks.common.paths import SUSPECTS_CSV
from tasks.training.folds import kfold
from tests.conftest import make_params, write_splits

pytestmark = pytest.mark.labelling

FAST = {"folds": 3, "epochs": 5, "strategy": "full"}
TRAIN = {"epochs": 1, "batch_size": 16, "image_size": 32, "lr": 0.01, "warmup_epochs": 0}


def plant_flips(workdir, split: str, count: int, wrong: str = "dog") -> list[str]:
    """Relabel the first `count` cat images of a split as `wrong`, as a careless labeller would."""
    path = workdir / f"data/split/{split}.csv"
    frame = pd.read_csv(path)
    flipped = frame.index[frame["label"] == "cat"][:count]
    frame.loc[flipped, "label"] = wrong
    frame.to_csv(path, index=False)
    return list(frame.loc[flipped, "file"])


@pytest.fixture(scope="module")
def judged(tmp_path_factory):
    """A three-class project with two flipped training labels and one flipped test label, judged once."""
    workdir = tmp_path_factory.mktemp("labels")
    write_splits(workdir, {"train": 14, "val": 4, "test": 4})
    flipped = plant_flips(workdir, "train", 2) + plant_flips(workdir, "test", 1)
    before = {f: sha256(f) for f in sorted(workdir.rglob("*")) if f.is_file()}
    summary = label_quality.run(make_params(labels=FAST, train=TRAIN), workdir)
    return workdir, flipped, before, summary


def test_planted_flips_are_among_the_first_suspects_with_the_true_class_suggested(judged):
    workdir, flipped, _, summary = judged
    table = pd.read_csv(workdir / SUSPECTS_CSV)
    # 66 noisy 16 px images and one-epoch-a-fold models: the flips lead, a few honest images follow.
    assert table["file"].iloc[0] in flipped and set(flipped) <= set(table["file"].head(2 * len(flipped))), table
    assert (table.set_index("file").loc[flipped, "suggested_label"] == "cat").all()
    assert list(table["rank"]) == list(range(1, len(table) + 1))
    assert table["label_quality"].is_monotonic_increasing
    assert summary["suspects"] == len(table) and summary["suspects_per_split"]["test"] >= 1
    assert summary["suspect_share"] == round(len(table) / summary["images"], 4)
    assert summary["images"] == 3 * (14 + 4 + 4)


def test_the_page_shows_each_suspect_image_with_both_labels(judged):
    workdir, flipped, _, _ = judged
    page = (workdir / label_quality.PAGE).read_text()
    assert page.count("data:image/png;base64,") >= len(flipped)
    assert 'given <b class="given">dog</b>' in page and 'suggested <b class="suggested">cat</b>' in page
    metrics = json.loads((workdir / label_quality.SUMMARY_JSON).read_text())
    assert len(metrics["per_fold"]) == FAST["folds"] and metrics["oof_accuracy"] > 0.7


def test_no_image_or_split_file_is_changed(judged):
    workdir, _, before, _ = judged
    assert {f: sha256(f) for f in before} == before


def test_too_many_suspects_stop_the_pipeline_after_the_reports(judged, tmp_path):
    workdir, _, _, _ = judged
    (workdir / SUSPECTS_CSV).unlink()
    params = make_params(labels={**FAST, "warn_share": 0.0, "max_share": 0.01}, train=TRAIN)
    with pytest.raises(UserError, match=r"labels\.max_share.*review reports/labels/suspects\.html"):
        label_quality.run(params, workdir)
    assert (workdir / SUSPECTS_CSV).is_file()


def test_more_folds_than_images_of_a_class_is_one_clear_line(tmp_path):
    write_splits(tmp_path, {"train": 2, "val": 1, "test": 1})
    with pytest.raises(UserError, match=r"labels\.folds: 5 folds need at least 5 .* lower labels\.folds"):
        label_quality.run(make_params(labels={**FAST, "folds": 5}, train=TRAIN), tmp_path)


def test_the_folds_hold_each_image_out_once_and_a_duplicate_group_whole():
    frame = pd.DataFrame({"file": [f"f{i}" for i in range(18)], "label": ["cat", "dog", "fox"] * 6,
                          "duplicate_group": ["4", "-1", "-1", "4"] + ["-1"] * 14})  # f0 and f3: one cat, twice
    folds = list(kfold(frame, 3, seed=0, setting="labels.folds"))
    assert [fold for fold, _, _ in folds] == [0, 1, 2]
    assert sorted(f for _, _, held in folds for f in held["file"]) == sorted(frame["file"])
    assert all(set(fit["file"]).isdisjoint(held["file"]) and len(fit) + len(held) == 18 for _, fit, held in folds)
    assert [{"f0", "f3"} <= set(held["file"]) for _, _, held in folds].count(True) == 1
    with pytest.raises(UserError, match=r"labels\.folds: 7 folds need at least 7"):
        kfold(frame, 7, seed=0, setting="labels.folds")  # at the call, before any fold trains
