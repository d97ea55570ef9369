"""The champion/challenger gate on planted disagreements, and promote/rollback on real models."""
from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
import yaml

from tasks import evaluate, gate, package, production, train
from tasks.common import paths
from tasks.common.config import UserError
from tasks.model import registry
from tasks.model.trained_on import TRAINED_ON_FILE
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


def save_champion(workdir, params, trained_on: dict, lineage: dict, monkeypatch, keep_list: bool = True) -> str:
    """The trained bundle saved to the store as the production model, as if trained on `trained_on`."""
    metadata = {"metrics": {"accuracy": 0.5, "macro_f1": 0.5}, "weights_sha256": "0" * 64, "backbone": "x",
                "labels": ["cat", "dog", "fox"], "image_size": 32, "lineage": lineage,
                "runtime": package.runtime_summary(workdir / paths.RUNTIME_DIR)}
    model = package.save_model(params.package.model_name, workdir / paths.MODEL_DIR, workdir / paths.RUNTIME_DIR,
                               metadata, trained_on)
    if not keep_list:  # packaged before models kept their training images
        (Path(model.path) / TRAINED_ON_FILE).unlink()
    # BentoML settles its store once per process: where an earlier test put it, the gate must look.
    monkeypatch.setenv("BENTOML_HOME", str(Path(model.path).parents[2]))
    registry.write_pointer(workdir / paths.POINTER, {
        "current": {"model": str(model.tag), "weights_sha256": "0" * 64}, "previous": []})
    return str(model.tag)


@pytest.mark.slow(reason="trains a model and saves three champions to a store")
def test_the_gate_never_grades_a_model_on_images_it_trained_on(tmp_path, image_root, monkeypatch, capsys):
    monkeypatch.setenv("BENTOML_HOME", str(tmp_path / "bentoml"))
    params = prepare(tmp_path, image_root, train={"epochs": 1}, evaluate={"runtime": "torch"},
                     gate={"min_test_images": 1})
    train.run(params, tmp_path)
    evaluate.run(params, tmp_path)
    split_rows = {n: pd.read_csv(tmp_path / paths.split_csv(n)) for n in paths.SPLITS}
    test_hashes = split_rows["test"]["sha256"].tolist()
    assert len(test_hashes) >= 4
    # A split reshuffled by the rule the split stage had before: two of today's test images were the
    # champion's training images, one its validation image.
    old = {"train": split_rows["train"]["sha256"].tolist()[2:] + test_hashes[:2],
           "val": split_rows["val"]["sha256"].tolist() + test_hashes[2:3]}
    save_champion(tmp_path, params, old, {"split_hash": "unknown"}, monkeypatch)
    assert gate.run(params, tmp_path)["left_out"] == 3
    decision = json.loads((tmp_path / paths.DECISION_JSON).read_text())
    assert decision["test_images"] == len(test_hashes) - 3
    assert decision["left_out"] == {"images": 3, "challenger trained on": 0, "challenger validated on": 0,
                                    "champion trained on": 2, "champion validated on": 1,
                                    "why": "2 the champion trained on, 1 the champion validated on"}
    assert decision["champion_training_images"] == "the model store"
    assert decision["slices"]["original data"]["images"] == len(test_hashes) - 3

    # Too few fair images left: the gate refuses with the reason instead of deciding.
    strict = params.model_copy(update={"gate": params.gate.model_copy(update={"min_test_images": len(test_hashes)})})
    assert gate.run(strict, tmp_path)["verdict"] == "refuse"
    reasons = json.loads((tmp_path / paths.DECISION_JSON).read_text())["reasons"]
    assert reasons == [f"only {len(test_hashes) - 3} test images are ones neither model trained or validated on "
                       "(2 the champion trained on, 1 the champion validated on); deciding needs "
                       f"gate.min_test_images = {len(test_hashes)}: add images to data.root (their test share grows "
                       "the test split) or lower gate.min_test_images"]

    # A champion packaged before models kept the list: recovered from its split in DVC's cache.
    subprocess.run([sys.executable, "-m", "dvc", "init", "--no-scm", "-q"], cwd=tmp_path, check=True)
    stored = tmp_path / "old_split"
    stored.mkdir()
    for name in paths.SPLITS:
        rows = split_rows[name]
        moved = {"train": pd.concat([rows[2:], split_rows["test"][:2]]) if name == "train" else rows}
        moved.get(name, rows).to_csv(stored / f"{name}.csv", index=False)
    subprocess.run([sys.executable, "-m", "dvc", "add", "-q", "old_split"], cwd=tmp_path, check=True)
    split_hash = yaml.safe_load((tmp_path / "old_split.dvc").read_text())["outs"][0]["md5"]
    save_champion(tmp_path, params, {}, {"split_hash": split_hash}, monkeypatch, keep_list=False)
    gate.run(params, tmp_path)
    decision = json.loads((tmp_path / paths.DECISION_JSON).read_text())
    assert decision["champion_training_images"] == f"its split {split_hash}, recovered from DVC"
    assert decision["left_out"]["champion trained on"] == 2

    # Lost: said in one line and in the decision, and the champion is graded on every test image.
    capsys.readouterr()
    tag = save_champion(tmp_path, params, {}, {"split_hash": "0123456789abcdef0123456789abcdef.dir"}, monkeypatch,
                        keep_list=False)
    gate.run(params, tmp_path)
    decision = json.loads((tmp_path / paths.DECISION_JSON).read_text())
    why = ("the model has no list of its training images, and its split 0123456789abcdef0123456789abcdef.dir is in "
           "neither the DVC cache nor the remote (dvc pull it, or push it from the machine that trained the model)")
    assert decision["champion_training_images"] == why and decision["test_images"] == len(test_hashes)
    assert capsys.readouterr().err.splitlines() == [
        f"gate: {tag} is graded on every test image, which may favour it: {why}"]
