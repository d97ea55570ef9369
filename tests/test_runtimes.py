"""Choosing the serving runtime from measured figures, and falling back to PyTorch when it cannot load."""
from __future__ import annotations

import json
import shutil
from pathlib import Path

import numpy as np
import pytest

from service.settings import RUNTIME_ENV, forced_runtime
from tasks.common.config import UserError
from tasks.data.images import open_rgb
from tasks.evaluation.runtimes import choose
from tasks.model.bundle import load_bundle
from tasks.model.served import load_classifier

pytestmark = pytest.mark.serving


def figures(**runtimes: tuple[float, float]) -> dict:
    """{name: (accuracy, images/s)} as tasks/evaluation/runtimes.py records them."""
    return {name: {"accuracy": acc, "batch_img_s": speed} for name, (acc, speed) in runtimes.items()}


def test_auto_takes_the_fastest_runtime_within_the_accuracy_budget():
    measured = figures(torch=(0.900, 100.0), onnx=(0.900, 900.0), **{"onnx-int8": (0.897, 2000.0)})

    assert choose(measured, "auto", 0.3)[0] == "onnx-int8"  # 0.3 points down: just within
    name, reason = choose(measured, "auto", 0.2)
    assert name == "onnx" and reason.endswith("not eligible: onnx-int8")
    assert choose(figures(torch=(0.9, 500.0), onnx=(0.9, 400.0)), "auto", 0.3)[0] == "torch"


def test_a_named_runtime_is_taken_even_outside_the_budget_and_one_that_could_not_be_made_is_one_line():
    measured = figures(torch=(0.90, 100.0), **{"onnx-int8": (0.80, 2000.0)})
    measured["onnx"] = {"error": "UnsupportedOperatorError: aten::foo"}

    name, reason = choose(measured, "onnx-int8", 0.3)
    assert name == "onnx-int8" and reason == "evaluate.runtime is onnx-int8 (test accuracy 10.00 points below PyTorch's)"
    with pytest.raises(UserError, match=r"^evaluate.runtime is onnx, which cannot be made for this model "
                                        r"\(UnsupportedOperatorError: aten::foo\); set evaluate.runtime: auto or torch$"):
        choose(measured, "onnx", 0.3)


@pytest.fixture
def evaluated(packaged: dict) -> Path:
    """A fitted bundle with runtime/ as the evaluate stage leaves it (read only)."""
    return packaged["workdir"]


def served_folder(workdir: Path, to: Path) -> Path:
    """models/ and runtime/ in one folder, as the package stage puts them in the model store."""
    shutil.copytree(workdir / "models", to)
    shutil.copytree(workdir / "runtime", to, dirs_exist_ok=True)
    return to


def test_a_corrupted_onnx_file_falls_back_to_the_pytorch_weights_and_says_why(evaluated: Path, tmp_path: Path):
    folder = served_folder(evaluated, tmp_path / "model")
    chosen = json.loads((folder / "runtime.json").read_text())
    onnx = folder / chosen["file"]
    onnx.write_bytes(onnx.read_bytes()[:5000])
    images = [open_rgb(p) for p in sorted((evaluated / "images").rglob("*.png"))]

    classifier = load_classifier(folder)  # no threads: PyTorch's count is the process's, shared with other tests

    assert classifier.runtime == "torch"
    assert classifier.fallback.startswith(f"{chosen['runtime']} cannot be used ({onnx}: ONNX Runtime cannot load it (")
    assert classifier.fallback.endswith("running the PyTorch weights instead") and "\n" not in classifier.fallback
    probs, _ = classifier.predict(classifier.preprocess(images))
    bundle = load_bundle(folder)
    assert np.allclose(probs, bundle.predict_proba(bundle.preprocess(images)), atol=1e-5)


def test_every_runtime_was_scored_and_timed_and_int8_kept_the_accuracy(evaluated: Path):
    record = json.loads((evaluated / "runtime/runtime.json").read_text())
    figures = record["figures"]

    assert set(figures) == {"torch", "onnx", "onnx-int8"}
    assert all(f["batch_img_s"] > 0 and f["single_img_s"] > 0 for f in figures.values())
    assert figures["onnx"]["top1_agreement"] == 1.0 and figures["onnx"]["max_probability_difference"] < 1e-3
    assert figures["onnx-int8"]["accuracy"] >= figures["torch"]["accuracy"] - 0.003  # within the 0.3-point budget
    assert record["runtime"] == choose(figures, "auto", 0.3)[0] and (evaluated / "runtime" / record["file"]).is_file()


def test_the_served_runtime_keeps_the_bundles_answers_and_embeddings_close(evaluated: Path, tmp_path: Path):
    folder = served_folder(evaluated, tmp_path / "model")
    images = [open_rgb(p) for p in sorted((evaluated / "images").rglob("*.png"))]
    served, pytorch = load_classifier(folder), load_classifier(evaluated / "models")
    assert served.runtime in ("onnx", "onnx-int8") and pytorch.runtime == "torch" and not served.fallback

    (probs, embeddings), (expected, expected_embeddings) = (c.predict(c.preprocess(images)) for c in (served, pytorch))

    assert (probs.argmax(1) == expected.argmax(1)).all()
    assert np.abs(probs - expected).max() < 0.1 and np.abs(embeddings - expected_embeddings).max() < 1.0


def test_a_runtime_json_naming_an_unknown_runtime_is_one_line(evaluated: Path, tmp_path: Path):
    folder = served_folder(evaluated, tmp_path / "model")
    (folder / "runtime.json").write_text(json.dumps({"runtime": "tensorrt", "file": "x.plan"}))

    with pytest.raises(UserError, match=r"runtime.json names runtime 'tensorrt', not one of torch, onnx, onnx-int8; "
                                        r"run the evaluate stage again \(dvc repro evaluate\)$"):
        load_classifier(folder)


def test_only_pytorch_can_be_forced_on_the_service(monkeypatch):
    monkeypatch.setenv(RUNTIME_ENV, "torch")
    assert forced_runtime() == "torch"
    monkeypatch.setenv(RUNTIME_ENV, "onnx")
    with pytest.raises(RuntimeError, match=r"^IMAGE_CLASSIFIER_RUNTIME='onnx': only torch can be forced; unset it"):
        forced_runtime()
    monkeypatch.delenv(RUNTIME_ENV)
    assert forced_runtime() is None
