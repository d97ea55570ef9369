"""Accuracy on live traffic from delayed labels: the audit sample, the join of reviews to what the service
answered, the Wilson interval and the test that asks for a retrain."""
from __future__ import annotations

import subprocess
import sys
from datetime import datetime, timezone

import numpy as np
import pandas as pd
import pytest
from PIL import Image

from service.settings import ServiceParams
from tasks import production
from tasks.common.config import UserError, parse_params
from tasks.labels.log import LOG_COLUMNS, LOG_NAME
from tasks.labels.queue import AUDIT_DIR, audit_dir, draw_audit, keep, kept
from tasks.labels.review import apply_reviews, uncertain_items
from tasks.model.registry import write_pointer
from tasks.monitoring import live_accuracy
from tests.conftest import PROJECT_ROOT, make_params, write_image_set

pytestmark = pytest.mark.labelling

LABELS = ["cat", "dog", "fox"]


def test_the_audit_draws_its_share_of_all_traffic_whatever_the_models_certainty():
    rng = np.random.default_rng(0)
    drawn = draw_audit(20_000, 0.02, rng)
    assert drawn.mean() == pytest.approx(0.02, abs=0.003)  # ±3 standard errors
    assert not draw_audit(1000, 0.0, rng).any() and draw_audit(1000, 1.0, rng).all()


@pytest.mark.parametrize("share", [-0.1, 1.5])
def test_an_audit_share_outside_zero_to_one_is_one_line(share):
    import yaml

    raw = yaml.safe_load((PROJECT_ROOT / "params.yaml").read_text())
    raw["service"]["audit"]["share"] = share
    with pytest.raises(UserError, match=r"service.audit.share: .*(greater|less) than or equal to [01]"):
        parse_params(raw, "params.yaml", ServiceParams)


def test_wilson_interval_matches_the_textbook_values():
    assert live_accuracy.wilson(8, 10) == pytest.approx((0.4902, 0.9433), abs=1e-4)
    assert live_accuracy.wilson(0, 10) == pytest.approx((0.0, 0.2775), abs=1e-4)
    assert live_accuracy.wilson(100, 100)[1] == 1.0 and live_accuracy.wilson(0, 0) == (0.0, 1.0)


def test_audited_accuracy_below_test_accuracy_is_tested_one_sided_and_only_with_enough_images():
    audited = {"images": 60, "correct": 45, "accuracy": 0.75, "low": 0.63, "high": 0.84}
    alarm = live_accuracy.below_test_accuracy(audited, 0.95, alpha=0.05, min_images=50)
    assert alarm["alarm"] and alarm["p_value"] < 1e-4
    assert alarm["reason"].startswith("audited live accuracy 0.750 [0.630, 0.840] on 60 images against test accuracy "
                                      "0.950: one-sided binomial p = ")
    fine = {**audited, "correct": 57, "accuracy": 0.95}
    assert not live_accuracy.below_test_accuracy(fine, 0.95, 0.05, 50)["alarm"]
    few = live_accuracy.below_test_accuracy({**audited, "images": 20, "correct": 5}, 0.95, 0.05, 50)
    assert few == {"alarm": False, "p_value": None, "reason": "20 audited images of 50 needed to test live accuracy"}


def served(project, kind: str, count: int, model: str, when: datetime) -> list[dict]:
    """`count` served images kept as `kind`, each predicted "cat"; their review items."""
    rng = np.random.default_rng(count)
    images = [Image.fromarray(rng.integers(0, 256, (16, 16, 3), dtype=np.uint8)) for _ in range(count)]
    probs = np.tile([0.7, 0.2, 0.1], (count, 1))
    folder = project / "data/traffic" / kind
    keep(folder, images, probs, LABELS, model, [f"{kind}{i}.png" for i in range(count)], np.ones(count, bool), kind,
         now=when)
    return uncertain_items(project, make_params(data={"root": "images"}), kind=kind)


def reviewed(item: dict, choice: str) -> dict:
    return {**item, "choice": choice, "reviewer": "ann@lab", "reviewed_at": "2026-05-03T10:00", "problem": None}


@pytest.fixture
def project(tmp_path):
    write_image_set(tmp_path / "images", {c: 3 for c in LABELS})
    subprocess.run([sys.executable, "-m", "dvc", "init", "-q", "--no-scm"], cwd=tmp_path, check=True)
    return tmp_path


