"""The champion/challenger gate on planted disagreements, and promote/rollback on real models."""
from __future__ import annotations

import json
import subprocess
import sys

import numpy as np
import pytest

from tasks import evaluate, gate, package, production, train
from tasks.common import paths
from tasks.common.config import UserError
from tasks.model import registry
from tests.test_stages import prepare

pytestmark = pytest.mark.evaluation


def correctness(n: int, both_right: int, champion_only: int, challenger_only: int):
    """Per-image correctness of champion and challenger with planted disagreement counts."""
    champion = np.zeros(n, bool)
    challenger = np.zeros(n, bool)
    champion[:both_right] = challenger[:both_right] = True
    champion[both_right:both_right + champion_only] = True
    challenger[both_right + champion_only:both_right + champion_only + challenger_only] = True
    return challenger, champion


def test_mcnemar_exact_p_values():
    assert gate.mcnemar_exact(0, 6) == pytest.approx(2 * 0.5**6)  # all six disagreements one way
    assert gate.mcnemar_exact(1, 5) == pytest.approx(2 * 7 / 64)  # P(X <= 1), X ~ Bin(6, 1/2), both tails
    assert gate.mcnemar_exact(7, 7) == 1.0
    assert gate.mcnemar_exact(0, 0) == 1.0


def test_gate_passes_a_clearly_better_challenger():
    challenger, champion = correctness(400, both_right=340, champion_only=3, challenger_only=30)
    decision = gate.decide(challenger, champion, margin=0.005, alpha=0.05)
    assert decision["passed"] and decision["verdict"] == "promote"
    assert (decision["champion_only_right"], decision["challenger_only_right"]) == (3, 30)
    assert decision["improvement"] == pytest.approx(27 / 400, abs=1e-4) and decision["p_value"] < 1e-5
    assert "significant" in decision["reasons"][0]


def test_gate_refuses_a_clearly_worse_challenger():
    challenger, champion = correctness(400, both_right=340, champion_only=30, challenger_only=3)
    decision = gate.decide(challenger, champion, margin=0.005, alpha=0.05)
    assert not decision["passed"] and decision["verdict"] == "refuse"
    assert any("significantly worse" in reason for reason in decision["reasons"])


def test_gate_refuses_a_tie_within_noise():
    # One more image right out of 400, on 21 disagreements: noise, and below a 0.005 margin.
    challenger, champion = correctness(400, both_right=360, champion_only=10, challenger_only=11)
    decision = gate.decide(challenger, champion, margin=0.005, alpha=0.05)
    assert not decision["passed"]
    assert decision["p_value"] == 1.0
    assert decision["reasons"] == [
        "accuracy gain +0.0025 is below the margin 0.005 (they disagree on 21 of 400 images: champion right "
        "on 10, challenger right on 11); McNemar p = 1"]


def test_gate_margin_is_counted_in_images_not_rounded_accuracy():
    challenger, champion = correctness(200, both_right=150, champion_only=5, challenger_only=6)
    assert gate.decide(challenger, champion, margin=0.005, alpha=0.05)["passed"]  # exactly 1/200 = margin


def test_gate_passes_the_first_model_when_there_is_no_champion():
    challenger = np.array([True, False, True])
    decision = gate.decide(challenger, None, margin=0.005, alpha=0.05)
    assert decision["passed"] and decision["champion_accuracy"] is None
    assert decision["reasons"] == ["there is no production model yet: the first model passes"]


@pytest.mark.slow(reason="trains two real models and packages both")
def test_promote_refuse_and_rollback_with_real_models(tmp_path, image_root, monkeypatch):
    monkeypatch.setenv("BENTOML_HOME", str(tmp_path / "bentoml"))
    monkeypatch.chdir(tmp_path)  # production's command line works on the current folder
    params = prepare(tmp_path, image_root, train={"epochs": 3, "lr": 0.005})
    before = b'{\n  "current": null,\n  "previous": []\n}\n'
    (tmp_path / paths.POINTER).parent.mkdir()
    (tmp_path / paths.POINTER).write_bytes(before)
    subprocess.run([sys.executable, "-m", "dvc", "init", "--no-scm", "-q"], cwd=tmp_path, check=True)

    # A first model: no champion, so it passes and becomes production.
    train.run(params, tmp_path)
    evaluate.run(params, tmp_path)
    assert gate.run(params, tmp_path)["verdict"] == "promote"
    packaged = package.run(params, tmp_path)
    registry.write_pointer(tmp_path / paths.POINTER, {"current": {"model": "other:1"}, "previous": []})
    with pytest.raises(UserError, match="production has changed since the gate ran"):
        production.promote(tmp_path)
    (tmp_path / paths.POINTER).write_bytes(before)
    entry = production.promote(tmp_path)
    assert entry["model"] == packaged["model"] == registry.current_model(tmp_path / paths.POINTER)
    report = json.loads((tmp_path / paths.PACKAGE_JSON).read_text())
    shown = production.show(tmp_path, report["bentoml_home"])  # production's lineage, from the model store
    assert shown["current"]["lineage"] == report["metadata"]["lineage"]
    runtime = json.loads((tmp_path / paths.RUNTIME_DIR / "runtime.json").read_text())["runtime"]  # auto's choice
    assert shown["current"]["runtime"]["name"] == runtime
    assert json.loads((tmp_path / paths.DECISION_JSON).read_text())["challenger"]["runtime"]["name"] == runtime
    assert f"  runtime:       {runtime}" in production.describe(shown, report["bentoml_home"])
    # Promotion archived its Bento (model inside) for other machines, tracked by DVC.
    assert (tmp_path / registry.archive_path(entry["model"])).is_file() and (tmp_path / "deploy/store.dvc").is_file()
    other_machine = tmp_path / "other-bentoml"  # an empty store: production comes from the archive
    assert production.show(tmp_path, other_machine)["current"]["lineage"] == report["metadata"]["lineage"]
    assert (other_machine / "bentos" / entry["bento"].replace(":", "/") / "bento.yaml").is_file()
    promoted = (tmp_path / paths.POINTER).read_bytes()

    # The same weights again: the gate says so and promotion changes nothing.
    assert gate.run(params, tmp_path)["verdict"] == "already in production"
    assert production.promote(tmp_path) == entry and (tmp_path / paths.POINTER).read_bytes() == promoted

    # A challenger whose new head never learned: the champion, scored from the model store, wins.
    worse = prepare(tmp_path, image_root, train={"epochs": 1, "lr": 1e-9}, evaluate={"runtime": "torch"})
    train.run(worse, tmp_path)
    evaluate.run(worse, tmp_path)
    result = gate.run(worse, tmp_path)
    decision = json.loads((tmp_path / paths.DECISION_JSON).read_text())
    assert result["verdict"] == "refuse" and decision["champion"]["model"] == entry["model"]
    assert decision["champion_accuracy"] > decision["challenger_accuracy"]
    package.run(worse, tmp_path)
    with pytest.raises(UserError, match="the gate refused this challenger"):
        production.promote(tmp_path)
    assert (tmp_path / paths.POINTER).read_bytes() == promoted  # production is still the champion

    # Rollback undoes the promotion byte for byte; nothing is left to roll back after that.
    assert production.rollback(tmp_path) is None
    assert (tmp_path / paths.POINTER).read_bytes() == before
    with pytest.raises(UserError, match="nothing to roll back to"):
        production.rollback(tmp_path)


def test_gate_names_a_production_model_missing_from_the_store(tmp_path, image_root, monkeypatch):
    monkeypatch.setenv("BENTOML_HOME", str(tmp_path / "bentoml"))
    params = prepare(tmp_path, image_root, train={"epochs": 1}, evaluate={"runtime": "torch"})
    train.run(params, tmp_path)
    evaluate.run(params, tmp_path)
    registry.write_pointer(tmp_path / paths.POINTER, {
        "current": {"model": "image-classifier:gone", "weights_sha256": "0" * 64}, "previous": []})
    with pytest.raises(UserError, match="model image-classifier:gone is not in the BentoML model store .* nor archived as .*deploy/store/"):
        gate.run(params, tmp_path)


def test_production_pointer_rejects_a_hand_broken_file(tmp_path):
    (tmp_path / "production.json").write_text('{"current": null}')
    with pytest.raises(UserError, match="must hold exactly 'current' and 'previous'"):
        registry.read_pointer(tmp_path / "production.json")