def test_reviews_of_served_images_join_what_the_service_answered(project, capsys):
    params = make_params(data={"root": "images"})
    day1, day2 = datetime(2026, 5, 1, 9, tzinfo=timezone.utc), datetime(2026, 5, 2, 9, tzinfo=timezone.utc)
    audit1 = served(project, AUDIT_DIR, 4, "m:1", day1)
    assert [item["kind"] for item in audit1] == ["audit"] * 4 and kept(audit_dir(project / "data/traffic"))["kind"].eq(
        "audit").all()
    reviews = [reviewed(item, choice) for item, choice in zip(audit1, ["cat", "cat", "cat", "dog"])]
    least_sure = served(project, "uncertain", 2, "m:1", day2)
    reviews += [reviewed(item, "fox") for item in least_sure]  # the least sure: both wrong
    rows = apply_reviews(project, params, reviews, LABELS)
    assert set(rows["action"]) == {"added"} and set(rows["prediction"]) == {"cat"}
    assert set(rows["served_at"]) == {day1.isoformat(), day2.isoformat()}

    answers, unjoined = live_accuracy.load_answers(project, params)
    assert unjoined == 0 and len(answers) == 6
    table = live_accuracy.accuracy_table(answers)
    assert table.to_dict("records") == [
        {"model_version": "m:1", "day": "2026-05-01", "kind": "audit", "images": 4, "correct": 3, "accuracy": 0.75,
         "low": 0.3006, "high": 0.9544},
        {"model_version": "m:1", "day": "2026-05-02", "kind": "uncertain", "images": 2, "correct": 0, "accuracy": 0.0,
         "low": 0.0, "high": 0.6576}]
    assert live_accuracy.model_accuracy(answers, "m:1")["accuracy"] == 0.75  # the least sure never mixed in

    # production show: audited live accuracy beside test accuracy, the least sure apart.
    (project / "params.yaml").write_text((PROJECT_ROOT / "params.yaml").read_text().replace(
        "root: data/sample", "root: images"))
    write_pointer(project / "deploy/production.json", {"current": {
        "model": "m:1", "bento": "b:1", "test_accuracy": 0.97, "gate": "passed", "promoted_at": "2026-04-30",
        "test_images": 250, "left_out": {"images": 0, "why": "none left out"}}, "previous": []})
    text = production.describe(production.show(project))
    assert "  test accuracy: 0.9700 on 250 test images\n" in text
    assert "  live accuracy: 0.7500 (95% 0.301-0.954) on 4 reviewed audit-sample images\n" in text
    assert "  least sure:    0.0000 (95% 0.000-0.658) on 2 reviewed least-sure images (biased low by design" in text


def test_a_log_from_before_the_answers_is_upgraded_and_a_pruned_record_is_left_out_with_one_line(project, capsys):
    params = make_params(data={"root": "images"})
    items = served(project, AUDIT_DIR, 2, "m:1", datetime(2026, 5, 1, 9, tzinfo=timezone.utc))
    old_columns = LOG_COLUMNS[:-2]
    log = project / "data/reviews" / LOG_NAME
    log.parent.mkdir(parents=True)
    old_rows = [{**{c: "" for c in old_columns}, "key": item["key"], "kind": "audit", "action": "added",
                 "file": f"images/dog/{i}.png", "new_label": "dog", "model_version": "m:1", "reviewed_at": "x"}
                for i, item in enumerate(items)]
    pd.DataFrame(old_rows, columns=old_columns).to_csv(log, index=False)
    pruned = project / "data/traffic" / AUDIT_DIR
    record = next(pruned.glob("*/*.json"))
    record.unlink()  # the service pruned one served record before its answer was in the log
    record.with_suffix(".png").unlink()

    answers, unjoined = live_accuracy.load_answers(project, params)
    assert unjoined == 1 and len(answers) == 1 and not answers["correct"].any()  # "cat" served, "dog" reviewed
    assert live_accuracy.unjoined_notice(unjoined).startswith("1 reviewed served images are left out of live accuracy")

    fresh = served(project, AUDIT_DIR, 3, "m:1", datetime(2026, 5, 2, 9, tzinfo=timezone.utc))
    new = [item for item in fresh if item["key"] not in {r["key"] for r in old_rows}]
    apply_reviews(project, params, [reviewed(new[0], "cat")], LABELS)
    upgraded = pd.read_csv(log, dtype=str, keep_default_na=False)
    assert list(upgraded.columns) == LOG_COLUMNS and len(upgraded) == 3  # old rows kept, new columns added
    assert list(upgraded["prediction"]) == ["", "", "cat"]
    assert live_accuracy.load_answers(project, params)[1] == 1  # the pruned one, still
